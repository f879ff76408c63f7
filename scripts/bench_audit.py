#!/usr/bin/env python3
"""Benchmark the audit trail; figures are printed next to a baseline from the same run.

    .venv/bin/python scripts/bench_audit.py [--events 1000000] [--apps 10000] [--queries 200]

1. seeds a fresh SQLite store with N events across the apps (each save holds one event of
   every app; the apps' histories interleave over eight weeks, as they would in production);
2. builds the views from the log at start (events/s);
3. p50/p95 latency of filtered queries through the HTTP layer (Flask test client, an auditor's
   token): one app's last week; one key's history; one actor; a page deep into the log by cursor;
4. the integrity check (chain recomputed from the stored records, compared with the audit view
   and the signed checkpoints), events/s, next to a raw SELECT of the same rows;
5. exports (jsonl and csv, the code ``keyledger audit export`` and the HTTP exports run) in a
   fresh process each: rows/s, and the peak resident memory during the export against the
   process's size before it — for a small slice and for everything (constant memory: the
   increase does not grow with the number of rows).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchkit import PEPPER, raw_select, run_probe  # noqa: E402

from projections.audit import encode_cursor  # noqa: E402
from service import credentials  # noqa: E402
from service.api import create_app  # noqa: E402
from service.composition import build_system  # noqa: E402
from service.domain.actors import NO_REQUEST, Actor  # noqa: E402
from service.domain.apps import App  # noqa: E402
from service.domain.keys import ApiKey  # noqa: E402
from service.settings import Settings  # noqa: E402

SCOPE_SETS = (["Predict"], ["Predict", "Search"], ["Models:Add", "Models:Patch"], ["All"])
OWNERS = 100
SPAN = timedelta(weeks=8)


def settings_for(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, pepper=PEPPER)


def seed(data_dir: Path, events: int, apps: int) -> None:
    """``events`` events: every round gives each app one event (registered, a key issued, its
    scopes changed, rolled, revoked, and again), saved as one batch per round."""
    system = build_system(settings_for(data_dir), follow=False)
    keys_app = system.keys_app
    owners = [str(uuid4()) for _ in range(OWNERS)]
    rounds = -(-events // apps)
    start = datetime.now(UTC) - SPAN
    started = time.perf_counter()
    keys: list[ApiKey | None] = [None] * apps
    steps = [0] * apps
    written = 0
    for r in range(rounds):
        at = start + SPAN * (r / rounds)
        batch = []
        for a in range(min(apps, events - written)):
            owner = owners[a % OWNERS]
            by = f"account:{owner}" if a % 10 else "system:importer"
            request = {"id": uuid4().hex, "ip": f"10.0.{a % 250}.{r % 250}", "user_agent": "bench"}
            key, step = keys[a], steps[a]
            if r == 0:
                aggregate = App._create(App.Registered, id=App.create_id(f"app-{a}"), slug=f"app-{a}",
                                        name=f"App {a}", owner_id=owner, origin="user", by=by,
                                        request=request, timestamp=at)
            elif key is None or step % 6 == 0:
                secret = credentials.API_KEY_PREFIX + os.urandom(16).hex()
                aggregate = key = ApiKey._create(
                    ApiKey.Issued, id=uuid4(), app_id=f"app-{a}", description="bench",
                    scopes=SCOPE_SETS[a % 4], expires_at=None,
                    digest=keys_app.digester.hexdigest(secret), display=credentials.display_hint(secret),
                    origin="user", by=by, request=request, timestamp=at)
            elif step % 6 == 4:
                secret = credentials.API_KEY_PREFIX + os.urandom(16).hex()
                key.roll(digest=keys_app.digester.hexdigest(secret), display=credentials.display_hint(secret),
                         grace_until=at + timedelta(hours=1), by=by, request=request, at=at)
                aggregate = key
            elif step % 6 == 5:
                key.revoke(by=by, request=request, at=at)
                aggregate = key
            else:
                key.change_scopes(SCOPE_SETS[(a + step) % 4], by=by, request=request, at=at)
                aggregate = key
            keys[a] = key
            steps[a] = step + 1
            batch.append(aggregate)
        keys_app.save(*batch)
        written += len(batch)
    elapsed = time.perf_counter() - started
    system.close()
    print(f"seeded {written:,} events across {apps:,} apps in {elapsed:.1f} s "
          f"({written / elapsed:,.0f} events/s, {apps:,} events per save)", flush=True)


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p95 = ordered[int(len(ordered) * 0.95) - 1] * 1000
    return f"p50 {p50:6.2f} ms  p95 {p95:6.2f} ms"


def bench_queries(system, count: int) -> None:
    keys_app = system.keys_app
    auditor, token = keys_app.register_account(email=f"bench-auditor-{uuid4().hex[:6]}@example.com",
                                               name="Auditor", role="auditor", by=Actor.system("bench"),
                                               request=NO_REQUEST)
    system.after_command()
    client = create_app(system=system).test_client()
    headers = {"Authorization": f"Key {token}"}
    with system.views.read() as db:
        last = db.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
        apps = db.execute("SELECT COUNT(*) FROM audit_app_owners").fetchone()[0]
        key_ids = [r[0] for r in db.execute(
            "SELECT key_id FROM audit_events WHERE type = 'ApiKey.Issued' AND seq % 97 = 0 LIMIT 5000")]
        actors = [r[0] for r in db.execute("SELECT DISTINCT owner_id FROM audit_app_owners LIMIT 100")]
    week_ago = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rng = random.Random(7)
    queries = {
        "one app's last week": lambda: f"/v2/audit/events?app_id=app-{rng.randrange(apps)}&since={week_ago}",
        "one key's history": lambda: f"/v2/audit/events?key_id={rng.choice(key_ids)}",
        "one actor": lambda: f"/v2/audit/events?actor=account:{rng.choice(actors)}",
        "a page deep in the log (cursor)": lambda: f"/v2/audit/events?cursor={encode_cursor(rng.randrange(last // 2, last))}",
    }
    for name, make in queries.items():
        for _ in range(10):  # warm the page cache
            client.get(make(), headers=headers)
        samples, rows = [], 0
        for _ in range(count):
            url = make()
            started = time.perf_counter()
            response = client.get(url, headers=headers)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.get_data(as_text=True)
            rows += len(response.json["events"])
        print(f"  {name:34s} {percentiles(samples)}  ({rows / count:.0f} events per page; target p95 <= 50 ms)",
              flush=True)


def bench_integrity(system, data_dir: Path) -> None:
    started = time.perf_counter()
    report = system.check_integrity()
    elapsed = time.perf_counter() - started
    assert report["ok"], report
    rows, raw = raw_select(data_dir / "events.sqlite")
    print(f"integrity check: {report['checked'] / elapsed:,.0f} events/s ({report['checked']:,} events in "
          f"{elapsed:.2f} s, ok, {report['checkpoints']} checkpoint(s); target >= 100,000/s); raw SELECT of "
          f"the same rows: {rows / raw:,.0f} rows/s (check = {raw / elapsed:.1%} of it)", flush=True)


CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from projections.audit import AuditFilter
from service import exports
from service.composition import build_system
from service.settings import Settings

def status(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])

system = build_system(Settings(data_dir=Path({data_dir!r}), pepper={pepper!r}), follow=False)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
rows = 0
started = time.perf_counter()
with open(os.devnull, "w") as out:
    for event_or_chunk in exports.lines(system.audit.stream(AuditFilter(type={type!r})), {fmt!r}):
        out.write(event_or_chunk)
elapsed = time.perf_counter() - started
print(json.dumps({{"elapsed": elapsed, "before_kb": before, "peak_kb": status("VmHWM"),
                  "rows": system.audit.count(AuditFilter(type={type!r}))}}))
"""


