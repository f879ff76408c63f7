#!/usr/bin/env python3
"""What sealing every stored record costs, next to a baseline without seals in the same run.

    .venv/bin/python scripts/bench_record_seal.py [--commands 2000] [--events 100000] [--rounds 3]
                                                  [--database-url postgresql://…]

1. encoding one event for the store (``Mapper.to_stored_event``): plain vs sealed, µs per event;
2. the write path end to end: a key's scopes changed (``change_key`` + ``after_command``: the
   save, the index, the views — the audit view's tail mark included), commands/s, with seals and
   the tail mark vs. without either (the library's mapper, no mark), alternating rounds;
3. reading the log for the projections (``read_events``: raw rows, each judged — types, seal —
   then decoded) vs. the library's ``select_notifications`` + decoding, events/s;
4. the integrity check (chain, witness, seals, checkpoints), events/s, next to the chain alone.
On SQLite files in a temporary folder by default; on PostgreSQL with ``--database-url`` (a
schema of its own, dropped afterwards).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from uuid import UUID, uuid4

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventsourcing.persistence import EventStore, Mapper  # noqa: E402

from projections.audit import AuditTrail  # noqa: E402
from service.application.sealing import SealedEventStore, SealedSnapshotStore, SealingMapper  # noqa: E402
from service.composition import build_system  # noqa: E402
from service.domain.actors import NO_REQUEST, Actor  # noqa: E402
from service.domain.audit import GENESIS, chain_hash  # noqa: E402
from service.settings import Settings  # noqa: E402

PEPPER = "bench-pepper-0123456789abcdef0123456789abcdef"
ADMIN = Actor.system("bench")


def settings_for(data_dir: Path, database_url: str | None) -> Settings:
    if database_url:
        return Settings(data_dir=data_dir, pepper=PEPPER, database_url=database_url,
                        database_schema="bench_seal_" + uuid4().hex[:8])
    return Settings(data_dir=data_dir, pepper=PEPPER)


class Unsealed:
    """The baseline: the library's own mapper and stores, and no tail mark (as before this change).
    ``seals=True``: seals as usual, only the tail mark off (to tell the two costs apart)."""

    def __init__(self, *, seals: bool = False) -> None:
        self.seals = seals

    def __enter__(self) -> None:
        self.saved = (SealingMapper.to_stored_event, AuditTrail.process_batch, SealedSnapshotStore.get,
                      SealedEventStore.get)
        if not self.seals:
            SealingMapper.to_stored_event = Mapper.to_stored_event  # type: ignore[method-assign]
            SealedSnapshotStore.get = SealedEventStore.get = EventStore.get  # type: ignore[method-assign]
        process_batch = AuditTrail.process_batch

        def without_mark(self, db, batch):  # type: ignore[no-untyped-def]
            on_head, self.on_head = self.on_head, None
            try:
                process_batch(self, db, batch)
            finally:
                self.on_head = on_head

        AuditTrail.process_batch = without_mark  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        (SealingMapper.to_stored_event, AuditTrail.process_batch, SealedSnapshotStore.get,  # type: ignore[method-assign]
         SealedEventStore.get) = self.saved


def encode_cost(system, n: int = 20_000) -> tuple[float, float]:
    keys_app = system.keys_app
    key, _ = keys_app.issue_key("bench", description="d", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    events = list(keys_app.events.get(UUID(key["id"])))
    event = events[0]
    mapper = keys_app.mapper
    timings = {}
    for name, encode in (("plain", lambda e: Mapper.to_stored_event(mapper, e)), ("sealed", mapper.to_stored_event)):
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                encode(event)
            best = min(best, (time.perf_counter() - started) / n * 1e6)
        timings[name] = best
    return timings["plain"], timings["sealed"]


def write_rate(system, key_id: str, commands: int) -> float:
    keys_app = system.keys_app
    scopes = (["Predict"], ["Predict", "Search"])
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(commands):
        keys_app.change_key(key_id, scopes=scopes[i % 2], by=ADMIN, request=NO_REQUEST)
        system.after_command()
    CPU_US.setdefault(id(system), []).append((time.process_time() - cpu) / commands * 1e6)
    return commands / (time.perf_counter() - started)


CPU_US: dict[int, list[float]] = {}  # CPU µs per command of each round, by system


def own_database(server_url: str, *, create: bool) -> str:
    """Create (or drop) this run's database on the server; returns its URL."""
    import os
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from service.settings import parse_database_url

    name = f"keyledger_bench_seal_{os.getpid()}"
    parts = parse_database_url(server_url, "--database-url")
    conninfo = (f"host={parts['host']} port={parts['port']} dbname={parts['dbname']} user={parts['user']}"
                + (f" password={parts['password']}" if parts["password"] else ""))
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            db.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(server_url)
    return urlunsplit((url.scheme, url.netloc, "/" + name, "", ""))


