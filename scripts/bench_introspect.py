#!/usr/bin/env python3
"""Introspection's request rate against forward-auth's, on the same server in the same run.

    .venv/bin/python scripts/bench_introspect.py [--seconds 5] [--rounds 3] [--workers 2]

Starts ``keyledger serve`` (its BufferingWorker, as served) on a fresh SQLite store, makes an
admin, an introspector account, an app and a key with two scopes, then measures with wrk (one
thread, four connections, on the same machine) in interleaved rounds:

- forward-auth: ``GET /v2/auth/check?scope=Predict`` with ``Authorization: Key <key>``;
- introspection: ``POST /v2/introspect`` with the form ``token=<key>``, the caller's personal token
  as ``Authorization: Bearer pat_…`` (and, in a third series, as HTTP Basic: what authlib sends).

Each round's share is introspection's rate over the forward-auth rate of the same round; the figure
is the median of the rounds' shares (issue 19's target: at least 80 %). The load average is printed
before and after: the machine is shared, so read the share, not the absolute rates.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import quote

from benchkit import PEPPER, free_port, load, wait_ready

ROOT = Path(__file__).resolve().parents[1]
KEYLEDGER = Path(sys.executable).parent / "keyledger"


def call(method: str, url: str, body: dict | None = None, token: str | None = None) -> dict:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Key {token}"} if token else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        return json.loads(answer.read() or b"null")


def wrk(url: str, seconds: int, headers: dict, script: Path | None = None) -> float:
    command = ["wrk", "-t1", "-c4", f"-d{seconds}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        raise SystemExit(f"{url} answered errors:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    folder = Path(tempfile.mkdtemp(prefix="bench-introspect-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(KEYLEDGER_DATA_DIR=str(folder / "var"), KEYLEDGER_PEPPER=PEPPER, KEYLEDGER_LOG_LEVEL="WARNING",
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")

    def account(role: str, email: str) -> dict:
        done = subprocess.run([str(KEYLEDGER), "accounts", "create", "--init", "--email", email, "--name", role,
                               "--role", role, "--json"], env=env, capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    admin, introspector = account("admin", "admin@example.com"), account("introspector", "gw@example.com")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen([str(KEYLEDGER), "serve", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", str(args.workers), "--no-scheduler"], env=env, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(base + "/readyz", server, 30, 0.1, "the server", folder / "server.log")
        app_id = call("POST", base + "/v2/apps", {"name": "Bench"}, admin["token"])["id"]
        key = call("POST", f"{base}/v2/apps/{app_id}/keys", {"description": "bench", "scopes": ["Predict", "Search"]},
                   admin["token"])["key"]
        lua = folder / "introspect.lua"
        lua.write_text('wrk.method = "POST"\n'
                       'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
                       f'wrk.body = "token={quote(key)}&token_type_hint=access_token"\n')
        basic = base64.b64encode(f"{introspector['id']}:{introspector['token']}".encode()).decode()
        series = {
            "forward-auth": lambda: wrk(base + "/v2/auth/check?scope=Predict", args.seconds,
                                        {"Authorization": f"Key {key}"}),
            "introspect (Bearer)": lambda: wrk(base + "/v2/introspect", args.seconds,
                                               {"Authorization": f"Bearer {introspector['token']}"}, lua),
            "introspect (Basic)": lambda: wrk(base + "/v2/introspect", args.seconds,
                                              {"Authorization": f"Basic {basic}"}, lua),
        }
        check = urllib.request.Request(base + "/v2/introspect", data=f"token={quote(key)}".encode(), headers={
            "Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(check, timeout=10) as answer:
            verdict = json.loads(answer.read())
        assert verdict["active"] is True and verdict["scope"] == "Predict Search", verdict
        print(f"load average before: {load()}  ({os.cpu_count()} cores; server: {args.workers} workers)")
        rates: dict[str, list[float]] = {name: [] for name in series}
        for number in range(1, args.rounds + 1):
            for name, run in series.items():
                rates[name].append(run())
            print(f"round {number}: " + ", ".join(f"{name} {rates[name][-1]:,.0f} req/s" for name in series))
        for name in list(series)[1:]:
            shares = [mine / base_rate for mine, base_rate in zip(rates[name], rates["forward-auth"], strict=True)]
            print(f"{name}: median {statistics.median(rates[name]):,.0f} req/s = "
                  f"{statistics.median(shares):.0%} of forward-auth's "
                  f"(rounds: {', '.join(f'{s:.0%}' for s in shares)})")
        print(f"forward-auth: median {statistics.median(rates['forward-auth']):,.0f} req/s")
        print(f"load average after: {load()}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(15)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
