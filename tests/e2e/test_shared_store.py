"""Two server processes on one SQLite store: a revocation through one bites on both."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import StartServer


def setup_key(server) -> tuple[str, dict]:
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    key = server.post("/v2/apps/vision/keys", {"description": "ro", "scopes": ["Predict"]}, token=owner).json
    return owner, key


def verdict(server, secret: str) -> str:
    return server.post("/v2/verify", {"key": secret, "scope": "Predict"}).json["code"]


@pytest.mark.timing_sensitive  # wall-clock bound
def test_revocation_through_one_process_is_refused_by_the_other_within_a_second(start_server: StartServer):
    first = start_server(name="first")
    second = start_server(first.data_dir, name="second")
    owner, key = setup_key(first)
    deadline = time.monotonic() + 1.0
    while verdict(second, key["key"]) != "VALID":  # the new key reaches the second process
        assert time.monotonic() < deadline, "the second process did not learn of the new key within 1 s"

    assert first.delete(f"/v2/keys/{key['id']}", token=owner).status == 204
    revoked_at = time.monotonic()
    assert verdict(first, key["key"]) == "REVOKED"  # the very next request on the accepting process

    while (code := verdict(second, key["key"])) != "REVOKED":
        assert code == "VALID"
        assert time.monotonic() - revoked_at < 1.0, "the other process still accepts the key after 1 s"
    auth = second.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {key['key']}"})
    assert auth.status == 401 and auth.json["error"]["code"] == "REVOKED"


def test_every_worker_refuses_a_revoked_key_on_the_next_request(start_server: StartServer):
    server = start_server(workers=3, env={"KEYLEDGER_FOLLOW_INTERVAL": "30"})  # no help from polling
    owner, key = setup_key(server)
    assert server.delete(f"/v2/keys/{key['id']}", token=owner).status == 204
    # Each request may land on any worker; none may still accept the key.
    codes = {verdict(server, key["key"]) for _ in range(60)}
    assert codes == {"REVOKED"}
