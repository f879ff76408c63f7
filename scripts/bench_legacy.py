#!/usr/bin/env python3
"""Benchmark legacy OAuth2 next to API keys, every figure against a baseline from the same run.

    .venv/bin/python scripts/bench_legacy.py [--keys 200000] [--tokens 20000] [--seconds 5] [--import-lines 10000]

1. seeds N API keys and M access tokens (one legacy client) into a fresh SQLite store;
2. in-process: median cost of verifying an access token next to an API key (target: at most
   2x) and next to the bare HMAC + dict look-up;
3. over HTTP (gunicorn, 2 sync workers, wrk -t1 -c4 on the same machine): POST /v2/verify and
   GET /v2/auth/check with an access token and with an API key, POST /v2/token, and the empty
   Flask route of the same server as the baseline;
4. keyledger import-legacy of a file of L apps into a fresh store (target: 10,000 in < 60 s).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets as random_secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_verify import wrk  # noqa: E402
from benchkit import PEPPER, free_port, wait_ready  # noqa: E402

from service import credentials  # noqa: E402
from service.composition import build_system  # noqa: E402
from service.domain.actors import NO_REQUEST, Actor  # noqa: E402
from service.domain.keys import ApiKey  # noqa: E402
from service.settings import Settings  # noqa: E402

SUNSET = "2099-01-01T00:00:00Z"


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, pepper=PEPPER,
                    legacy_sunset_at=datetime(2099, 1, 1, tzinfo=UTC))


def seed(data_dir: Path, keys: int, tokens: int) -> dict:
    system = build_system(settings_for(data_dir), follow=False)
    app = system.keys_app
    now = datetime.now(UTC)
    batch = []
    for i in range(keys):
        secret = credentials.API_KEY_PREFIX + os.urandom(24).hex()[:32]
        batch.append(ApiKey._create(
            ApiKey.Issued, id=uuid4(), app_id=f"app-{i % 5000}", description="bench", scopes=["Predict"],
            expires_at=None, digest=app.digester.hexdigest(secret), display=credentials.display_hint(secret),
            origin="migration", by="system:bench", request={}, timestamp=now))
        if len(batch) == 1000:
            app.save(*batch)
            batch = []
    if batch:
        app.save(*batch)
    admin = Actor.system("bench")
    client_secret = random_secrets.token_hex(20)
    record = {"app_id": "bench", "app_name": "Bench", "owner_email": "bench@example.com", "owner_name": "Bench",
              "client_id": "bench-client", "client_secret": client_secret}
    app.import_legacy_app(record, by=admin)
    _, api_key = app.issue_key("bench", description="ro", scopes=["Predict", "Search"], by=admin,
                               request=NO_REQUEST)
    started = time.perf_counter()
    token = None
    for _ in range(tokens):
        token, _, _ = app.issue_access_token("bench-client", client_secret, request=NO_REQUEST)
    issued = time.perf_counter() - started
    system.after_command()
    system.close()
    print(f"seeded {keys:,} API keys and {tokens:,} access tokens "
          f"(use case issue_access_token: {tokens / issued:,.0f} tokens/s in-process)")
    return {"api_key": api_key, "token": token, "client_id": "bench-client", "client_secret": client_secret}


def bench_in_process(data_dir: Path, found: dict) -> None:
    system = build_system(settings_for(data_dir), follow=False)
    verify = system.verifier.verify
    digest = system.authenticator.digester.digest
    table = system.index.by_digest
    assert verify(found["api_key"], "Predict")[0] == "VALID"
    assert verify(found["token"], "Predict")[0] == "VALID"  # records this window's use (once)

    def per_call(fn, number=2000, repeat=100) -> float:
        return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6

    rounds = {"key": [], "token": [], "bare": []}
    for _ in range(3):  # interleaved: a noisy neighbour hits all three alike
        rounds["key"].append(per_call(lambda: verify(found["api_key"], "Predict")))
        rounds["token"].append(per_call(lambda: verify(found["token"], "Predict")))
        rounds["bare"].append(per_call(lambda: table.get(digest(found["api_key"])[:16])))
    key, token, bare = (statistics.median(rounds[n]) for n in ("key", "token", "bare"))
    print(f"in-process verification ({len(system.index):,} credentials loaded):")
    print(f"  bare HMAC + dict look-up  {bare:6.2f} µs  (baseline)")
    print(f"  API key                   {key:6.2f} µs  {key / bare:4.2f}x baseline")
    print(f"  access token              {token:6.2f} µs  {token / bare:4.2f}x baseline, "
          f"{token / key:4.2f}x the API key (target <= 2x)")
    system.close()


def bench_http(data_dir: Path, found: dict, seconds: int) -> None:
    if shutil.which("wrk") is None:
        print("HTTP: skipped, wrk is not installed (apt-get install wrk)")
        return
    port = free_port()
    env = {**os.environ, "KEYLEDGER_DATA_DIR": str(data_dir), "KEYLEDGER_PEPPER": PEPPER,
           "KEYLEDGER_LEGACY_SUNSET_AT": SUNSET, "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}"}
    log = open(data_dir / "bench-server.log", "w")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    server = subprocess.Popen([str(gunicorn), "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}",
                               "--timeout", "120", "bench_app:create_bench_app()"], env=env, stdout=log, stderr=log,
                              cwd=data_dir)  # not the root, where gunicorn would read ./gunicorn.conf.py
    base = f"http://127.0.0.1:{port}"
    scripts = []

    def lua(method: str, body: str, headers: dict) -> str:
        path = Path(tempfile.mkstemp(suffix=".lua")[1])
        lines = [f'wrk.method = "{method}"', f"wrk.body = '{body}'"]
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
        path.write_text("\n".join(lines) + "\n")
        scripts.append(path)
        return str(path)

    try:
        wait_ready(base + "/readyz", server, 120, 0.3, "server", data_dir / "bench-server.log")
        time.sleep(1)
        json_headers = {"Content-Type": "application/json"}
        basic = base64.b64encode(f"{found['client_id']}:{found['client_secret']}".encode()).decode()
        routes = {
            "empty Flask route (baseline)": (base + "/bench/empty", {}, None),
            "POST /v2/verify, API key": (base + "/v2/verify", {}, lua(
                "POST", json.dumps({"key": found["api_key"], "scope": "Predict"}), json_headers)),
            "POST /v2/verify, access token": (base + "/v2/verify", {}, lua(
                "POST", json.dumps({"key": found["token"], "scope": "Predict"}), json_headers)),
            "GET /v2/auth/check, API key": (base + "/v2/auth/check?scope=Predict",
                                            {"Authorization": f"Key {found['api_key']}"}, None),
            "GET /v2/auth/check, access token": (base + "/v2/auth/check?scope=Predict",
                                                 {"Authorization": f"Bearer {found['token']}"}, None),
            "POST /v2/token": (base + "/v2/token", {}, lua(
                "POST", "grant_type=client_credentials",
                {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"})),
        }
        wrk(base + "/bench/empty", 2, {})  # warm-up
        results: dict[str, list[float]] = {}
        for _ in range(2):
            for name, (url, headers, script) in routes.items():
                results.setdefault(name, []).append(wrk(url, seconds, headers, script))
        baseline = statistics.mean(results["empty Flask route (baseline)"])
        print(f"HTTP (gunicorn, 2 sync workers, wrk -t1 -c4, {seconds} s x 2 interleaved rounds):")
        for name, figures in results.items():
            rate = statistics.mean(figures)
            print(f"  {name:34} {rate:8,.0f} req/s  {rate / baseline:6.1%} of the empty route")
    finally:
        for path in scripts:
            path.unlink(missing_ok=True)
        server.terminate()
        server.wait(20)


def bench_import(workdir: Path, lines: int) -> None:
    source = workdir / "apps.jsonl"
    with source.open("w") as out:
        for i in range(lines):
            out.write(json.dumps({"app_id": f"app-{i}", "app_name": f"App {i}",
                                  "owner_email": f"owner{i % (lines // 3 + 1)}@example.com",
                                  "owner_name": "Owner", "client_id": f"client-{i}",
                                  "client_secret": random_secrets.token_hex(20)}) + "\n")
    env = {**os.environ, "KEYLEDGER_DATA_DIR": str(workdir / "import-var"), "KEYLEDGER_PEPPER": PEPPER}
    keyledger = Path(sys.executable).parent / "keyledger"
    for run in ("first", "second"):
        started = time.perf_counter()
        done = subprocess.run([str(keyledger), "import-legacy", "--init", str(source)], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        print(f"import-legacy, {run} run of {lines:,} lines: {elapsed:.1f} s ({lines / elapsed:,.0f} lines/s): "
              f"{done.stdout.strip()}")
    source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--import-lines", type=int, default=10_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keyledger-bench-legacy-"))
    try:
        data_dir = workdir / "var"
        found = seed(data_dir, args.keys, args.tokens)
        bench_in_process(data_dir, found)
        bench_http(data_dir, found, args.seconds)
        if args.import_lines:
            bench_import(workdir, args.import_lines)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