def run_export(data_dir: Path, fmt: str, type_: str | None) -> dict:
    script = CHILD.format(root=str(ROOT), data_dir=str(data_dir), pepper=PEPPER, fmt=fmt, type=type_)
    return run_probe(script, f"export {fmt} {type_}", env={**os.environ, "KEYLEDGER_LOG_LEVEL": "WARNING"})


def bench_export(data_dir: Path) -> None:
    """Each export runs in a fresh process: its peak resident memory during the export (the
    peak is reset once the process has started) against its size before it began."""
    for fmt in ("jsonl", "csv"):
        for type_ in ("ApiKey.Revoked", None):
            r = run_export(data_dir, fmt, type_)
            what = f"{r['rows']:,} rows" + (f" ({type_} only)" if type_ else " (everything)")
            print(f"export {fmt:5s} {what:34s}: {r['rows'] / r['elapsed']:,.0f} rows/s; resident "
                  f"{r['before_kb'] / 1024:.0f} MiB before, peak {r['peak_kb'] / 1024:.0f} MiB during "
                  f"(+{(r['peak_kb'] - r['before_kb']) / 1024:.1f} MiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="keyledger-bench-audit-"))
    print(f"data in {data_dir}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        seed(data_dir, args.events, args.apps)
        started = time.perf_counter()
        system = build_system(settings_for(data_dir), follow=False)
        elapsed = time.perf_counter() - started
        print(f"first start (all views built from the log): {args.events / elapsed:,.0f} events/s "
              f"({elapsed:.1f} s)", flush=True)
        started = time.perf_counter()
        checkpoint = system.sign_checkpoint()
        print(f"first checkpoint signed at seq {checkpoint['seq']:,} in {time.perf_counter() - started:.2f} s "
              "(walks the whole chain once)", flush=True)
        print("filtered queries over HTTP (Flask test client):", flush=True)
        bench_queries(system, args.queries)
        bench_integrity(system, data_dir)
        system.close()
        bench_export(data_dir)
        print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
