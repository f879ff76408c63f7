#!/usr/bin/env python3
"""Write throughput with 1, 2 and 4 instances on one PostgreSQL, beside one instance on SQLite,
how fast a revocation reaches the other instances, and the round trips a command costs — for
this tree's code and, in the same run, a baseline ref's (``--baseline-ref``, default ``main``).

Each instance is a real ``keyledger serve`` process (its own data directory, one worker, no
scheduler) on 127.0.0.1; clients spread key-creating commands over the instances for a fixed
time and count the acknowledged ones (with each command's latency: p50, p99). Then keys are
revoked on the first instance and the time until every other instance refuses them is measured
(LISTEN/NOTIFY; polling at its default). Configurations of both trees run in interleaved rounds
(``--rounds``), so a neighbour's load hits every variant alike; the summary gives the median
and quartiles over rounds, and the load average around every configuration.

Round trips are counted on the wire (``tests/wire.py``, a counting TCP proxy in front of
PostgreSQL) by a probe process per tree: an in-process system (no follower threads) that runs
key creations, scope changes and revocations through the HTTP API, one at a time.

    .venv/bin/python scripts/bench_scale.py [--seconds 8] [--clients 8] [--rounds 3]
                                            [--baseline-ref main] [--database-url URL]

Compare within one run: the figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import drop_schema, export, free_port, pg_connect, quartiles, run_probe, wait_ready  # noqa: E402

# ``keyledger`` from a given tree's code (this tree's, or the baseline's exported files).
LAUNCH = "import sys; sys.argv[0] = 'keyledger'; from service.cli import main; sys.exit(main())"


def keyledger(tree: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", LAUNCH, *args]


def tree_env(tree: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": str(tree)}


class Instance:
    def __init__(self, tree: Path, root: Path, name: str, env: dict[str, str]) -> None:
        self.tree = tree
        self.data_dir = root / name
        self.port = free_port()
        self.env = tree_env(tree, {**env, "KEYLEDGER_DATA_DIR": str(self.data_dir), "KEYLEDGER_LOG_LEVEL": "WARNING"})
        self.log = (root / f"{name}.log").open("ab")
        self.process = subprocess.Popen(
            keyledger(tree, "serve", "--port", str(self.port), "--workers", "1", "--no-scheduler"),
            env=self.env, cwd=tree, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_ready(f"http://127.0.0.1:{self.port}/readyz", self.process, timeout, 0.1,
                   f"instance on port {self.port}", self.log.name)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def request(port: int, method: str, path: str, body: dict | None = None, token: str | None = None,
            connection: http.client.HTTPConnection | None = None) -> tuple[int, dict]:
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Key {token}"
    connection.request(method, path, json.dumps(body) if body is not None else None, headers)
    answer = connection.getresponse()
    data = answer.read()
    if own:
        connection.close()
    return answer.status, (json.loads(data) if data else {})


def setup(instances: list[Instance]) -> str:
    first = instances[0]
    done = subprocess.run(keyledger(first.tree, "accounts", "create", "--role", "admin", "--email", "a@example.com",
                                    "--name", "A", "--json"), env=first.env, cwd=first.tree, capture_output=True,
                          text=True, check=True)
    admin = json.loads(done.stdout)["token"]
    time.sleep(0.3)
    status, owner = request(first.port, "POST", "/v2/accounts",
                            {"email": "o@example.com", "name": "O", "role": "owner"}, admin)
    assert status == 201, owner
    assert request(first.port, "POST", "/v2/apps", {"id": "bench", "name": "Bench"}, owner["token"])[0] == 201
    return owner["token"]


def write_load(instances: list[Instance], token: str, seconds: float, clients: int
               ) -> tuple[int, int, list[float]]:
    stop = threading.Event()
    counts = [0] * clients
    failures = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        instance = instances[i % len(instances)]
        connection = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=30)
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = request(instance.port, "POST", "/v2/apps/bench/keys",
                                {"description": "bench", "scopes": ["Predict"]}, token, connection)
            if status == 201:
                counts[i] += 1
                latencies[i].append(time.perf_counter() - started)
            else:
                failures[i] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return sum(counts), sum(failures), [x for own in latencies for x in own]


def propagation(instances: list[Instance], token: str, samples: int) -> list[float]:
    """Seconds from DELETE answering on the first instance to REVOKED on the slowest other."""
    first, others = instances[0], instances[1:]
    delays = []
    for _ in range(samples):
        _, key = request(first.port, "POST", "/v2/apps/bench/keys", {"description": "p", "scopes": ["Predict"]}, token)
        for other in others:  # the new key has reached them
            while request(other.port, "POST", "/v2/verify", {"key": key["key"]})[1]["code"] != "VALID":
                time.sleep(0.001)
        assert request(first.port, "DELETE", f"/v2/keys/{key['id']}", None, token)[0] == 204
        answered = time.perf_counter()
        for other in others:
            while request(other.port, "POST", "/v2/verify", {"key": key["key"]})[1]["code"] != "REVOKED":
                pass
        delays.append(time.perf_counter() - answered)
    return delays


def run(tree: Path, label: str, count: int, base_env: dict[str, str], args: argparse.Namespace,
        root: Path) -> dict:
    load_before = os.getloadavg()[0]
    if "KEYLEDGER_DATABASE_URL" in base_env:
        subprocess.run(keyledger(tree, "db", "init"), cwd=tree,
                       env=tree_env(tree, {**base_env, "KEYLEDGER_DATA_DIR": str(root / f"init-{label}")}),
                       check=True, capture_output=True)
    instances = [Instance(tree, root, f"{label}-{n}", base_env) for n in range(count)]
    try:
        for instance in instances:
            instance.wait_ready()
        token = setup(instances)
        sampler = WaitSampler(base_env["KEYLEDGER_DATABASE_URL"]) if "KEYLEDGER_DATABASE_URL" in base_env else None
        try:
            done, failed, latencies = write_load(instances, token, args.seconds, args.clients)
        finally:
            waits = sampler.stop() if sampler is not None else {}
        delays = propagation(instances, token, args.samples) if count > 1 else []
    finally:
        for instance in instances:
            instance.stop()
    latencies.sort()
    return {"label": label, "instances": count, "commands": done, "failed": failed,
            "per_second": done / args.seconds, "delays": delays,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "load": (load_before, os.getloadavg()[0]), "waits": waits}


class WaitSampler:
    """What the instances' PostgreSQL sessions are doing while under load: ``pg_stat_activity``
    sampled every 20 ms in the bench's own database, per pool (the event store's connections, the
    views'), as shares of the samples: running, waiting for a lock (which one), or inside a
    transaction waiting for the client (a lock held across a round trip)."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.db = pg_connect(url)
        self.counts: dict[tuple[str, str], int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rows = self.db.execute(
                "SELECT application_name, state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchall()
            self.samples += 1
            for app, state, wait_type, wait in rows:
                pool = {"keyledger-views": "views", "": "events"}.get(app)
                if pool is None:
                    continue
                if state == "active":
                    what = f"lock:{wait}" if wait_type == "Lock" else (f"{wait_type}:{wait}" if wait_type else "running")
                elif state and state.startswith("idle in transaction"):
                    what = "in a transaction, waiting for the client"
                else:
                    continue  # idle in the pool
                self.counts[(pool, what)] = self.counts.get((pool, what), 0) + 1

    def stop(self) -> dict[str, float]:
        """Per "pool / what": sessions in that state, on average over the samples."""
        self._stop.set()
        self._thread.join(5)
        self.db.close()
        return {f"{pool} {what}": n / max(1, self.samples) for (pool, what), n in sorted(self.counts.items())}


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


PROBE = r"""
import importlib.util, json, sys, tempfile, uuid
from pathlib import Path
spec = importlib.util.spec_from_file_location("wire", {wire!r})
wire_module = importlib.util.module_from_spec(spec); sys.modules["wire"] = wire_module; spec.loader.exec_module(wire_module)
from service.api import create_app
from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from service.settings import Settings
wire = wire_module.WireCounter({host!r}, {port!r})
settings = Settings(data_dir=Path(tempfile.mkdtemp()) / "var", pepper="p" * 64,
                    database_url=wire.url({url!r}), database_schema={schema!r})
system = build_system(settings, follow=False)
_, token = system.keys_app.register_account(email="o@example.com", name="O", role="owner",
                                            by=Actor.system("bench"), request=NO_REQUEST)
system.after_command()
client = create_app(system=system).test_client()
headers = {{"Authorization": "Key " + token}}
assert client.post("/v2/apps", json={{"id": "probe", "name": "Probe"}}, headers=headers).status_code == 201
trips = {{"create": [], "scopes": [], "revoke": []}}
def counted(kind, call):
    before = wire.trips()
    response = call()
    assert response.status_code < 300, response.json
    trips[kind].append(wire.trips() - before)
    return response
for n in range({samples}):
    key = counted("create", lambda: client.post("/v2/apps/probe/keys", json={{"description": "p", "scopes": ["Predict"]}},
                                                headers=headers)).json
    counted("scopes", lambda: client.patch("/v2/keys/" + key["id"], json={{"scopes": ["Search"]}}, headers=headers))
    counted("revoke", lambda: client.delete("/v2/keys/" + key["id"], headers=headers))
system.close()
wire.close()
# the first commands open connections and prepare statements: the steady state is the median
print(json.dumps({{kind: sorted(values)[len(values) // 2] for kind, values in trips.items()}}))
"""


def probe_round_trips(tree: Path, url: str, samples: int = 12) -> dict:
    from service.settings import parse_database_url

    u = parse_database_url(url)
    schema = "bench_" + uuid.uuid4().hex[:12]
    code = PROBE.format(wire=str(ROOT / "tests" / "wire.py"), host=u["host"], port=int(u["port"]), url=url,
                        schema=schema, samples=samples)
    try:
        return run_probe(code, f"round-trip probe of {tree}", cwd=tree, env=tree_env(tree, dict(os.environ)))
    finally:
        drop_schema(url, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="load time per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--samples", type=int, default=50, help="revocations timed per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument("--baseline-ref", default="main", help="git ref whose code is the baseline ('' for none)")
    parser.add_argument("--database-url", default=os.environ.get("KEYLEDGER_BENCH_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--instances", default="1,2,4", help="PostgreSQL instance counts")
    args = parser.parse_args()
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    common = {**{k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")},
              "KEYLEDGER_PEPPER": secrets.token_hex(32), "KEYLEDGER_AUDIT_SIGNING_KEY": pem,
              "KEYLEDGER_LAST_USED_INTERVAL": "60"}
    root = Path(tempfile.mkdtemp(prefix="keyledger-bench-scale-"))
    # A database of the run's own: the lock sampler looks at its sessions only.
    bench_db = f"keyledger_bench_{os.getpid()}"
    server_url, args.database_url = args.database_url, database(args.database_url, bench_db, create=True)
    trees = {"this tree": ROOT}
    configs = [("sqlite", 1)] + [(f"pg{n}", n) for n in (int(n) for n in args.instances.split(","))]
    results: dict[str, dict[str, list[dict]]] = {}
    trips: dict[str, dict] = {}
    try:
        if args.baseline_ref:
            trees[args.baseline_ref] = export(args.baseline_ref, root / "baseline")
        results = {name: {label: [] for label, _ in configs} for name in trees}
        print(f"load: {args.clients} clients creating keys for {args.seconds:.0f} s per configuration, "
              f"{args.rounds} interleaved rounds of {', '.join(trees)}; load average before: "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        for name, tree in trees.items():
            trips[name] = probe_round_trips(tree, args.database_url)
            print(f"  round trips per command on PostgreSQL, {name}: {trips[name]}", flush=True)
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                for label, count in configs:
                    env = {**common}
                    schema = None
                    if label != "sqlite":
                        schema = "bench_" + uuid.uuid4().hex[:12]
                        env.update(KEYLEDGER_DATABASE_URL=args.database_url, KEYLEDGER_DATABASE_SCHEMA=schema)
                    try:
                        r = run(tree, f"r{round_}-{'main' if tree != ROOT else 'tree'}-{label}", count, env, args, root)
                    finally:
                        if schema:
                            drop_schema(args.database_url, schema)
                    results[name][label].append(r)
                    print(f"  round {round_ + 1} {name:<10} {label:<7} {r['per_second']:7.1f} commands/s "
                          f"p50 {r['p50_ms']:6.1f} ms p99 {r['p99_ms']:6.1f} ms refused {r['failed']} "
                          f"load {r['load'][0]:.2f}->{r['load'][1]:.2f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        database(server_url, bench_db, create=False)
    print(f"\nmedian (quartiles) over {args.rounds} rounds; ratios are taken within each round")
    for name in trees:
        sqlite = [r["per_second"] for r in results[name]["sqlite"]]
        pg1 = [r["per_second"] for r in results[name].get("pg1", [])]
        print(f"\n{name}: round trips per command on PostgreSQL (wire): key creation {trips[name]['create']}, "
              f"scope change {trips[name]['scopes']}, revocation {trips[name]['revoke']}")
        print(f"{'config':<8}{'commands/s':>22}{'vs SQLite':>20}{'vs pg1':>20}{'p50 ms':>20}{'p99 ms':>22}"
              f"{'propagation p50/p99 ms':>26}")
        for label, _ in configs:
            runs = results[name][label]
            per = [r["per_second"] for r in runs]
            vs_sqlite = [a / b for a, b in zip(per, sqlite, strict=False)]
            vs_pg1 = [a / b for a, b in zip(per, pg1, strict=False)] if pg1 and label != "sqlite" else []
            delays = sorted(d for r in runs for d in r["delays"])
            prop = (f"{percentile(delays, 50) * 1000:.1f} / {percentile(delays, 99) * 1000:.1f}" if delays else "-")
            print(f"{label:<8}{quartiles(per, '.1f'):>22}{quartiles(vs_sqlite, '.2f'):>20}"
                  f"{quartiles(vs_pg1, '.2f'):>20}{quartiles([r['p50_ms'] for r in runs], '.1f'):>20}"
                  f"{quartiles([r['p99_ms'] for r in runs], '.1f'):>22}{prop:>26}")
    print("\nPostgreSQL sessions during the load (pg_stat_activity every 20 ms; average number of sessions per"
          " state, median over rounds):")
    for name in trees:
        for label, _ in configs[1:]:
            runs = results[name][label]
            keys = sorted({k for r in runs for k in r["waits"]})
            shown = ", ".join(f"{k} {statistics.median(r['waits'].get(k, 0.0) for r in runs):.2f}" for k in keys)
            print(f"  {name:<10} {label:<6} {shown}")
    if args.baseline_ref:
        print(f"\nthis tree against {args.baseline_ref}, commands/s ratio per configuration (within rounds):")
        for label, _ in configs:
            mine = [r["per_second"] for r in results["this tree"][label]]
            base = [r["per_second"] for r in results[args.baseline_ref][label]]
            print(f"  {label:<8}{quartiles([a / b for a, b in zip(mine, base, strict=False)], '.2f')}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


def database(url: str, name: str, *, create: bool) -> str:
    """Create (or drop) the database ``name`` on ``url``'s server; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    with pg_connect(url) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            db.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


if __name__ == "__main__":
    sys.exit(main())
