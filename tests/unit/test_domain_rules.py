"""Domain rules that no HTTP test reaches directly: the scope catalogue and a reminder's delivery states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import NAMESPACE_URL, uuid5

import pytest

from service.domain import scopes
from service.domain.campaign import FINAL, CampaignPlan, Reminder, reminder_id, stage_id, sunset_id
from service.domain.errors import KeyExpired, KeyRevoked, LegacyAccessEnded
from service.domain.keys import ApiKey
from service.domain.legacy import LegacyClient

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

AT = datetime(2030, 1, 1, tzinfo=UTC)
RESOURCES = ("Annotations", "Concepts", "Inputs", "Models", "Workflows")


def test_the_scope_catalogue_is_the_contract_s():
    catalogue = scopes._build_catalogue()
    assert list(catalogue) == ["All", "Predict", "Search",
                               *(f"{r}:{v}" for r in RESOURCES for v in ("Add", "Get", "Patch", "Delete")),
                               "Models:Train"]
    assert catalogue["Models:Add"] == "create models"
    assert catalogue["Inputs:Get"] == "read inputs"
    assert catalogue["Concepts:Patch"] == "change concepts"
    assert catalogue["Workflows:Delete"] == "delete workflows"
    assert catalogue["Models:Train"] == "train models"
    assert catalogue["Predict"] == "run predictions with models"
    assert catalogue["Search"] == "search inputs"
    assert catalogue["All"].startswith("every scope")
    assert scopes.CATALOGUE == catalogue


def reminder() -> Reminder:
    return Reminder(sunset_at=AT, stage="30d", due_at=AT - timedelta(days=30), owner_id="o",
                    owner_email="o@example.com", owner_name="O", apps=[], by="system:campaign", request={})


def test_a_failed_delivery_is_retried_unless_permanent():
    r = reminder()
    r.record_failure(error="timeout", permanent=False, next_attempt_at=AT, by="system:campaign", request={}, at=AT)
    assert (r.attempts, r.open, r.next_attempt_at, r.failed_permanently) == (1, True, AT, False)
    r.record_failure(error="550 no such user", permanent=True, next_attempt_at=AT, by="system:campaign",
                     request={}, at=AT)
    assert (r.attempts, r.open, r.next_attempt_at, r.failed_permanently) == (2, False, None, True)
    r.record_failure(error="again", permanent=False, next_attempt_at=AT, by="system:campaign", request={}, at=AT)
    assert r.attempts == 2  # given up: nothing more is recorded
    event = r.collect_events()[1]
    assert (event.error, event.permanent, event.by, event.request, event.timestamp) == (
        "timeout", False, "system:campaign", {}, AT)


def test_a_delivery_is_recorded_once():
    r = reminder()
    assert r.record_delivery(transport="file:x.eml", by="system:campaign", request={}, at=AT) is True
    assert r.record_delivery(transport="file:x.eml", by="system:campaign", request={}, at=AT) is False
    assert (r.delivered_at, r.attempts, r.open) == (AT, 1, False)
    event = r.collect_events()[-1]
    assert (event.transport, event.by, event.request, event.timestamp) == ("file:x.eml", "system:campaign", {}, AT)


def test_campaign_record_ids_never_change_between_releases():
    # The ids name stored aggregates: a new format would send every reminder a second time.
    sunset = datetime(2018, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))  # = midnight UTC
    assert stage_id(sunset, "30d") == uuid5(NAMESPACE_URL, "keyledger:campaign:2018-01-01T00:00:00Z:stage:30d")
    assert reminder_id(sunset, "o", "7d") == uuid5(
        NAMESPACE_URL, "keyledger:campaign:2018-01-01T00:00:00Z:reminder:o:7d")


@pytest.fixture
def new_york_local_time():
    """The process's local time zone is America/New_York for the test (UTC on most servers)."""
    import os
    import time
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_campaign_record_ids_do_not_depend_on_the_server_s_local_time_zone(new_york_local_time):
    # On a server whose local time is not UTC, the id must still name the instant in UTC.
    sunset = datetime(2018, 1, 1, tzinfo=UTC)
    assert datetime(2018, 1, 1, tzinfo=UTC).astimezone().utcoffset() != timedelta(0)  # the zone took
    assert stage_id(sunset, "30d") == uuid5(NAMESPACE_URL, "keyledger:campaign:2018-01-01T00:00:00Z:stage:30d")
    assert sunset_id(sunset) == uuid5(NAMESPACE_URL, "keyledger:campaign:2018-01-01T00:00:00Z:sunset")


def test_a_withdrawn_reminder_is_closed_and_withdrawing_again_changes_nothing():
    r = reminder()
    r.record_failure(error="timeout", permanent=False, next_attempt_at=AT, by="system:campaign", request={}, at=AT)
    assert r.withdraw(reason="migrated", by="system:campaign", request={}, at=AT) is True
    assert (r.withdrawn, r.open, r.next_attempt_at) == (True, False, None)
    assert r.withdraw(reason="migrated", by="system:campaign", request={}, at=AT) is False
    event = r.collect_events()[-1]
    assert (event.reason, event.by, event.request, event.timestamp) == ("migrated", "system:campaign", {}, AT)


