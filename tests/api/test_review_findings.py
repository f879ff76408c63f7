"""Edge cases found in review: each once answered wrongly (a 500, a lost owner, a leak)."""

from __future__ import annotations

import threading
import uuid

import pytest

from service import credentials
from service.domain.actors import NO_REQUEST, Actor
from service.settings import Settings, SettingsError


def test_verify_refuses_a_key_with_a_lone_surrogate_naming_the_field(client):
    # Like every other endpoint (one JSON rule): not valid text, so 400 naming the field, never a 500.
    response = client.post("/v2/verify", data='{"key": "\\ud800"}', content_type="application/json")
    assert response.status_code == 400 and response.json["error"]["code"] == "INVALID_REQUEST"
    assert "key" in response.json["error"]["details"]


def test_as_of_before_year_one_in_utc_is_404(owner, read_only_key):
    response = owner.get(f"/v2/keys/{read_only_key['id']}?as_of=0001-01-01T00:00:00%2B01:00")
    assert response.status_code == 404 and response.json["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("spell", [str.upper, lambda u: "{" + u + "}", lambda u: "urn:uuid:" + u])
def test_admin_may_spell_owner_id_any_uuid_way_and_the_owner_still_owns_the_app(admin, owner, spell):
    response = admin.post("/v2/apps", json={"id": "given", "name": "Given", "owner_id": spell(owner.id)})
    assert response.status_code == 201 and response.json["owner_id"] == owner.id
    assert owner.get("/v2/apps/given").status_code == 200
    assert [a["id"] for a in owner.get("/v2/apps").json["apps"]] == ["given"]


def test_history_has_every_change_even_past_a_thousand(system, owner, read_only_key):
    by = Actor(kind="account", id=owner.id, role="owner")
    for i in range(1001):
        system.keys_app.change_key(read_only_key["id"], description=f"d{i}", by=by, request=NO_REQUEST)
    system.after_command()
    events = owner.get(f"/v2/keys/{read_only_key['id']}/history").json["events"]
    assert len(events) == 1002 and events[-1]["data"]["description"] == "d1000"


def test_history_accepts_any_spelling_of_the_key_id(owner, read_only_key):
    spelled = read_only_key["id"].upper()
    assert owner.get(f"/v2/keys/{spelled}").json["id"] == read_only_key["id"]
    assert len(owner.get(f"/v2/keys/{spelled}/history").json["events"]) == 1


def test_personal_token_with_an_app_is_still_insufficient_scope(client, owner, owner_app):
    verdict = client.post("/v2/verify", json={"key": owner.token, "app_id": "vision"}).json
    assert verdict["code"] == "INSUFFICIENT_SCOPE" and verdict["kind"] == "personal_token"


def test_a_double_slash_is_a_json_404_not_an_html_redirect(owner):
    response = owner.get("/v2//apps")
    assert response.status_code == 404 and response.is_json


def test_a_secret_in_request_id_or_user_agent_is_neither_echoed_nor_stored(owner, read_only_key):
    secret = read_only_key["key"]
    response = owner.patch(f"/v2/keys/{read_only_key['id']}", json={"description": "x"},
                           headers={"X-Request-Id": secret, "User-Agent": f"sdk ({secret})"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] != secret
    change = owner.get(f"/v2/keys/{read_only_key['id']}/history").json["events"][-1]
    assert secret not in str(change)
    assert change["request"]["user_agent"] == "sdk (ak_…[redacted])"


def test_forward_auth_scheme_is_case_insensitive_and_the_gateway_header_wins(client, read_only_key):
    headers = {"Authorization": f"KEY {read_only_key['key']}", "X-Required-Scope": "Models:Add"}
    assert client.get("/v2/auth/check?scope=Predict", headers=headers).status_code == 403
    headers["X-Required-Scope"] = "Predict"
    assert client.get("/v2/auth/check?scope=Models:Add", headers=headers).status_code == 200


def _start(folder, results: list, errors: list) -> None:
    try:
        results.append(credentials.load_or_create_pepper(folder, None))
    except Exception as error:  # any error fails the test
        errors.append(error)


def test_processes_starting_together_agree_on_one_pepper(tmp_path):
    for trial in range(20):
        folder = tmp_path / f"trial-{trial}"
        results, errors = [], []
        threads = [threading.Thread(target=_start, args=(folder, results, errors)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(set(results)) == 1 and len(results[0]) == 64
        assert [p.name for p in folder.iterdir()] == ["pepper"]


def test_a_short_pepper_is_a_configuration_error():
    with pytest.raises(SettingsError, match="KEYLEDGER_PEPPER"):
        Settings.from_env({"KEYLEDGER_PEPPER": "too-short"})


def test_an_unknown_uuid_key_is_404(owner):
    assert owner.get(f"/v2/keys/{uuid.uuid4()}").status_code == 404
