#!/usr/bin/env python3
"""Webhooks against a real server: revocation → receiver latency, and deliveries per second; each
figure next to a baseline from the same run, with the load average.

    .venv/bin/python scripts/bench_webhooks.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                               [--revocations 200] [--events 500] [--hanging]

One ``keyledger serve`` (its embedded scheduler runs the deliverer) on a temporary store, and a
receiver in this process (a threaded HTTP server on 127.0.0.1 that verifies every delivery with
``standardwebhooks``). Measured:

1. ``latency``: DELETE /v2/keys/<id> sent → the receiver holds the verified ``key.revoked`` of that
   key; p50/p99/max over ``--revocations``, next to the baseline of the DELETE's own round trip
   (what the fastest poller could learn it in). With ``--hanging``, a second endpoint that answers
   after 10 s gets every revocation too, and the figure is taken again (it must not move).
2. ``throughput``: ``--events`` key.created events queued for a disabled endpoint, then the endpoint
   enabled: deliveries per second until the receiver has them all, next to the baseline of the same
   bodies POSTed to the same receiver by one plain client loop (this machine's HTTP rate).
"""

from __future__ import annotations

import argparse
import http.client as httpclient
import json
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("KEYLEDGER_TEST_DATABASE_URL", None)  # the server's store is chosen here

from benchkit import bench_owner, p50_p99_max, tear_down  # noqa: E402
from standardwebhooks.webhooks import Webhook  # noqa: E402

from tests.e2e.conftest import ServerProcess, http  # noqa: E402


