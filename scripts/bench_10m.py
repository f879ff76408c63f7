#!/usr/bin/env python3
"""Ten million keys on one instance: start-up, memory per key, verification and the view's rebuild,
every figure next to a baseline from the same run.

    .venv/bin/python scripts/bench_10m.py [--keys 10000000] [--rounds 3] [--workdir DIR]
                                          [--baseline-ref main] [--database-url URL]

1. seeds N keys into a fresh store (SQLite, or PostgreSQL with --database-url): ``ApiKey.Issued``
   events written through the library's recorder in batches of 10,000 (filler digests: random
   bytes, as HMACs of random secrets would be; every other key expires, 4 scope sets, 5,000
   apps), then two real keys through the use cases, to verify with;
2. rebuilds the verification view from the log: events/s next to a raw ``SELECT`` of the same rows
   (the other views — directory, audit trail, usage, campaign — are marked up to date without
   their rows: they hold nothing in memory, and their first build is issue 16's item 3, measured
   by bench_audit.py);
3. starts processes on that store, in interleaved rounds (the same process on an empty store,
   this tree's code, and the code of ``--baseline-ref`` exported from git, on the same store):
   start-up time, resident memory per loaded key (RSS against the empty store's process; peak RSS
   too), and in-process verifications: median cost per call next to the bare HMAC + dict look-up
   in 200 interleaved rounds (the ratio is the median of the rounds' ratios, quartiles beside it);
4. a point look-up in the verification view (the miss path of the 100M-key design in the README)
   against the dict look-up of the same digests;
5. the load average before and after each part.

Big files go under --workdir (default: a temporary folder), removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchkit import (  # noqa: E402
    BATCH,
    PEPPER,
    VERIFY_SETUP,
    export,
    insert_issued_keys,
    load,
    quartiles,
    raw_select,
    real_keys,
    run_probe,
)

from service.composition import build_system  # noqa: E402
from service.settings import Settings  # noqa: E402


def settings_for(data_dir: Path, database_url: str | None) -> Settings:
    return Settings(data_dir=data_dir, pepper=PEPPER, database_url=database_url)


def seed(data_dir: Path, count: int, database_url: str | None) -> tuple[list[str], int]:
    """N keys in the store, their verification view built; returns the secrets of two keys made
    through the use cases, and the number of events in the log."""
    system = build_system(settings_for(data_dir, database_url), follow=False)
    app = system.keys_app
    elapsed = insert_issued_keys(app.recorder, count)
    print(f"seeded {count:,} keys in {elapsed:.1f} s ({count / elapsed:,.0f} keys/s, "
          f"{BATCH:,} per insert; load {load()})", flush=True)
    last = app.recorder.max_notification_id() or 0
    with system.views.write() as db:  # see the docstring: only the verification view is built
        system.views.set_positions(db, {p.name: last for p in system.follower.projections
                                         if p.name != "verification"})
    started = time.perf_counter()
    system.follower.rebuild(["verification"], reload=False)
    rebuild = time.perf_counter() - started
    raw_rate = raw_select_rate(system, database_url)
    print(f"rebuild of the verification view from the log: {last / rebuild:,.0f} events/s "
          f"({last:,} events in {rebuild:.1f} s); raw SELECT of the same rows {raw_rate:,.0f} rows/s "
          f"(rebuild = {last / rebuild / raw_rate:.1%} of it); load {load()}", flush=True)
    system.follower.start()  # the rest of the views, the index: as a process starts
    _, secrets = real_keys(app)
    system.after_command()
    events = app.recorder.max_notification_id()
    system.close()
    return secrets, events


def raw_select_rate(system, database_url: str | None) -> float:  # noqa: ANN001
    """Rows/s of a plain SELECT of every stored event (the decode-free bound of a rebuild)."""
    if database_url is None:
        rows, elapsed = raw_select(system.settings.data_dir / "events.sqlite")
    else:
        rows, elapsed = raw_select(conninfo=system.settings.database_conninfo,
                                   table=system.keys_app.recorder.events_table_name)
    return rows / elapsed


PROBE = r"""
import gc, json, statistics, sys, time, timeit
started = time.perf_counter()
sys.path.insert(0, {root!r})
from pathlib import Path
from service.composition import build_system
from service.settings import Settings
system = build_system(Settings(data_dir=Path({data_dir!r}), pepper={pepper!r}, database_url={url!r}),
                      follow=False)
