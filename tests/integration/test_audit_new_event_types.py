"""Event types other issues add appear in the trail under their app, with no change to the
audit projection: an event's own ``app_id`` places it, and later events of the same aggregate
(which need not repeat it) follow it there; owners see them, other owners do not."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from eventsourcing.domain import event

from projections.audit import AuditFilter
from service.domain.aggregate import LedgerAggregate


class Gadget(LedgerAggregate):
    """Stands in for an aggregate a later issue adds (say, a legacy OAuth2 client)."""

    class Registered(LedgerAggregate.Created):
        app_id: str
        client_id: str

    class Used(LedgerAggregate.Event):
        window: str

    @event(Registered)
    def __init__(self, app_id: str, client_id: str, by: str, request: dict) -> None:
        self.app_id = app_id

    def use(self, window: str, at: datetime) -> None:
        self._use(window=window, by="system:scheduler", request={}, timestamp=at)

    @event(Used)
    def _use(self, window: str, by: str, request: dict, timestamp: datetime) -> None:
        pass


def test_a_new_aggregate_s_events_show_under_its_app(system, owner, other_owner, owner_app):
    now = datetime.now(UTC)
    gadget = Gadget._create(Gadget.Registered, id=uuid4(), app_id="vision", client_id="legacy-client-1",
                            by=f"account:{owner.id}", request={"id": "r1", "ip": "10.0.0.1", "user_agent": "t"},
                            timestamp=now)
    gadget.use("2017-06-01T10", now)
    system.keys_app.save(gadget)
    system.after_command()

    rows = system.audit.page(AuditFilter(app_id="vision", type="Gadget.Used"))
    assert len(rows) == 1
    assert rows[0]["data"] == {"window": "2017-06-01T10"}
    assert rows[0]["actor"] == {"kind": "system", "id": "scheduler"}
    registered = system.audit.page(AuditFilter(type="Gadget.Registered"))[0]
    assert (registered["app_id"], registered["data"]["client_id"]) == ("vision", "legacy-client-1")

    mine = owner.get("/v2/audit/events?type=Gadget.Used").json["events"]
    theirs = other_owner.get("/v2/audit/events?type=Gadget.Used").json["events"]
    assert [e["seq"] for e in mine] == [rows[0]["seq"]] and theirs == []
    assert system.check_integrity()["ok"] is True
