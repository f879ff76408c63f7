#!/usr/bin/env python3
"""Leak reports against real servers: a signed batch of 1,000 tokens, and report → refused on
another instance; each figure next to a baseline from the same run, with the load average.

    .venv/bin/python scripts/bench_leaks.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                                            [--live 300] [--revoked 200] [--foreign 500] [--propagation 100]

Two ``keyledger serve`` processes share one store (a temporary SQLite directory, or a fresh
schema on the PostgreSQL server given, dropped afterwards). Measured:

1. ``batch``: one signed POST /v2/leaks/github with live, revoked and foreign tokens (shuffled),
   next to the baseline of a batch of the same size of foreign strings only (no writes);
2. ``propagation``: a report of one live key to the first instance → /v2/auth/check refuses it on
   the second; p50/p99/max, next to the same for DELETE /v2/keys/<id> (the existing revocation).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("KEYLEDGER_TEST_DATABASE_URL", None)  # the servers' store is chosen here

from benchkit import bench_owner, p50_p99_max, tear_down  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from service import credentials  # noqa: E402
from service.github_scanning import sign  # noqa: E402
from tests.e2e.conftest import Response, ServerProcess  # noqa: E402

KEY_ID = "bench"


def post_report(server: ServerProcess, private, items: list[dict]) -> tuple[Response, float]:
    import urllib.error
    import urllib.request

    raw = json.dumps(items).encode()
    request = urllib.request.Request(server.url + "/v2/leaks/github", data=raw, method="POST", headers={
        "Content-Type": "application/json", "Github-Public-Key-Identifier": KEY_ID,
        "Github-Public-Key-Signature": sign(private, raw)})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            response = Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as error:
        response = Response(error.code, dict(error.headers.items()), error.read())
    return response, time.perf_counter() - started


def item(token: str) -> dict:
    return {"token": token, "type": "keyledger_api_key",
            "url": f"https://github.com/bench/repo/blob/{random.getrandbits(64):016x}/config.py",
            "source": "content"}


def refused_after(first: ServerProcess, second: ServerProcess, secret: str, act) -> float:
    act()
    started = time.perf_counter()
    while second.get("/v2/auth/check?scope=Predict", headers={"Authorization": f"Key {secret}"}).status != 401:
        if time.perf_counter() - started > 10:
            raise SystemExit("not refused within 10 s")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url")
    parser.add_argument("--live", type=int, default=300)
    parser.add_argument("--revoked", type=int, default=200)
    parser.add_argument("--foreign", type=int, default=500)
    parser.add_argument("--propagation", type=int, default=100)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keyledger-bench-leaks-"))
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (work / "keys.json").write_text(json.dumps({"public_keys": [{"key_identifier": KEY_ID, "key": pem}]}))
    env = {"KEYLEDGER_GITHUB_SCANNING_KEYS": str(work / "keys.json")}
    schema = f"bench_leaks_{os.getpid()}"
    if args.database_url:
        env.update({"KEYLEDGER_DATABASE_URL": args.database_url, "KEYLEDGER_DATABASE_SCHEMA": schema})
    servers = [ServerProcess(data_dir=work / "var", log_path=work / f"server{i}.log", extra_env=env)
               for i in (1, 2)]
    try:
        first = servers[0].start()
        second = servers[1].start()
        _, owner = bench_owner(first)
        total = args.live + args.revoked + args.propagation * 2
        print(f"creating {total} keys …", file=sys.stderr)
        keys = [first.post("/v2/apps/bench/keys", {"description": f"k{i}", "scopes": ["Predict"]},
                           token=owner).json for i in range(total)]
        live = keys[:args.live]
        revoked = keys[args.live:args.live + args.revoked]
        for key in revoked:
            assert first.delete(f"/v2/keys/{key['id']}", token=owner).status == 204
        rest = keys[args.live + args.revoked:]
        size = args.live + args.revoked + args.foreign

        foreign_only = [item(credentials.generate(credentials.API_KEY_PREFIX)) for _ in range(size)]
        base, base_s = post_report(first, private, foreign_only)
        assert base.status == 200, base
        batch = ([item(k["key"]) for k in live] + [item(k["key"]) for k in revoked]
                 + [item(credentials.generate(credentials.API_KEY_PREFIX)) for _ in range(args.foreign)])
        random.shuffle(batch)
        answer, batch_s = post_report(first, private, batch)
        assert answer.status == 200, answer
        labels = [f["label"] for f in answer.json]
        assert labels.count("true_positive") == args.live + args.revoked, labels.count("true_positive")
        load = os.getloadavg()[0]
        store = "postgresql" if args.database_url else "sqlite"
        print(f"[{store}, load {load:.1f}] batch of {size} ({args.live} live, {args.revoked} revoked, "
              f"{args.foreign} foreign): {batch_s:.2f} s; baseline {size} foreign only: {base_s:.2f} s "
              f"(ratio {batch_s / base_s:.1f})")

        by_report, by_delete = [], []
        for a, b in zip(rest[0::2], rest[1::2], strict=False):
            by_report.append(refused_after(first, second, a["key"],
                                           lambda a=a: post_report(first, private, [item(a["key"])])))
            by_delete.append(refused_after(first, second, b["key"],
                                           lambda b=b: first.delete(f"/v2/keys/{b['id']}", token=owner)))
        load = os.getloadavg()[0]

        print(f"[{store}, load {load:.1f}] report → refused on the other instance (n={len(by_report)}): "
              f"{p50_p99_max(by_report)}; baseline DELETE → refused: {p50_p99_max(by_delete)}")
    finally:
        tear_down(servers, work, args.database_url, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
