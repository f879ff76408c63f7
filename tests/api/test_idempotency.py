"""Writes safe to retry: a POST with an Idempotency-Key gets its first answer again for 24 hours,
the same key with another request is 422, and a committed change never answers with an error."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.persistence import OperationalError
from freezegun import freeze_time

from projections.seal_keys import SealKeys
from service.domain.idempotency import RETENTION
from tests.backend import event_states
from tests.conftest import secrets_in

NEW_KEY = {"description": "ci", "scopes": ["Predict"]}


def with_key(value: str) -> dict:
    return {"Idempotency-Key": value}


def key_ids(caller, app_id: str = "vision") -> list[str]:
    return sorted(k["id"] for k in caller.get(f"/v2/apps/{app_id}/keys").json["keys"])


def issued_events(data_dir) -> int:
    return len(event_states(data_dir, "ApiKey.Issued"))


def test_a_retried_key_creation_gets_the_first_answer_and_creates_nothing(owner, owner_app, data_dir):
    before = key_ids(owner)
    first = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("create-ci-key-1"))
    issued = issued_events(data_dir)
    again = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("create-ci-key-1"))

    assert first.status_code == again.status_code == 201
    assert again.json == first.json  # the same id, and the same secret: the client that lost it has it
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert (again.headers["ETag"], again.headers["Location"]) == (first.headers["ETag"], first.headers["Location"])
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert key_ids(owner) == sorted([*before, first.json["id"]])
    assert issued_events(data_dir) == issued


def test_the_replayed_secret_still_verifies_and_is_the_key_s_only_secret(client, owner, owner_app):
    first = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("k-verify")).json
    again = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("k-verify")).json
    verdict = client.post("/v2/verify", json={"key": again["key"], "scope": "Predict"}).json
    assert verdict["code"] == "VALID" and verdict["key_id"] == first["id"]


def test_the_same_key_with_another_body_is_422_and_changes_nothing(owner, owner_app, data_dir):
    owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("reused"))
    keys = key_ids(owner)
    response = owner.post("/v2/apps/vision/keys", json={**NEW_KEY, "description": "other"},
                          headers=with_key("reused"))
    assert response.status_code == 422
    assert response.json["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "Idempotency-Key" in response.json["error"]["details"]
    assert key_ids(owner) == keys


def test_the_same_key_on_another_path_is_422(owner, owner_app):
    owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("one-key"))
    response = owner.post("/v2/apps", json={"name": "Other"}, headers=with_key("one-key"))
    assert response.status_code == 422 and response.json["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_a_body_serialised_anew_is_the_same_request(owner, owner_app):
    first = owner.post("/v2/apps/vision/keys", data='{"description": "ci", "scopes": ["Predict"]}',
                       headers={**with_key("spaced"), "Content-Type": "application/json"})
    again = owner.post("/v2/apps/vision/keys", data='{"scopes":["Predict"],"description":"ci"}',
                       headers={**with_key("spaced"), "Content-Type": "application/json"})
    assert again.status_code == 201 and again.json["id"] == first.json["id"]


def test_keys_are_scoped_to_the_caller(owner, other_owner, owner_app):
    other_owner.post("/v2/apps", json={"id": "audio", "name": "Audio"})
    mine = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("shared-value"))
    theirs = other_owner.post("/v2/apps/audio/keys", json=NEW_KEY, headers=with_key("shared-value"))
    assert mine.status_code == theirs.status_code == 201
    assert mine.json["id"] != theirs.json["id"] and "Idempotent-Replayed" not in theirs.headers


@pytest.mark.parametrize("value, problem", [
    ("", "Give 1 to 255"), ("   ", "Give 1 to 255"), ("x" * 256, "At most 255"), ("clé", "printable ASCII"),
])
def test_an_unacceptable_key_is_400_naming_the_header(owner, owner_app, value, problem):
    before = key_ids(owner)
    response = owner.post("/v2/apps/vision/keys", json=NEW_KEY,
                          headers={"Idempotency-Key": value.encode("utf-8").decode("latin-1")})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "INVALID_REQUEST"
    assert problem in response.json["error"]["message"]
    assert list(response.json["error"]["details"]) == ["Idempotency-Key"]
    assert key_ids(owner) == before


def test_a_key_of_255_characters_is_accepted(owner, owner_app):
    response = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("k" * 255))
    assert response.status_code == 201


def test_a_refusal_is_not_recorded_so_the_corrected_request_runs(owner, owner_app):
    refused = owner.post("/v2/apps/vision/keys", json={"description": "d", "scopes": ["Nope"]},
                         headers=with_key("fix-me"))
    assert refused.status_code == 400 and refused.json["error"]["code"] == "SCOPE_UNKNOWN"
    fixed = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("fix-me"))
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers


def test_concurrent_duplicates_create_one_key_and_all_get_its_answer(flask_app, owner, owner_app, data_dir):
    before = key_ids(owner)
    answers = []
    start = threading.Barrier(6)

    def send() -> None:
        with flask_app.test_client() as own:
            start.wait()
            answers.append(own.post("/v2/apps/vision/keys", json=NEW_KEY,
                                    headers={"Authorization": f"Key {owner.token}", **with_key("burst")}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [a.status_code for a in answers] == [201] * 6
    assert len({a.json["id"] for a in answers}) == 1 and len({a.json["key"] for a in answers}) == 1
    assert key_ids(owner) == sorted([*before, answers[0].json["id"]])
    assert len(event_states(data_dir, "IdempotentRequest.Recorded")) == 1


def test_concurrent_duplicates_of_an_app_creation_create_one_app(flask_app, owner):
    answers = []
    start = threading.Barrier(4)

    def send() -> None:
        with flask_app.test_client() as own:
            start.wait()
            answers.append(own.post("/v2/apps", json={"id": "twice", "name": "Twice"},
                                    headers={"Authorization": f"Key {owner.token}", **with_key("app-burst")}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # a duplicate that saw the app exist (409 "id taken") gives the first answer instead
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.json["default_key"]["key"] for a in answers}) == 1
    assert [a["id"] for a in owner.get("/v2/apps").json["apps"]] == ["twice"]


def test_a_retried_roll_rolls_once_and_gives_the_same_new_secret(owner, owner_app):
    key_id = owner_app["default_key"]["id"]
    first = owner.post(f"/v2/keys/{key_id}/roll", json={"grace_seconds": 60}, headers=with_key("roll-1"))
    again = owner.post(f"/v2/keys/{key_id}/roll", json={"grace_seconds": 60}, headers=with_key("roll-1"))
    assert first.status_code == again.status_code == 200
    assert again.json["key"] == first.json["key"] and again.json["version"] == 2
    assert owner.get(f"/v2/keys/{key_id}").json["version"] == 2


def test_a_retried_account_creation_gives_the_same_token(admin):
    body = {"email": "new@example.com", "name": "New", "role": "owner"}
    first = admin.post("/v2/accounts", json=body, headers=with_key("acct"))
    again = admin.post("/v2/accounts", json=body, headers=with_key("acct"))
    assert first.status_code == again.status_code == 201 and again.json == first.json
    assert admin.post("/v2/accounts", json=body).status_code == 409  # without a key: a second attempt


def test_the_answer_is_stored_sealed_never_in_plain_form(owner, owner_app, data_dir):
    first = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("sealed-key-value")).json
    [record] = event_states(data_dir, "IdempotentRequest.Recorded")
    stored = repr(record)
    assert not secrets_in(stored, [first["key"]]) and first["id"] not in stored
    assert "sealed-key-value" not in stored  # nor the Idempotency-Key itself
    assert not secrets_in(base64.b64decode(record["sealed_answer"]), [first["key"]])


def test_the_audit_trail_shows_the_record_without_its_sealed_answer(auditor, owner, owner_app):
    owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("audited"))
    [event] = auditor.get("/v2/audit/events?type=IdempotentRequest.Recorded").json["events"]
    assert event["actor"] == {"kind": "account", "id": owner.id}
    assert event["data"] == {}


def test_a_retry_after_24_hours_is_a_new_request(owner, owner_app):
    start = datetime.now(UTC)
    with freeze_time(start) as clock:
        first = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("daily"))
        clock.move_to(start + RETENTION - timedelta(seconds=1))
        within = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("daily"))
        clock.move_to(start + RETENTION + timedelta(seconds=1))
        after = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("daily"))
        replayed_later = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("daily"))
    assert within.json["id"] == first.json["id"] and within.headers["Idempotent-Replayed"] == "true"
    assert after.status_code == 201 and after.json["id"] != first.json["id"]
    assert "Idempotent-Replayed" not in after.headers
    assert replayed_later.json["id"] == after.json["id"]  # the key now answers the new request


def test_after_24_hours_another_body_is_accepted(owner, owner_app):
    start = datetime.now(UTC)
    with freeze_time(start) as clock:
        owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("reuse-later"))
        clock.move_to(start + RETENTION + timedelta(minutes=1))
        other = owner.post("/v2/apps/vision/keys", json={**NEW_KEY, "description": "next day"},
                           headers=with_key("reuse-later"))
    assert other.status_code == 201 and other.json["description"] == "next day"


def test_an_expired_seal_key_is_deleted_and_its_answer_can_never_be_read(system, owner, owner_app):
    start = datetime.now(UTC)
    seal_keys = SealKeys(system.views, retention=RETENTION)
    with freeze_time(start) as clock:
        owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("shredded"))
        with system.views.read() as db:
            assert db.execute("SELECT COUNT(*) FROM idempotency_seal_keys").fetchone()[0] == 1
        clock.move_to(start + RETENTION + timedelta(hours=2))
        seal_keys.claim("another-record", system.keys_app.now())  # any later claim purges
    with system.views.read() as db:
        rows = [r[0] for r in db.execute("SELECT record_id FROM idempotency_seal_keys").fetchall()]
    assert rows == ["another-record"]


def test_a_recorded_answer_whose_seal_key_is_gone_is_409_not_a_second_change(system, owner, owner_app):
    owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("lost-seal"))
    keys = key_ids(owner)
    with system.views.write() as db:
        db.execute("DELETE FROM idempotency_seal_keys")
    response = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("lost-seal"))
    assert response.status_code == 409 and response.json["error"]["code"] == "CONFLICT"
    assert key_ids(owner) == keys


def test_a_committed_command_answers_even_when_catching_up_fails(system, owner, owner_app, monkeypatch):
    def log_unreadable(*args, **kwargs):
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(system.keys_app.recorder, "select_notifications", log_unreadable)
    response = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("after-commit"))
    also = owner.post("/v2/apps/vision/keys", json=NEW_KEY)  # without a key too
    assert response.status_code == 201 and also.status_code == 201
    monkeypatch.undo()
    for created in (response, also):
        assert owner.get(f"/v2/keys/{created.json['id']}").status_code == 200


def test_a_failure_before_the_commit_is_503_and_leaves_nothing(system, owner, owner_app, monkeypatch):
    import sqlite3

    import psycopg

    key_id = owner_app["default_key"]["id"]
    error = (psycopg.OperationalError("connection refused") if system.views.dialect == "postgresql"
             else sqlite3.OperationalError("unable to open database file"))

    def unreadable(*args, **kwargs):
        raise error

    monkeypatch.setattr(system.views, "read", unreadable)  # the roll's answer reads the key's last use
    response = owner.post(f"/v2/keys/{key_id}/roll", json={})
    assert response.status_code == 503
    monkeypatch.undo()
    assert owner.get(f"/v2/keys/{key_id}").json["version"] == 1


def test_patch_and_delete_ignore_the_header_and_still_work(owner, owner_app):
    key_id = owner_app["default_key"]["id"]
    changed = owner.patch(f"/v2/keys/{key_id}", json={"description": "x"}, headers=with_key("p"))
    assert changed.status_code == 200 and "Idempotent-Replayed" not in changed.headers
    assert owner.delete(f"/v2/keys/{key_id}", headers=with_key("p")).status_code == 204


def test_every_post_documents_the_header_the_422_and_the_replay_header(client):
    spec = client.get("/openapi.json").json
    posts = {path: methods["post"] for path, methods in spec["paths"].items() if "post" in methods}
    assert {"/v2/accounts", "/v2/apps", "/v2/apps/{app_id}/keys", "/v2/keys/{key_id}/roll",
            "/v2/apps/{app_id}/legacy-credentials", "/v2/token", "/v2/verify"} <= set(posts)
    for path, operation in posts.items():
        [header] = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert header["in"] == "header" and header["required"] is False
        if path in ("/v2/verify", "/v2/introspect"):  # questions, answered afresh
            assert "422" not in operation["responses"]
            continue
        assert header["schema"]["maxLength"] == 255
        assert "IDEMPOTENCY_KEY_REUSED" in operation["responses"]["422"]["description"]
        assert operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
        success = [s for s in operation["responses"] if s.startswith("2")]
        assert success and all("Idempotent-Replayed" in operation["responses"][s]["headers"] for s in success)


def test_a_seal_key_claimed_by_a_refused_attempt_lives_as_long_as_the_later_answer(system, owner, owner_app):
    start = datetime.now(UTC)
    with freeze_time(start) as clock:
        refused = owner.post("/v2/apps/vision/keys", json={"description": "d", "scopes": ["Nope"]},
                             headers=with_key("slow-fix"))
        assert refused.status_code == 400
        clock.move_to(start + timedelta(hours=23))
        first = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("slow-fix"))
        clock.move_to(start + timedelta(hours=46))  # the first claim is long past; the answer is not
        SealKeys(system.views, retention=RETENTION).claim("another-record", system.keys_app.now())
        again = owner.post("/v2/apps/vision/keys", json=NEW_KEY, headers=with_key("slow-fix"))
    assert again.status_code == 201 and again.json == first.json