class Receiver:
    def __init__(self, delay: float = 0.0) -> None:
        self.secret: str | None = None
        self.arrivals: dict[str, float] = {}  # event id -> first arrival (perf_counter)
        self.by_key: dict[str, float] = {}  # key id of key.revoked -> arrival
        self.count = 0
        self.unverified = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.perf_counter()
                if delay:
                    time.sleep(delay)
                try:
                    event = Webhook(receiver.secret).verify(body, dict(self.headers.items())) if receiver.secret \
                        else json.loads(body)
                except Exception:  # noqa: BLE001
                    event = None
                with receiver.lock:
                    receiver.count += 1
                    if event is None:
                        receiver.unverified += 1
                    else:
                        receiver.arrivals.setdefault(self.headers["webhook-id"], now)
                        if event["type"] == "key.revoked":
                            receiver.by_key.setdefault(event["data"]["key_id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a sender that gave up (the hanging one)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait(predicate, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def revocation_latency(server: ServerProcess, owner: str, receiver: Receiver, n: int) -> tuple[list, list]:
    keys = [server.post("/v2/apps/bench/keys", {"description": f"r{i}", "scopes": ["Predict"]}, token=owner).json
            for i in range(n)]
    latencies, round_trips = [], []
    for key in keys:
        started = time.perf_counter()
        assert server.delete(f"/v2/keys/{key['id']}", token=owner).status == 204
        round_trips.append(time.perf_counter() - started)
        if not wait(lambda k=key["id"]: k in receiver.by_key, 10):
            raise SystemExit(f"key.revoked of {key['id']} not delivered within 10 s")
        latencies.append(receiver.by_key[key["id"]] - started)
    return latencies, round_trips


def report_latency(store: str, what: str, latencies: list[float], round_trips: list[float]) -> None:
    print(f"[{store}, load {os.getloadavg()[0]:.1f}] {what} (n={len(latencies)}): "
          f"{p50_p99_max(latencies)}; baseline DELETE round trip: {p50_p99_max(round_trips)}")


def plain_rate(receiver: Receiver, bodies: list[bytes]) -> float:
    """The baseline: the same bodies POSTed by one plain client loop, a connection each (as the
    deliverer does), no signature made or checked."""
    secret, receiver.secret = receiver.secret, None
    host, port = receiver.server.server_address[:2]
    started = time.perf_counter()
    for i, body in enumerate(bodies):
        connection = httpclient.HTTPConnection(host, port, timeout=10)
        connection.request("POST", "/hook", body=body, headers={"webhook-id": f"plain-{i}",
                                                                "content-type": "application/json"})
        connection.getresponse().read()
        connection.close()
    elapsed = time.perf_counter() - started
    receiver.secret = secret
    return len(bodies) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url")
    parser.add_argument("--revocations", type=int, default=200)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--hanging", action="store_true", help="also with an endpoint that answers after 10 s")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keyledger-bench-webhooks-"))
    schema = f"bench_webhooks_{os.getpid()}"
    env = {"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE": "1", "KEYLEDGER_SCHEDULER_INTERVAL": "1"}
    if args.database_url:
        env.update({"KEYLEDGER_DATABASE_URL": args.database_url, "KEYLEDGER_DATABASE_SCHEMA": schema})
    server = ServerProcess(data_dir=work / "var", log_path=work / "server.log", workers=1, extra_env=env)
    fast, hanging = Receiver(), Receiver(delay=10.0)
    store = "postgresql" if args.database_url else "sqlite"
    try:
        server.start()
        admin, owner = bench_owner(server)
        hook = server.post("/v2/webhooks", {"url": fast.url, "event_types": ["key.revoked"]}, token=admin).json
        fast.secret = hook["secret"]

        report_latency(store, "DELETE → verified key.revoked at the receiver",
                       *revocation_latency(server, owner, fast, args.revocations))

        if args.hanging:
            slow = server.post("/v2/webhooks", {"url": hanging.url, "event_types": ["key.revoked"]}, token=admin).json
            hanging.secret = slow["secret"]
            report_latency(store, "the same with a second endpoint answering after 10 s",
                           *revocation_latency(server, owner, fast, args.revocations))
            server.delete(f"/v2/webhooks/{slow['id']}", token=admin)

        bulk = server.post("/v2/webhooks", {"url": fast.url, "event_types": ["key.created"]}, token=admin).json
        assert bulk["secret"]
        fast.secret = None  # two secrets on one receiver: the bulk endpoint's deliveries are counted, not verified
        before = fast.count
        print(f"creating {args.events} keys …", file=sys.stderr)
        started = time.perf_counter()
        for i in range(args.events):
            server.post("/v2/apps/bench/keys", {"description": f"k{i}", "scopes": ["Predict"]}, token=owner)
        created = time.perf_counter() - started
        if not wait(lambda: fast.count - before >= args.events, 120):
            raise SystemExit(f"only {fast.count - before} of {args.events} delivered within 120 s")
        # the rate while creating is bounded by the creation; replay measures the deliverer alone
        deliveries = http("GET", server.url + f"/v2/webhooks/{bulk['id']}/deliveries?limit=1", token=admin).json
        assert deliveries["deliveries"]
        before = fast.count
        started = time.perf_counter()
        queued = server.post(f"/v2/webhooks/{bulk['id']}/replay", {"since": "2000-01-01T00:00:00Z"},
                             token=admin).json["queued"]
        if not wait(lambda: fast.count - before >= queued, 300):
            raise SystemExit(f"only {fast.count - before} of {queued} replayed within 300 s")
        rate = queued / (time.perf_counter() - started)
        bodies = [json.dumps({"type": "key.created", "timestamp": "2026-12-06T00:00:00Z", "data": {"n": i}}).encode()
                  for i in range(queued)]
        baseline = plain_rate(fast, bodies)
        load = os.getloadavg()[0]
        print(f"[{store}, load {load:.1f}] {args.events} keys created in {created:.1f} s, each delivered as it came; "
              f"replay of {queued} deliveries: {rate:.0f} deliveries/s; baseline plain POST loop (a connection each) to the same "
              f"receiver: {baseline:.0f}/s (ratio {rate / baseline:.2f})")
    finally:
        tear_down([server], work, args.database_url, schema)
        fast.close()
        hanging.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