def prepare(system) -> str:
    """An owner, an app and a key whose scopes the write path changes back and forth."""
    keys_app = system.keys_app
    owner, _ = keys_app.register_account(email="b@example.com", name="B", role="owner", by=ADMIN, request=NO_REQUEST)
    keys_app.create_app(name="Bench", slug="bench", owner_id=owner["id"], by=ADMIN, request=NO_REQUEST)
    key, _ = keys_app.issue_key("bench", description="w", scopes=["Predict"], by=ADMIN, request=NO_REQUEST)
    system.after_command()
    return key["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=2000, help="commands per round of the write path")
    parser.add_argument("--events", type=int, default=100_000, help="events in the store for the read figures")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", help="postgresql://… to measure on PostgreSQL")
    args = parser.parse_args()
    server_url = args.database_url
    if server_url:  # a database of the run's own on that server, dropped at the end
        args.database_url = own_database(server_url, create=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-seal-"))
    settings = settings_for(folder / "var", args.database_url)
    plain_settings = settings_for(folder / "plain", args.database_url)
    with Unsealed():
        plain_system = build_system(plain_settings, follow=False)
        plain_key = prepare(plain_system)
    unmarked_system = build_system(settings_for(folder / "unmarked", args.database_url), follow=False)
    system = build_system(settings, follow=False)
    where = "PostgreSQL" if args.database_url else "SQLite files"
    try:
        key_id = prepare(system)
        unmarked_key = prepare(unmarked_system)
        plain, sealed = encode_cost(system)
        print(f"store: {where}")
        print(f"1. encode one event: plain {plain:.2f} µs, sealed {sealed:.2f} µs (+{sealed - plain:.2f} µs)")

        rates: dict[str, list[float]] = {"unsealed": [], "unmarked": [], "sealed": []}
        for _ in range(args.rounds):  # alternating, each on its own store of the same shape
            with Unsealed():
                rates["unsealed"].append(write_rate(plain_system, plain_key, args.commands))
            with Unsealed(seals=True):
                rates["unmarked"].append(write_rate(unmarked_system, unmarked_key, args.commands))
            rates["sealed"].append(write_rate(system, key_id, args.commands))
        base = statistics.median(rates["unsealed"])
        base_cpu = statistics.median(CPU_US[id(plain_system)])
        print(f"2. write path (change_key + after_command), median of {args.rounds} alternating rounds of "
              f"{args.commands}: without seals or mark {base:,.0f} commands/s ({1e3 / base:.3f} ms each, "
              f"{base_cpu:.0f} µs of CPU)")
        for name, what, owner in (("unmarked", "sealed, no tail mark", unmarked_system),
                                  ("sealed", "sealed with the tail mark", system)):
            mine, cpu = statistics.median(rates[name]), statistics.median(CPU_US[id(owner)])
            print(f"   {what}: {mine:,.0f} commands/s ({1e3 / mine:.3f} ms each, {mine / base:.1%} of the "
                  f"baseline); CPU {cpu:.0f} µs per command ({cpu - base_cpu:+.0f} µs, {cpu / base_cpu:.1%})")
        keys = [key_id]
        app = system.keys_app
        batch, grown = 500, app.last_position()
        while grown < args.events:
            for i in range(batch):
                for key_id in keys:
                    app.change_key(key_id, description=f"d{grown}-{i}", by=ADMIN, request=NO_REQUEST)
            grown = app.last_position()
        total = app.last_position()

        def library_read() -> int:
            count, after = 0, 0
            while True:
                notifications = app.recorder.select_notifications(start=after, limit=1000, inclusive_of_start=False)
                if not notifications:
                    return count
                for n in notifications:
                    Mapper.to_domain_event(app.mapper, n.__class__(id=n.id, originator_id=n.originator_id,
                                                                  originator_version=n.originator_version,
                                                                  topic=n.topic, state=n.state))
                count += len(notifications)
                after = notifications[-1].id

        def judged_read() -> int:
            count, after = 0, 0
            while batch_ := app.read_events(after, 1000):
                count += len(batch_)
                after = batch_[-1][0]
            return count

        for name, read in (("the library's select_notifications + decode (seals not checked)", library_read),
                           ("read_events: raw rows judged (types, seal) + decode", judged_read)):
            best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                count = read()
                best = min(best, time.perf_counter() - started)
            print(f"3. {name}: {count / best:,.0f} events/s ({count} events)")

        started = time.perf_counter()
        head = GENESIS
        for record in app._walk(0):
            head = chain_hash(head, *record)
        chain_only = total / (time.perf_counter() - started)
        system.after_command()
        started = time.perf_counter()
        report = system.check_integrity()
        full = report["checked"] / (time.perf_counter() - started)
        print(f"4. integrity check: {full:,.0f} events/s (ok={report['ok']}, {report['checked']} events); "
              f"the chain alone over the same records: {chain_only:,.0f} events/s")
    finally:
        system.close()
        plain_system.close()
        unmarked_system.close()
        if server_url:
            own_database(server_url, create=False)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
