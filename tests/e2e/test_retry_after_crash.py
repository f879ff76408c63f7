"""A write whose answer was lost: the server process dies right after the commit (SIGKILL, no
shutdown code), and the client retries with the same Idempotency-Key on a fresh process. Exactly
one key exists, and the retry's answer is the first one: the key's id and its secret.
Also: duplicates sent at once to two server processes sharing one store create one key."""

from __future__ import annotations

import threading

import pytest

from service.api.idempotency import KILL_SWITCH
from tests.e2e.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.e2e

NEW_KEY = {"description": "deploy bot", "scopes": ["Predict"]}


def owner_with_app(server: ServerProcess) -> str:
    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = server.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                        token=admin).json["token"]
    assert server.post("/v2/apps", {"id": "vision", "name": "Vision"}, token=owner).status == 201
    return owner


def deploy_bot_keys(server: ServerProcess, owner: str) -> list[dict]:
    keys = server.get("/v2/apps/vision/keys", token=owner).json["keys"]
    return [k for k in keys if k["description"] == "deploy bot"]


def test_a_process_killed_between_commit_and_answer_then_the_retry_gets_the_one_key(start_server: StartServer):
    doomed = start_server(name="doomed", env={KILL_SWITCH: "lost-answer"})
    owner = owner_with_app(doomed)

    with pytest.raises(OSError):  # the connection drops: no answer at all
        doomed.post("/v2/apps/vision/keys", NEW_KEY, token=owner, headers={"Idempotency-Key": "lost-answer"})
    doomed.kill()  # whatever is left of it

    fresh = start_server(doomed.data_dir, name="fresh")  # a new process, without the kill switch
    retry = fresh.post("/v2/apps/vision/keys", NEW_KEY, token=owner, headers={"Idempotency-Key": "lost-answer"})
    assert retry.status == 201, retry
    assert retry.headers.get("Idempotent-Replayed") == "true"  # the commit happened before the kill

    keys = deploy_bot_keys(fresh, owner)
    assert [k["id"] for k in keys] == [retry.json["id"]]
    history = fresh.get(f"/v2/keys/{retry.json['id']}/history", token=owner).json["events"]
    assert [e["type"] for e in history] == ["ApiKey.Issued"]
    verdict = fresh.post("/v2/verify", {"key": retry.json["key"], "scope": "Predict"}).json
    assert verdict["code"] == "VALID" and verdict["key_id"] == retry.json["id"]


def test_duplicates_sent_to_two_processes_at_once_create_one_key(start_server: StartServer):
    first = start_server(name="first", args=["--no-scheduler"])
    second = start_server(first.data_dir, name="second", args=["--no-scheduler"])
    owner = owner_with_app(first)
    answers: list = []
    start = threading.Barrier(8)

    def send(server: ServerProcess) -> None:
        start.wait()
        answers.append(server.post("/v2/apps/vision/keys", NEW_KEY, token=owner,
                                   headers={"Idempotency-Key": "burst-across-instances"}))

    threads = [threading.Thread(target=send, args=(server,)) for server in (first, second) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a.status for a in answers) == [201] * 8, answers
    assert len({a.json["id"] for a in answers}) == 1 and len({a.json["key"] for a in answers}) == 1
    assert [k["id"] for k in deploy_bot_keys(first, owner)] == [answers[0].json["id"]]
