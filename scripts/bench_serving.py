#!/usr/bin/env python3
"""Compare serving designs under slow clients, side by side in one run.

    .venv/bin/python scripts/bench_serving.py [--designs sync,sync-timeout,gthread,granian,buffering]
                                              [--slow 50] [--seconds 20] [--wrk-seconds 5]

For each design the same app (scripts/bench_app.py: Keyledger plus a bare WSGI route) is served
with the same number of workers on one seeded store, and:

1. the other clients' latency without slow clients: two clients alternating ``GET /healthz`` and
   forward-auth (``GET /v2/auth/check`` with a valid key), each request on a new connection;
2. the same while ``--slow`` connections trickle a byte a second (a third their headers, a third
   a ``Content-Length: 20`` body, a third a huge chunk; tests/e2e/slow_clients.py): p50/p99/max,
   failures, and the worker timeouts the server logged;
3. whether a malformed request line is answered in the contract's JSON envelope;
4. with wrk (if installed): the bare WSGI app and forward-auth in interleaved rounds, and
   forward-auth's share of the bare app.

Designs: ``sync`` (gunicorn's sync worker with JSON refusals: ``keyledger serve`` before issue
15), ``sync-timeout`` (the same with a 1 s read timeout per socket), ``gthread`` (gunicorn's
threaded worker, ``--threads``), ``granian`` (Rust HTTP front, WSGI workers), ``buffering``
(service.buffering.BufferingWorker: ``keyledger serve`` now).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_verify import seed  # noqa: E402
from benchkit import PEPPER, free_port, wait_ready  # noqa: E402

from tests.e2e.slow_clients import Tricklers, probe  # noqa: E402

BIN = Path(sys.executable).parent


def command(design: str, port: int, workers: int, threads: int) -> list[str]:
    gunicorn = [str(BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}",
                "--logger-class", "service.serving.JsonLogger", "--timeout", "30"]
    app = "bench_app:create_bench_app()"
    if design == "sync":
        return gunicorn + ["-k", "service.serving.JsonErrorWorker", app]
    if design == "sync-timeout":
        return gunicorn + ["-k", "bench_app.TimeoutSyncWorker", app]
    if design == "gthread":
        return gunicorn + ["-k", "gthread", "--threads", str(threads), app]
    if design == "buffering":
        return gunicorn + ["-k", "service.buffering.BufferingWorker", app]
    if design == "granian":
        return [str(BIN / "granian"), "--interface", "wsgi", "--workers", str(workers), "--host", "127.0.0.1",
                "--port", str(port), "--factory", "bench_app:create_bench_app"]
    raise SystemExit(f"unknown design {design!r}")


def start(design: str, data_dir: Path, workers: int, threads: int, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    metrics = data_dir / f"metrics-{design}"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    env = {**os.environ, "KEYLEDGER_DATA_DIR": str(data_dir), "KEYLEDGER_PEPPER": PEPPER,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}", "PROMETHEUS_MULTIPROC_DIR": str(metrics),
           }  # as served: the access log at INFO
    log = open(log_path, "w")
    process = subprocess.Popen(command(design, port, workers, threads), env=env, stdout=log, stderr=log,
                               cwd=data_dir, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/readyz", process, 120, 0.3, design, log_path)
    time.sleep(1.5)  # every worker loaded
    return process, port


def json_refusal(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x01GARBAGE /x y\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    if not answer:
        return "closed, no answer"
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    kind = "JSON" if b"application/json" in head else ("HTML" if b"text/html" in head else "empty/other")
    return f"{answer.split(b' ', 2)[1].decode()} {kind}"


def wrk(url: str, seconds: int, headers: dict[str, str]) -> float:
    cmd = ["wrk", "-t1", "-c4", f"-d{seconds}s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url} answered errors under wrk:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def line(summary: dict) -> str:
    if not summary.get("n"):
        return "no answers"
    return f"p50 {summary['p50_ms']:6.1f}  p99 {summary['p99_ms']:7.1f}  max {summary['max_ms']:7.1f} ms  (n={summary['n']})"


def bench(design: str, data_dir: Path, key: str, args: argparse.Namespace) -> dict:
    log_path = data_dir / f"{design}.log"
    process, port = start(design, data_dir, args.workers, args.threads, log_path)
    requests = [("/healthz", {}), ("/v2/auth/check?scope=Predict", {"Authorization": f"Key {key}"})]
    result: dict = {"design": design}
    try:
        quiet = probe(port, requests, 5)
        with Tricklers(port, args.slow) as slow:
            loaded = probe(port, requests, args.seconds)
        result["quiet"] = {path: quiet.summary(path) for path, _ in requests}
        result["slow"] = {path: loaded.summary(path) for path, _ in requests}
        result["failures"] = sum(n for (path, status), n in loaded.statuses.items() if status != 200)
        result["answered"] = sum(loaded.statuses.values())
        result["reopened"] = slow.closed_by_server
        result["refusal"] = json_refusal(port)
        if args.wrk_seconds and shutil.which("wrk"):
            base = f"http://127.0.0.1:{port}"
            wrk(base + "/bench/bare", 2, {})
            bare, check = [], []
            for _ in range(args.rounds):
                bare.append(wrk(base + "/bench/bare", args.wrk_seconds, {}))
                check.append(wrk(base + "/v2/auth/check?scope=Predict", args.wrk_seconds,
                                 {"Authorization": f"Key {key}"}))
            result["bare"], result["check"] = bare, check
            result["share"] = statistics.median(c / b for c, b in zip(check, bare, strict=True))
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
    text = log_path.read_text("utf-8", "replace")
    result["worker_timeouts"] = text.count("WORKER TIMEOUT")
    result["worker_kills"] = len(re.findall(r"SIGKILL|was sent SIG|Worker \(pid:\d+\) was", text))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", default="sync,sync-timeout,gthread,granian,buffering")
    parser.add_argument("--slow", type=int, default=50, help="slow connections")
    parser.add_argument("--seconds", type=int, default=20, help="probing under slow clients")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="gthread's threads per worker")
    parser.add_argument("--wrk-seconds", type=int, default=5, help="0: no throughput rounds")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keyledger-serving-"))
    try:
        data_dir = workdir / "var"
        key = seed(data_dir, 1000)[1]
        print(f"{args.workers} workers per design; {args.slow} slow connections (a byte a second); "
              f"probes: 2 clients alternating /healthz and forward-auth, a new connection each; "
              f"load before: {os.getloadavg()[0]:.2f}")
        results = []
        for design in args.designs.split(","):
            r = bench(design, data_dir, key, args)
            results.append(r)
            print(f"\n{design}:")
            for path in r["quiet"]:
                print(f"  {path.split('?')[0]:<16} quiet      {line(r['quiet'][path])}")
                print(f"  {'':<16} slow load  {line(r['slow'][path])}")
            print(f"  under slow load: {r['failures']} of {r['answered']} probe requests failed; "
                  f"{r['reopened']} slow connections closed by the server; worker timeouts logged: "
                  f"{r['worker_timeouts']}; garbage request line answered: {r['refusal']}")
            if "share" in r:
                print(f"  wrk -t1 -c4: bare WSGI {' / '.join(f'{x:,.0f}' for x in r['bare'])} req/s, "
                      f"forward-auth {' / '.join(f'{x:,.0f}' for x in r['check'])} req/s: "
                      f"{r['share']:.1%} of the bare app (median of rounds)")
        print(f"\nload after: {os.getloadavg()[0]:.2f}")
        print("\n| design | /healthz p99 quiet / slow (ms) | forward-auth p99 quiet / slow (ms) | failed probes | "
              "worker timeouts | garbage request line | bare req/s | forward-auth req/s | share |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in results:
            h, c = (list(r["quiet"])[i] for i in (0, 1))

            def p99(phase: str, path: str, r: dict = r) -> str:
                s = r[phase][path]
                return f"{s['p99_ms']:.1f}" if s.get("n") else "-"
            bare = f"{statistics.mean(r['bare']):,.0f}" if "bare" in r else "-"
            check = f"{statistics.mean(r['check']):,.0f}" if "check" in r else "-"
            share = f"{r['share']:.1%}" if "share" in r else "-"
            print(f"| {r['design']} | {p99('quiet', h)} / {p99('slow', h)} | {p99('quiet', c)} / {p99('slow', c)} | "
                  f"{r['failures']} of {r['answered']} | {r['worker_timeouts']} | {r['refusal']} | {bare} | {check} | {share} |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
