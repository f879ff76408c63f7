#!/usr/bin/env python3
"""Write throughput with 1, 2 and 4 instances on one PostgreSQL, beside one instance on SQLite,
and how fast a revocation reaches the other instances.

Each instance is a real ``keyledger serve`` process (its own data directory, one worker, no
scheduler) on 127.0.0.1; clients spread key-creating commands over the instances for a fixed
time and count the acknowledged ones. Then keys are revoked on the first instance and the time
until every other instance refuses them is measured (LISTEN/NOTIFY; polling at its default).

    .venv/bin/python scripts/bench_scale.py [--seconds 10] [--clients 8] [--database-url URL]

Run it on a quiet machine and compare within one run: the figures move with the machine's load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import socket
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

KEYLEDGER = Path(sys.executable).parent / "keyledger"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        self.data_dir = root / name
        self.port = free_port()
        self.env = {**env, "KEYLEDGER_DATA_DIR": str(self.data_dir), "KEYLEDGER_LOG_LEVEL": "WARNING"}
        self.log = (root / f"{name}.log").open("ab")
        self.process = subprocess.Popen(
            [str(KEYLEDGER), "serve", "--port", str(self.port), "--workers", "1", "--no-scheduler"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if request(self.port, "GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise SystemExit(f"instance on port {self.port} did not start; see {self.log.name}")

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
    done = subprocess.run([str(KEYLEDGER), "accounts", "create", "--role", "admin", "--email", "a@example.com",
                           "--name", "A", "--json"], env=first.env, capture_output=True, text=True, check=True)
    admin = json.loads(done.stdout)["token"]
    time.sleep(0.3)
    status, owner = request(first.port, "POST", "/v2/accounts",
                            {"email": "o@example.com", "name": "O", "role": "owner"}, admin)
    assert status == 201, owner
    assert request(first.port, "POST", "/v2/apps", {"id": "bench", "name": "Bench"}, owner["token"])[0] == 201
    return owner["token"]


def write_load(instances: list[Instance], token: str, seconds: float, clients: int) -> tuple[int, int]:
    stop = threading.Event()
    counts = [0] * clients
    failures = [0] * clients

    def client(i: int) -> None:
        instance = instances[i % len(instances)]
        connection = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=30)
        while not stop.is_set():
            status, _ = request(instance.port, "POST", "/v2/apps/bench/keys",
                                {"description": "bench", "scopes": ["Predict"]}, token, connection)
            if status == 201:
                counts[i] += 1
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
    return sum(counts), sum(failures)


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


def run(label: str, count: int, base_env: dict[str, str], args: argparse.Namespace, root: Path) -> dict:
    if "KEYLEDGER_DATABASE_URL" in base_env:
        subprocess.run([str(KEYLEDGER), "db", "init"], env={**base_env, "KEYLEDGER_DATA_DIR": str(root / "init")},
                       check=True, capture_output=True)
    instances = [Instance(root, f"{label}-{n}", base_env) for n in range(count)]
    try:
        for instance in instances:
            instance.wait_ready()
        token = setup(instances)
        done, failed = write_load(instances, token, args.seconds, args.clients)
        delays = propagation(instances, token, args.samples) if count > 1 else []
    finally:
        for instance in instances:
            instance.stop()
    return {"label": label, "instances": count, "commands": done, "failed": failed,
            "per_second": done / args.seconds, "delays": delays}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--samples", type=int, default=50, help="revocations timed per configuration")
    parser.add_argument("--database-url", default=os.environ.get("KEYLEDGER_BENCH_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--instances", default="1,2,4", help="PostgreSQL instance counts")
    args = parser.parse_args()
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    common = {**{k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")},
              "KEYLEDGER_PEPPER": secrets.token_hex(32), "KEYLEDGER_AUDIT_SIGNING_KEY": pem,
              "KEYLEDGER_LAST_USED_INTERVAL": "60"}
    root = Path(tempfile.mkdtemp(prefix="keyledger-bench-scale-"))
    results = []
    try:
        print(f"load: {args.clients} clients creating keys for {args.seconds:.0f} s per configuration; "
              f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        results.append(run("sqlite", 1, {**common}, args, root))
        for count in (int(n) for n in args.instances.split(",")):
            schema = "bench_" + uuid.uuid4().hex[:12]
            env = {**common, "KEYLEDGER_DATABASE_URL": args.database_url, "KEYLEDGER_DATABASE_SCHEMA": schema}
            results.append(run(f"pg{count}", count, env, args, root))
            drop_schema(args.database_url, schema)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    baseline = results[0]["per_second"]
    print(f"\n{'store':<12}{'instances':>10}{'commands/s':>12}{'vs SQLite':>11}{'refused':>9}"
          f"{'propagation p50':>17}{'p90':>9}{'p99':>9}{'max':>9}")
    for r in results:
        store = "SQLite" if r["label"] == "sqlite" else "PostgreSQL"
        line = (f"{store:<12}{r['instances']:>10}{r['per_second']:>12.1f}{r['per_second'] / baseline:>10.2f}x"
                f"{r['failed']:>9}")
        if r["delays"]:
            d = sorted(r["delays"])
            q = statistics.quantiles(d, n=100, method="inclusive")
            line += f"{d[len(d) // 2] * 1000:>14.1f} ms{q[89] * 1000:>6.1f} ms{q[98] * 1000:>6.1f} ms{d[-1] * 1000:>6.1f} ms"
        print(line)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    from service.settings import parse_database_url

    u = parse_database_url(url)
    with psycopg.connect(host=u["host"], port=u["port"], dbname=u["dbname"], user=u["user"],
                         password=u["password"] or None, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    sys.exit(main())