ready = time.perf_counter() - started
status = open("/proc/self/status").read()
rss_kb = int(status.split("VmRSS:")[1].split()[0])
peak_kb = int(status.split("VmHWM:")[1].split()[0])
out = {{"startup_s": ready, "rss_kb": rss_kb, "peak_kb": peak_kb, "keys": len(system.index)}}
""" + VERIFY_SETUP + r"""    fns = (lambda: verify(key, "Predict"), lambda: table.get(digest(key)))
    rounds = [[], []]
    for _ in range(200):
        for times, fn in zip(rounds, fns):
            times.append(timeit.timeit(fn, number=2000) / 2000 * 1e6)
    out["verify_us"], out["baseline_us"] = (statistics.median(times) for times in rounds)
    ratios = [v / b for v, b in zip(*rounds)]
    out["ratio"] = statistics.median(ratios)
    out["ratio_quartiles"] = statistics.quantiles(ratios, n=4)[::2]
    # The miss path of a 100M design: one point look-up in the view, against the dict look-up
    # of the same digests (every 997th key: spread over the table), interleaved.
    import itertools
    sample = list(itertools.islice(table, 0, None, max(1, len(table) // 2000)))[:2000]
    sql = ("SELECT kind, key_id, app_id, scopes, expires_at, ends_at FROM verification "
           "WHERE digest >= ? ORDER BY digest LIMIT 1")
    with system.views.read() as db:
        def store_lookups():
            for d in sample:
                db.execute(sql, (d,)).fetchone()
        def dict_lookups():
            for d in sample:
                table.get(d)
        rounds = [[], []]
        for _ in range(10):
            for times, fn in zip(rounds, (store_lookups, dict_lookups)):
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) / len(sample) * 1e6)
    out["store_lookup_us"], out["dict_lookup_us"] = (statistics.median(t) for t in rounds)
print(json.dumps(out))
"""


def probe(root: Path, data_dir: Path, secrets: list[str], database_url: str | None) -> dict:
    code = PROBE.format(root=str(root), data_dir=str(data_dir), pepper=PEPPER, secrets=secrets,
                        url=database_url)
    return run_probe(code, f"probe of {root}", cwd=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of start-up probes")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline-ref", default="main",
                        help="git ref whose code is the index baseline ('' for none)")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL database to seed (it must be empty; it is left as is)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded store")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="keyledger-10m-", dir=args.workdir))
    print(f"{args.keys:,} keys on {'PostgreSQL' if args.database_url else 'SQLite'}; "
          f"load average before: {load()}", flush=True)
    try:
        empty_dir, full_dir = workdir / "empty", workdir / "full"
        build_system(settings_for(empty_dir, None), follow=False).close()
        secrets, events = seed(full_dir, args.keys, args.database_url)
        trees = {"this tree": ROOT}
        if args.baseline_ref:
            trees[args.baseline_ref] = export(args.baseline_ref, workdir / "baseline")
        results: dict[str, list[dict]] = {"empty": [], **{name: [] for name in trees}}
        for _ in range(args.rounds):  # interleaved: a neighbour's load hits every variant alike
            results["empty"].append(probe(ROOT, empty_dir, [], None))
            for name, root in trees.items():
                results[name].append(probe(root, full_dir, secrets, args.database_url))
                print(f"  probe {name}: {json.dumps(results[name][-1])}; load {load()}", flush=True)
        empty = results["empty"]
        print(f"\n{events:,} events; {args.rounds} interleaved rounds of probes (median (quartiles) "
              f"over rounds); empty store: start-up {quartiles([r['startup_s'] for r in empty], '.2f')} s, "
              f"RSS {statistics.median(r['rss_kb'] for r in empty) / 1024:,.0f} MiB")
        empty_kb = statistics.median(r["rss_kb"] for r in empty)
        for name in trees:
            runs = results[name]
            keys = runs[0]["keys"]
            per_key = [(r["rss_kb"] - empty_kb) * 1024 / keys for r in runs]
            peak = [(r["peak_kb"] - empty_kb) * 1024 / keys for r in runs]
            print(f"{name}:")
            print(f"  start-up with {keys:,} keys: {quartiles([r['startup_s'] for r in runs], '.1f')} s")
            print(f"  resident memory per key: {quartiles(per_key, '.0f')} bytes "
                  f"(peak during start-up {quartiles(peak, '.0f')}; target <= 200)")
            print(f"  in-process verification: {quartiles([r['verify_us'] for r in runs], '.2f')} us per call; "
                  f"bare HMAC + dict look-up {quartiles([r['baseline_us'] for r in runs], '.2f')} us; "
                  f"ratio {quartiles([r['ratio'] for r in runs], '.2f')} (within-round quartiles "
                  + ", ".join(f"{r['ratio_quartiles'][0]:.2f}-{r['ratio_quartiles'][1]:.2f}" for r in runs)
                  + ")")
            if "store_lookup_us" in runs[0]:
                print(f"  a point look-up in the view (the miss path of the 100M design): "
                      f"{quartiles([r['store_lookup_us'] for r in runs], '.1f')} us; the dict look-up of the "
                      f"same digests {quartiles([r['dict_lookup_us'] for r in runs], '.2f')} us")
        print(f"load average after: {load()}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")


if __name__ == "__main__":
    main()
