"""Every stored event says who did it, from where, and what: no field left empty by mistake.

A history that runs every command once, with one actor and one request's facts, then reads
the event log back: each event names the actor and the request it was given, and no field
is null unless the contract allows it (an expiry that was not set, a reason not given).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import UTC, datetime

import pytest

from service import credentials
from service.composition import build_system
from service.domain.actors import Actor, RequestInfo
from service.domain.legacy import LegacyClient
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER

ADMIN = Actor.system("ops")
REQUEST = RequestInfo(id="req-1", ip="203.0.113.7", user_agent="ua/1.0")
NULLABLE = {("ApiKey.Issued", "expires_at")}
BY = {"LegacyClient.AccessTokenIssued": "system:oauth2",  # the token endpoint: no person
      "LegacyUseWindow.LegacyTokenUsed": "system:oauth2"}
NOT_A_COMMAND = {"AuditChain.Opened", "AuditChain.CheckpointSigned"}  # the system's own bookkeeping


NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)  # the application's clock, held


@pytest.fixture
def system(data_dir):
    settings = make_settings(data_dir=data_dir, pepper=TEST_PEPPER, legacy_sunset_at=datetime(2099, 1, 1, tzinfo=UTC))
    built = build_system(settings, clock=lambda: NOW, follow=False)
    yield built
    built.close()


def event_type(event) -> str:
    return f"{type(event).__qualname__.rsplit('.', 2)[-2]}.{type(event).__name__}"


def run_every_command(system) -> dict:
    app = system.keys_app
    owner, _ = app.register_account(email="o@example.com", name="O", role="owner", by=ADMIN, request=REQUEST)
    app.replace_personal_token("o@example.com", by=ADMIN, request=REQUEST)
    _, default, _ = app.create_app(name="Vision", slug="vision", owner_id=owner["id"], by=ADMIN, request=REQUEST)
    key, _ = app.issue_key("vision", description="d", scopes=["Predict"], by=ADMIN, request=REQUEST)
    app.change_key(key["id"], scopes=["Search"], description="e", by=ADMIN, request=REQUEST)
    app.roll_key(key["id"], grace_seconds=60, by=ADMIN, request=REQUEST)
    app.revoke_key(key["id"], by=ADMIN, request=REQUEST)
    client, secret = app.issue_legacy_credentials("vision", by=ADMIN, request=REQUEST)
    token, _, _ = app.issue_access_token(client["client_id"], secret, request=REQUEST)
    legacy = app._find(LegacyClient, LegacyClient.create_id(client["client_id"]))
    app.record_legacy_use(legacy.id, token_display=credentials.display_hint(token), at=app.now(), request=REQUEST)
    app.disable_legacy_access("vision", by=ADMIN, request=REQUEST, reason="sunset")
    system.after_command()
    return {"owner": owner, "key": key, "default": default, "client": client}


def test_every_event_names_its_actor_its_request_and_leaves_nothing_empty(system):
    run_every_command(system)
    events = [event for _, event in system.keys_app.read_events(0, 1000)]
    seen = set()
    for event in events:
        kind = event_type(event)
        if kind in NOT_A_COMMAND:
            continue
        seen.add(kind)
        assert event.timestamp == NOW, f"{kind} happened at {event.timestamp}, not at the application's now"
        data = vars(event) if not is_dataclass(event) else {f.name: getattr(event, f.name) for f in fields(event)}
        empty = sorted(name for name, value in data.items() if value is None and (kind, name) not in NULLABLE)
        assert empty == [], f"{kind}: {empty} left empty"
        if "request" in data:
            assert data["request"] == REQUEST.as_dict(), kind
        if "by" in data:
            assert data["by"] == BY.get(kind, ADMIN.ref), kind
    assert {"Account.Registered", "Account.TokenReplaced", "App.Registered", "ApiKey.Issued",
            "ApiKey.ScopesChanged", "ApiKey.DescriptionChanged", "ApiKey.Rolled", "ApiKey.Revoked",
            "LegacyClient.CredentialsIssued", "LegacyClient.AccessTokenIssued", "LegacyClient.AccessDisabled",
            "LegacyUseWindow.LegacyTokenUsed"} <= seen


def test_the_events_carry_what_changed(system):
    made = run_every_command(system)
    events = {event_type(e): e for _, e in system.keys_app.read_events(0, 1000)}
    replaced = events["Account.TokenReplaced"]
    assert replaced.token_display.startswith("pat_…") and replaced.previous_digest != replaced.token_digest
    disabled = events["LegacyClient.AccessDisabled"]
    assert disabled.app_id == "vision" and disabled.reason == "sunset"
    issued = events["LegacyClient.AccessTokenIssued"]
    assert issued.app_id == "vision" and issued.expires_at > issued.timestamp
    assert events["ApiKey.Revoked"].digests  # every secret the key still honoured
    assert str(events["ApiKey.Rolled"].originator_id) == made["key"]["id"]
