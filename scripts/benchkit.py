"""The pieces the benchmark scripts share: the baseline's code, probes, seeding, waiting for a
server, raw reads of the event log, PostgreSQL clean-up and the figures' formatting.

Imported as a sibling module (``scripts/`` is ``sys.path[0]`` when a script runs); it imports
only the standard library at the top, the service's code and drivers where a function needs them.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEPPER = "bench-pepper-0123456789abcdef0123456789abcdef"


# -- the machine ------------------------------------------------------------------------------

def load() -> str:
    """The three load averages, as ``1.23/0.98/0.75``."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the baseline's code and probe processes -------------------------------------------------

def export(ref: str, into: Path) -> Path:
    """The tree of ``ref`` as plain files (the baseline's code, run on the same store)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_probe(code: str, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; the JSON object its last line of output prints.
    A failure ends the benchmark with the tail of the probe's stderr, naming ``what`` failed."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    if result.returncode:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# The part of an in-process probe that picks the verifier, the digester and the index's table,
# and checks the read-only key (``secrets[1]``) is valid for Predict only: for PROBE strings
# formatted with ``secrets``; a probe's own measurement follows, indented under ``if secrets:``.
VERIFY_SETUP = r"""secrets = {secrets!r}
if secrets:
    verify = system.verifier.verify
    digest = system.authenticator.digester.digest
    table = system.index.by_digest
    key = secrets[1]
    assert verify(key, "Predict")[0] == "VALID", verify(key, "Predict")
    assert verify(key, "Models:Add")[0] == "INSUFFICIENT_SCOPE"
"""


# -- a store of keys, seeded fast ---------------------------------------------------------------

SCOPE_SETS = ('["All"]', '["Predict","Search"]', '["Models:Add","Models:Patch"]', '["Predict"]')
ISSUED = "service.domain.keys:ApiKey.Issued"
BATCH = 10_000


def insert_issued_keys(recorder, count: int, seal_key: bytes | None = None) -> float:  # noqa: ANN001
    """``count`` ``ApiKey.Issued`` stored events through the library's recorder, ``BATCH`` per
    insert, their state as the library's mapper writes it (JSON, not compressed): filler digests
    (random bytes, as HMACs of random secrets would be), every other key expiring in a year, 4
    scope sets, 5,000 apps; sealed as the service seals its records when ``seal_key`` is given.
    Returns the seconds it took."""
    from eventsourcing.persistence import StoredEvent

    seal = None
    if seal_key is not None:
        from service.domain.audit import seal
    now = datetime.now(UTC)
    stamp = now.isoformat()
    expiry = (now + timedelta(days=365)).isoformat()
    template = ('{"timestamp":{"_type_":"datetime_iso","_data_":"' + stamp + '"},'
                '"originator_topic":"service.domain.keys:ApiKey","by":"system:bench","request":{},'
                '"app_id":"app-%d","description":"bench","scopes":%s,"expires_at":%s,'
                '"digest":"%s","display":"ak_\u2026%s","origin":"migration"}')
    expires = ('{"_type_":"datetime_iso","_data_":"' + expiry + '"}', "null")
    started = time.perf_counter()
    batch: list[StoredEvent] = []
    urandom, hexlify = os.urandom, bytes.hex
    for i in range(count):
        digest = hexlify(urandom(32))
        body = (template % (i % 5000, SCOPE_SETS[i % 4], expires[i & 1], digest, digest[:4])).encode()
        oid = uuid.UUID(bytes=urandom(16), version=4)
        if seal is not None:
            body = seal(seal_key, oid.hex, 1, ISSUED, body)
        batch.append(StoredEvent(oid, 1, ISSUED, body))
        if len(batch) == BATCH:
            recorder.insert_events(batch)
            batch = []
    if batch:
        recorder.insert_events(batch)
    return time.perf_counter() - started


# -- the event log read raw ---------------------------------------------------------------------

def raw_select(sqlite_path: Path | None = None, conninfo: str | None = None,
               table: str | None = None) -> tuple[int, float]:
    """Rows and seconds of a plain ``SELECT`` of every stored event in the log's order (the
    decode-free bound of a rebuild or a check): of the SQLite file ``sqlite_path``, or of
    ``table`` (schema-qualified where need be) on the PostgreSQL of ``conninfo``, by a server-side
    cursor fetching 10,000 rows at a time. Timed from the connection open to the last row."""
    if sqlite_path is not None:
        import sqlite3

        db = sqlite3.connect(sqlite_path)
        started = time.perf_counter()
        rows = sum(1 for _ in db.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events ORDER BY rowid"))
        elapsed = time.perf_counter() - started
        db.close()
        return rows, elapsed
    import psycopg

    with psycopg.connect(conninfo) as db, db.cursor(name="raw") as cursor:
        cursor.itersize = 10_000
        started = time.perf_counter()
        cursor.execute(f"SELECT notification_id, originator_id, originator_version, topic, state "
                       f"FROM {table} ORDER BY notification_id")
        rows = sum(1 for _ in cursor)
        return rows, time.perf_counter() - started


# -- servers ------------------------------------------------------------------------------------

def wait_ready(url: str, process: subprocess.Popen, timeout: float, interval: float, what: str,
               log: Path | str) -> None:
    """Poll ``url`` (a ``/readyz``) until it answers 200; if ``timeout`` seconds pass or the
    process ends first, end the benchmark: ``{what} did not start; see {log}``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never a proxy
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{what} did not start; see {log}") from None
            time.sleep(interval)


