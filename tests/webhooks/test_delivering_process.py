"""The deliverer in a real ``keyledger scheduler`` process, killed with SIGKILL mid-stream: after a
restart every event is delivered, and a repeat is always the same event (same ``webhook-id``,
same body) and one of the few the killed process had sent but not yet recorded."""

from __future__ import annotations

import time

from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, wait_until
from tests.e2e.conftest import base_environment
from tests.integration.test_campaign_processes import SchedulerProcess
from tests.webhooks.receiver import Receiver

EVENTS = 120


def test_kill_9_of_the_delivering_process_mid_stream_loses_nothing(tmp_path):
    data_dir = tmp_path / "var"
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, webhooks_allow_private=True,
                                        follow_interval=0.05))
    env = base_environment(data_dir, {"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE": "1", "KEYLEDGER_WEBHOOKS_TIMEOUT": "1",
                                      "KEYLEDGER_WEBHOOKS_BACKOFF": "1s", "KEYLEDGER_SCHEDULER_INTERVAL": "0.2"})
    processes: list[SchedulerProcess] = []
    slow = lambda n: (time.sleep(0.02), 200)[1]  # noqa: E731 - a stream that takes a few seconds
    try:
        with Receiver(answer=slow) as receiver:
            admin, _ = system.keys_app.register_account(email="admin@example.com", name="Admin", role="admin",
                                                        by=Actor.system("test"), request=NO_REQUEST)
            by = Actor(kind="account", id=admin["id"], role="admin")
            hook, receiver.secret = system.keys_app.register_webhook(
                url=receiver.url, event_types=["app.created", "key.created"], by=by, request=NO_REQUEST)
            system.keys_app.create_app(name="Vision", slug="vision", by=by, request=NO_REQUEST)
            for i in range(EVENTS - 2):
                system.keys_app.issue_key("vision", description=f"k{i}", scopes=["Predict"], expires_at=None,
                                          by=by, request=NO_REQUEST)
            system.after_command()
            first = SchedulerProcess(data_dir, tmp_path / "scheduler1.log", env).start()
            processes.append(first)
            assert wait_until(lambda: len(receiver.requests) >= 30, timeout=60), first.log()
            first.kill()  # SIGKILL, mid-stream
            got_before = len(receiver.requests)
            assert got_before < EVENTS, "the stream ended before the kill: nothing was tested"
            second = SchedulerProcess(data_dir, tmp_path / "scheduler2.log", env).start()
            processes.append(second)
            assert wait_until(lambda: len({r["headers"]["webhook-id"] for r in receiver.requests}) == EVENTS,
                              timeout=90), (len(receiver.requests), second.log())
            time.sleep(0.5)  # anything still on its way
            requests = list(receiver.requests)
    finally:
        for process in processes:
            process.kill()
        system.close()
    assert all(r["verified"] for r in requests)
    bodies: dict[str, bytes] = {}
    for r in requests:
        assert bodies.setdefault(r["headers"]["webhook-id"], r["body"]) == r["body"]
    duplicates = len(requests) - len(bodies)
    # repeated at most: the delivery in flight at the kill and the successes not yet recorded (the
    # deliverer records them in groups of up to 10)
    assert duplicates <= 10, f"{duplicates} repeats"
    print(f"{got_before} delivered before the kill, {len(requests)} requests in all, {duplicates} repeated")
