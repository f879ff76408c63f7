"""More than one deliverer: each event still goes once to each endpoint in the normal case.

Two deliverers racing on one outbox (the lease: each row to one of them), and three real
``keyledger scheduler`` instances on one store — one delivers, two stand by — with the active one
killed with SIGKILL mid-stream: a standby takes over, every event arrives, and the only repeats are
the few the killed one had sent but not yet recorded, each with its own ``webhook-id``."""

from __future__ import annotations

import time
from collections import Counter

from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from service.webhooks.delivery import Deliverer
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, wait_until
from tests.e2e.conftest import base_environment
from tests.integration.test_campaign_processes import SchedulerProcess
from tests.webhooks.receiver import Receiver


def arrange(system, receiver: Receiver, events: int) -> None:
    admin, _ = system.keys_app.register_account(email="admin@example.com", name="Admin", role="admin",
                                                by=Actor.system("test"), request=NO_REQUEST)
    by = Actor(kind="account", id=admin["id"], role="admin")
    _, receiver.secret = system.keys_app.register_webhook(
        url=receiver.url, event_types=["app.created", "key.created"], by=by, request=NO_REQUEST)
    system.keys_app.create_app(name="Vision", slug="vision", by=by, request=NO_REQUEST)
    for i in range(events - 2):
        system.keys_app.issue_key("vision", description=f"k{i}", scopes=["Predict"], by=by, request=NO_REQUEST)
    system.after_command()


def test_two_deliverers_at_once_send_each_event_once(data_dir):
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, webhooks_allow_private=True))
    try:
        with Receiver(answer=lambda n: (time.sleep(0.005), 200)[1]) as receiver:
            arrange(system, receiver, 80)
            workers = [Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=5, batch=5).start()
                       for _ in range(2)]
            try:
                assert wait_until(lambda: len(receiver.requests) >= 80, timeout=60)
                time.sleep(0.5)
            finally:
                for worker in workers:
                    worker.stop()
            ids = Counter(r["headers"]["webhook-id"] for r in receiver.requests)
    finally:
        system.close()
    assert len(ids) == 80 and max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
    assert sum(w.sent for w in workers) == 80  # no attempt wasted on a row the other one had


def test_three_scheduler_instances_and_a_kill_9_deliver_everything_repeating_only_the_unrecorded(tmp_path):
    data_dir = tmp_path / "var"
    events = 150
    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, webhooks_allow_private=True))
    env = base_environment(data_dir, {"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE": "1", "KEYLEDGER_WEBHOOKS_TIMEOUT": "1",
                                      "KEYLEDGER_SCHEDULER_INTERVAL": "0.5"})
    instances = [SchedulerProcess(data_dir, tmp_path / f"scheduler{i}.log", env) for i in (1, 2, 3)]
    try:
        with Receiver(answer=lambda n: (time.sleep(0.02), 200)[1]) as receiver:
            for instance in instances:
                instance.start()
            assert wait_until(lambda: sum("standing by" in i.log() for i in instances) == 2, timeout=60), \
                [i.log()[-500:] for i in instances]
            active = next(i for i in instances if "standing by" not in i.log())
            arrange(system, receiver, events)
            assert wait_until(lambda: len(receiver.requests) >= 40, timeout=60), active.log()
            active.kill()
            before = len(receiver.requests)
            assert before < events, "the stream ended before the kill: nothing was tested"
            assert wait_until(lambda: len({r["headers"]["webhook-id"] for r in receiver.requests}) == events,
                              timeout=120), [i.log()[-800:] for i in instances]
            time.sleep(0.5)
            requests = list(receiver.requests)
    finally:
        for instance in instances:
            instance.kill()
        system.close()
    ids = Counter(r["headers"]["webhook-id"] for r in requests)
    assert all(r["verified"] for r in requests)
    repeats = sum(n - 1 for n in ids.values())
    assert repeats <= 10, f"{repeats} repeats"
    assert sum("took over" in i.log() for i in instances) == 1
    print(f"3 instances: {before} delivered before the kill, {len(requests)} requests for {events} events, "
          f"{repeats} repeated")