# -- PostgreSQL ---------------------------------------------------------------------------------

def pg_connect(url: str):  # noqa: ANN201
    """An autocommit psycopg connection to the database of ``url`` (a ``postgresql://`` URL)."""
    import psycopg

    from service.settings import parse_database_url

    u = parse_database_url(url)
    return psycopg.connect(host=u["host"], port=u["port"], dbname=u["dbname"], user=u["user"],
                           password=u["password"] or None, autocommit=True)


def drop_schema(url: str, schema: str) -> None:
    """Drop a benchmark's PostgreSQL schema and everything in it (if it is there)."""
    with pg_connect(url) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# -- figures ------------------------------------------------------------------------------------

def quartiles(values: list[float], fmt: str) -> str:
    """``median (q1-q3)`` of ``values`` formatted with ``fmt`` (NaNs left out; ``-`` if none;
    a single value alone)."""
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) < 2:
        return format(values[0], fmt)
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{format(q2, fmt)} ({format(q1, fmt)}-{format(q3, fmt)})"


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values``, the nearest rank over ``len - 1`` intervals."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def p50_p99_max(values: list[float]) -> str:
    """Seconds as ``p50 12 ms, p99 40 ms, max 55 ms``."""
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {pct(values, 99) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms")


# -- accounts, apps and keys made through the use cases -----------------------------------------

def real_keys(app):  # noqa: ANN001, ANN201
    """Through the keys application's use cases: an owner account, its app ``bench`` (with its
    all-scopes key) and a read-only key (Predict, Search); the acting admin and the two secrets."""
    from service.domain.actors import NO_REQUEST, Actor

    admin = Actor.system("bench")
    owner, _ = app.register_account(email="bench-owner@example.com", name="Bench", role="owner",
                                    by=admin, request=NO_REQUEST)
    _, _, all_key = app.create_app(name="Bench", slug="bench", owner_id=owner["id"], by=admin,
                                   request=NO_REQUEST)
    _, read_only = app.issue_key("bench", description="ro", scopes=["Predict", "Search"], by=admin,
                                 request=NO_REQUEST)
    return admin, [all_key, read_only]


def bench_owner(server) -> tuple[str, str]:  # noqa: ANN001
    """On a running ``tests.e2e`` ``ServerProcess``: an admin account, an owner account and the
    owner's app ``bench`` over HTTP; the admin's and the owner's tokens."""
    from tests.e2e.conftest import http

    admin = server.create_account("admin", "admin@example.com", "Admin")["token"]
    owner = http("POST", server.url + "/v2/accounts", json_body={
        "email": "o@example.com", "name": "O", "role": "owner"}, token=admin).json["token"]
    assert server.post("/v2/apps", {"id": "bench", "name": "Bench"}, token=owner).status == 201
    return admin, owner


def tear_down(servers: list, work: Path, database_url: str | None, schema: str) -> None:
    """The end of a run on ``tests.e2e`` ``ServerProcess``es: stop those still running, drop the
    run's PostgreSQL schema (on ``database_url``, if any), remove the work folder."""
    import shutil

    for server in servers:
        if server.running:
            server.stop(timeout=5)
    if database_url:
        drop_schema(database_url, schema)
    shutil.rmtree(work, ignore_errors=True)
