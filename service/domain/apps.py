"""Apps: a customer's application, owned by one owner, holding API keys."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate
from service.domain.errors import Conflict


class App(LedgerAggregate):
    class Registered(LedgerAggregate.Created):
        slug: str
        name: str
        owner_id: str
        origin: str

    class LegacyClientAttached(LedgerAggregate.Event):
        client_id: str

    class LimitsChanged(LedgerAggregate.Event):
        app_id: str  # the app's slug (its id in the API)
        limits: list  # shared by every key of the app (service.domain.limits); [] for none
        previous_limits: list

    limits = ()  # rate limits (LimitsChanged: a list); never changed in place, only replaced

    @event(Registered)
    def __init__(self, slug: str, name: str, owner_id: str, origin: str, by: str, request: dict) -> None:
        self.slug = slug
        self.name = name
        self.owner_id = owner_id
        self.origin = origin
        self.legacy_client_id: str | None = None

    def attach_legacy_client(self, client_id: str, *, by: str, request: dict, at: datetime) -> None:
        """Give the app its (one) set of legacy OAuth2 client credentials."""
        if self.legacy_client_id is not None:
            raise Conflict(f"App {self.slug!r} already has legacy client credentials "
                           f"(client id {self.legacy_client_id}); move it to API keys instead.")
        self._attach_legacy_client(client_id=client_id, by=by, request=request, timestamp=at)

    @event(LegacyClientAttached)
    def _attach_legacy_client(self, client_id: str, by: str, request: dict, timestamp: datetime) -> None:
        self.legacy_client_id = client_id

    def change_limits(self, limits: list, *, by: str, request: dict, at: datetime) -> bool:
        """Replace the app's rate limits (checked and canonical); the same limits change nothing."""
        if list(limits) == list(self.limits):
            return False
        self._change_limits(app_id=self.slug, limits=list(limits), previous_limits=list(self.limits), by=by,
                            request=request, timestamp=at)
        return True

    @event(LimitsChanged)
    def _change_limits(self, app_id: str, limits: list, previous_limits: list, by: str, request: dict,
                       timestamp: datetime) -> None:
        self.limits = list(limits)

    @staticmethod
    def create_id(slug: str, **_: object) -> UUID:
        """An app's id is its slug; the aggregate id is derived from it, so a taken slug conflicts."""
        return uuid5(NAMESPACE_URL, f"keyledger:app:{slug}")

    # -- leaks: the owner's override of the deployment's leak policy ------------------

    class LeakPolicyChanged(LedgerAggregate.Event):
        leak_policy: str  # "revoke" | "report"

    leak_policy: str | None = None  # None: the deployment's (KEYLEDGER_LEAK_POLICY)

    def change_leak_policy(self, leak_policy: str, *, by: str, request: dict, at: datetime) -> bool:
        if leak_policy == self.leak_policy:
            return False
        self._change_leak_policy(leak_policy=leak_policy, by=by, request=request, timestamp=at)
        return True

    @event(LeakPolicyChanged)
    def _change_leak_policy(self, leak_policy: str, by: str, request: dict, timestamp: datetime) -> None:
        self.leak_policy = leak_policy
