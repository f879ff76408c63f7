#!/usr/bin/env python3
"""Rebuilds, first starts and start-up at scale; every figure next to a baseline from the same run.

    .venv/bin/python scripts/bench_rebuild.py [--events 1000000] [--keys 1000000] [--rounds 3]
                                              [--baseline-ref main] [--database-url URL]
                                              [--cache /tmp/keyledger-bench-rebuild] [--parts ...]

Two stores are seeded once and kept in ``--cache`` (reused by later runs with the same sizes):

* *mixed*: N events of interleaved app histories (apps registered, keys issued, scopes changed,
  rolled, revoked), saved through the use cases' aggregates, sealed — as ``bench_audit.py`` seeds;
* *keys*: N ``ApiKey.Issued`` events written through the library's recorder in batches of 10,000,
  each sealed as the service seals its records (random digests, every other key expiring, 5,000
  apps x 4 scope sets).

Then, in interleaved rounds (each measurement in a fresh process; this tree's code and the code of
``--baseline-ref``, exported from git, on the same store, one after the other):

1. ``first``: a first start on the *mixed* store (every view built from the log), events/s;
2. ``verification``: the verification view rebuilt from the *keys* store's log, events/s — next to
   a raw ``SELECT`` of the same rows, in the same process;
3. ``rebuild``: every view rebuilt on the *mixed* store (``keyledger projections rebuild``), events/s;
4. ``startup``: a process started on the *keys* store with its views built (the in-memory index
   loaded from its snapshot where the code keeps one — written when the untimed first start
   stopped — else from the verification view), seconds — next to a start on an empty store, and
   for a tree that loaded a snapshot, a start with the snapshot moved aside (from the view).

The load average is printed before and after each round; the summary gives medians over rounds
(with the ratio to the baseline's median).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchkit import PEPPER, export, insert_issued_keys, load, run_probe  # noqa: E402

PARTS = ("first", "verification", "rebuild", "startup")


def settings_for(data_dir: Path, database_url: str | None, schema: str | None):  # noqa: ANN201
    from service.settings import Settings

    extra = {"database_url": database_url, "database_schema": schema} if database_url else {}
    return Settings(data_dir=data_dir, pepper=PEPPER, **extra)


def seed_keys(data_dir: Path, count: int, database_url: str | None, schema: str | None) -> None:
    """``count`` sealed ``ApiKey.Issued`` records through the recorder, 10,000 per insert."""
    from service.composition import build_system

    system = build_system(settings_for(data_dir, database_url, schema), follow=False)
    elapsed = insert_issued_keys(system.keys_app.recorder, count, seal_key=system.keys_app.mapper.key)
    system.close()
    print(f"seeded {count:,} keys in {elapsed:.1f} s ({count / elapsed:,.0f} keys/s); load {load()}", flush=True)


def seed_mixed(data_dir: Path, count: int, database_url: str | None, schema: str | None) -> None:
    import bench_audit

    bench_audit.settings_for = lambda d: settings_for(d, database_url, schema)
    bench_audit.seed(data_dir, count, 10_000)


# -- the store's views: dropped (a first start), or kept ---------------------------------------

def drop_views(data_dir: Path, database_url: str | None, schema: str | None) -> None:
    """Every view gone, as on a store restored from a backup of the event log alone."""
    for name in ("views.sqlite", "views.sqlite-wal", "views.sqlite-shm", "audit-tail.json", "changes.beacon",
                 "verification-index.snapshot"):
        (data_dir / name).unlink(missing_ok=True)
    if database_url:
        import psycopg

        from service.settings import parse_database_url

        with psycopg.connect(parse_database_url(database_url), autocommit=True) as db:
            tables = [r[0] for r in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))]
            for table in tables:
                if table != "store_identity" and not table.startswith("keyledger_"):  # the event store's own
                    db.execute(f'DROP TABLE "{schema}"."{table}"')


PROBE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from service.composition import build_system
from service.settings import Settings
extra = {extra!r}
settings = Settings(data_dir=Path({data_dir!r}), pepper={pepper!r}, **extra)
mode = {mode!r}
out = {{}}
started = time.perf_counter()
system = build_system(settings, follow=False)
out["start_s"] = time.perf_counter() - started
out["events"] = system.keys_app.last_position()
out["keys"] = len(system.index)
out["from_snapshot"] = bool(getattr(getattr(system.index, "snapshots", None), "loaded", False))
if mode in ("verification", "rebuild"):
    names = ["verification"] if mode == "verification" else None
    started = time.perf_counter()
    count = system.follower.rebuild(names, reload=False)
    out["rebuild_s"] = time.perf_counter() - started
    out["rebuilt"] = count
if mode == "verification":  # the raw SELECT of the same rows, in the same process
    sys.path.insert(0, {scripts!r})  # this tree's benchkit (stdlib and the drivers), for every tree's probe
    from benchkit import raw_select
    if not extra:
        out["raw_rows"], out["raw_s"] = raw_select(settings.events_path)
    else:
        table = settings.database_schema + "." + system.keys_app.recorder.events_table_name
        out["raw_rows"], out["raw_s"] = raw_select(conninfo=settings.database_conninfo, table=table)
system.close()
print(json.dumps(out))
"""