def test_a_stage_is_found_by_name_and_an_unknown_one_is_a_key_error():
    plan = CampaignPlan.of(AT, {"30d": timedelta(days=30), "7d": timedelta(days=7)}, timedelta(days=30))
    assert plan.stage("7d").due_at == AT - timedelta(days=7)
    assert plan.stage(FINAL).due_at == AT
    with pytest.raises(KeyError, match="nope"):
        plan.stage("nope")


def key(expires_at: datetime | None = None) -> ApiKey:
    return ApiKey(app_id="vision", description="d", scopes=["Predict"], expires_at=expires_at, digest="ab" * 32,
                  display="ak_…abcd", origin="user", by="account:o", request={})


def test_a_description_change_says_whether_anything_changed():
    k = key()
    assert k.change_description("e", by="account:o", request={}, at=AT) is True
    assert k.change_description("e", by="account:o", request={}, at=AT) is False
    assert k.description == "e"


def test_a_revoked_or_expired_key_refuses_changes_saying_what_to_do():
    revoked = key()
    revoked.revoke(by="account:o", request={}, at=AT)
    with pytest.raises(KeyRevoked) as refused:
        revoked.change_description("e", by="account:o", request={}, at=AT)
    assert refused.value.message == "This key has been revoked and can no longer be changed; create a new key."
    expired = key(expires_at=AT)
    with pytest.raises(KeyExpired) as refused:
        expired.change_scopes(["Search"], by="account:o", request={}, at=AT)
    assert refused.value.message == "This key has expired and can no longer be changed; create a new key."


def test_a_disabled_legacy_client_issues_no_token_and_says_to_use_an_api_key():
    client = LegacyClient(app_id="vision", client_id="c" * 32, secret_digest="ab" * 32, secret_display="…abcd",
                          origin="import", by="system:cli", request={})
    assert client.disable(reason="sunset", by="system:campaign", request={}, at=AT) is True
    assert client.disable(reason="sunset", by="system:campaign", request={}, at=AT) is False
    with pytest.raises(LegacyAccessEnded) as refused:
        client.issue_access_token(digest="cd" * 32, display="…wxyz", expires_at=AT, by="system:oauth2",
                                  request={}, at=AT)
    assert refused.value.message == "Legacy access for this app has been disabled; use an API key."


def test_the_audit_chain_hash_links_each_record_to_the_one_before():
    # The documented formula (a verifier outside Keyledger recomputes it), and the link: the same
    # record after a different history hashes differently, so a record cannot be dropped or moved.
    import hashlib
    from uuid import UUID

    from service.domain.audit import GENESIS, chain_hash

    who = UUID(int=7)
    first = chain_hash(GENESIS, 1, who, 1, "t", b'{"a":1}')
    assert first == hashlib.sha256(f"{GENESIS}\n1\n{who.hex}\n1\nt\n".encode() + b'{"a":1}').hexdigest()
    assert chain_hash(first, 2, who, 2, "t", b"{}") == hashlib.sha256(
        f"{first}\n2\n{who.hex}\n2\nt\n{{}}".encode()).hexdigest()
    assert chain_hash(first, 2, who, 2, "t", b"{}") != chain_hash(GENESIS, 2, who, 2, "t", b"{}")
    assert chain_hash(GENESIS, 1, who.hex, 1, "t", b'{"a":1}') == first  # the id as hex text alike


def test_the_audit_ledger_id_never_changes_between_releases():
    # It names the stored stream of checkpoints: a new id would start a second ledger beside it.
    from uuid import UUID

    from service.domain.audit import AuditLedger

    assert AuditLedger.create_id() == UUID("513600fb-89a7-5788-b938-b87bf4dd3137")


def test_a_system_actor_is_named_in_the_audit_trail():
    from service.domain.actors import Actor

    actor = Actor.system("campaign")
    assert (actor.ref, actor.is_admin, actor.reads_everything) == ("system:campaign", True, True)
    assert Actor.system().ref == "system:cli"


def test_an_account_id_never_changes_between_releases():
    # It is derived from the e-mail address, case and spaces aside: another rule would let a second
    # account for the same address in, and lose the first one's id.
    from service.domain.accounts import Account

    assert Account.create_id(email=" Ops@Example.COM ") == uuid5(NAMESPACE_URL, "keyledger:account:ops@example.com")


def test_an_error_reads_as_its_message():
    from service.domain.errors import InvalidRequest

    error = InvalidRequest("Name the app.", field="name")
    assert (str(error), error.message, error.details, error.code) == (
        "Name the app.", "Name the app.", {"field": "name"}, "INVALID_REQUEST")