def probe(root: Path, data_dir: Path, mode: str, database_url: str | None, schema: str | None) -> dict:
    extra = {"database_url": database_url, "database_schema": schema} if database_url else {}
    code = PROBE.format(root=str(root), data_dir=str(data_dir), pepper=PEPPER, mode=mode, extra=extra,
                        scripts=str(ROOT / "scripts"))
    return run_probe(code, f"probe {mode} of {root}", cwd=root, env={**os.environ, "KEYLEDGER_LOG_LEVEL": "WARNING"})


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the mixed store")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys of the keys store")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default="main", help="git ref whose code is the baseline ('' for none)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL instead of SQLite (schemas kept between runs)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "keyledger-bench-rebuild")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"a comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    store = "pg" if args.database_url else "sqlite"
    mixed = args.cache / f"{store}-mixed-{args.events}"
    keys = args.cache / f"{store}-keys-{args.keys}"
    schemas = {mixed: f"bench_mixed_{args.events}", keys: f"bench_keys_{args.keys}"}
    print(f"{os.cpu_count()} CPUs; {'PostgreSQL' if args.database_url else 'SQLite'}; load average before: {load()}",
          flush=True)
    for path, seeder, count in ((mixed, seed_mixed, args.events), (keys, seed_keys, args.keys)):
        wanted = {"first": mixed, "rebuild": mixed, "verification": keys, "startup": keys}
        if path not in {wanted[p] for p in parts} or (path / "seeded").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        seeder(path, count, args.database_url, schemas[path])
        (path / "seeded").write_text("ok")
    workdir = Path(tempfile.mkdtemp(prefix="keyledger-bench-rebuild-"))
    trees = {"this tree": ROOT}
    if args.baseline_ref:
        trees[args.baseline_ref] = export(args.baseline_ref, workdir / "baseline")
    empty = workdir / "empty"
    if "startup" in parts:  # the keys store's views built (once; resumed if a build was cut short), untimed
        probe(ROOT, keys, "start", args.database_url, schemas[keys])
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}: load {load()}", flush=True)
            for part in parts:
                for name, root in trees.items():
                    if part == "first":
                        drop_views(mixed, args.database_url, schemas[mixed])
                        out = probe(root, mixed, "start", args.database_url, schemas[mixed])
                        out["rate"] = out["events"] / out["start_s"]
                    elif part == "rebuild":
                        out = probe(root, mixed, "rebuild", args.database_url, schemas[mixed])
                        out["rate"] = out["rebuilt"] / out["rebuild_s"]
                    elif part == "verification":
                        out = probe(root, keys, "verification", args.database_url, schemas[keys])
                        out["rate"] = out["rebuilt"] / out["rebuild_s"]
                        out["raw_rate"] = out["raw_rows"] / out["raw_s"]
                    else:
                        out = probe(root, keys, "start", args.database_url, schemas[keys])
                        out["rate"] = out["start_s"]
                        out["empty_s"] = probe(root, empty, "start", None, None)["start_s"]
                        snapshot = keys / "verification-index.snapshot"
                        if out["from_snapshot"] and snapshot.exists():  # and without it (the index from its view)
                            aside = snapshot.with_name(snapshot.name + ".aside")
                            snapshot.rename(aside)
                            out["view_s"] = probe(root, keys, "start", args.database_url, schemas[keys])["start_s"]
                            aside.replace(snapshot)
                    results.setdefault((part, name), []).append(out)
                    print(f"  {part:12s} {name:10s} {json.dumps(out)}; load {load()}", flush=True)
        print(f"\nmedians over {args.rounds} round(s); load average after: {load()}")
        base = args.baseline_ref
        for part in parts:
            mine = median([o["rate"] for o in results[(part, "this tree")]])
            theirs = median([o["rate"] for o in results[(part, base)]]) if base else None
            vs = f"; {base}: {theirs:,.2f}, this tree = {mine / theirs:.2f}x" if theirs else ""
            runs = results[(part, "this tree")]
            if part == "startup":
                print(f"start-up with {runs[0]['keys']:,} keys: {mine:.2f} s{vs} "
                      f"(an empty store: {median([o['empty_s'] for o in runs]):.2f} s)")
                if all("view_s" in o for o in runs):
                    print(f"  this tree, the index from its snapshot; without one (from the view): "
                          f"{median([o['view_s'] for o in runs]):.2f} s")
            elif part == "verification":
                raw = median([o["raw_rate"] for o in runs])
                print(f"verification view rebuilt: {mine:,.0f} events/s = {mine / raw:.1%} of the raw SELECT of "
                      f"the same rows ({raw:,.0f} rows/s){vs}")
            else:
                what = "first start (every view built)" if part == "first" else "every view rebuilt"
                print(f"{what} on {runs[0]['events']:,} events: {mine:,.0f} events/s{vs}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
