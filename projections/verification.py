"""Verification: digest → credential, in SQL and in every serving process's memory.

The SQL view ``verification`` is the materialised form (one row per digest: a key's
current secret, secrets still in a roll's grace period, personal tokens). Each serving
process loads it once at start into ``VerificationIndex`` and from then on applies new
events to it directly, by the same rules (a test rebuilds the view and compares). A
verification is then a dictionary look-up and a few comparisons: no I/O, no store access.
The index is keyed by the first 120 bits of each HMAC-SHA256 digest (``DIGEST_BYTES``).
"""

from __future__ import annotations

import ctypes
import json
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any
from uuid import UUID

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - a dependency
    _loads = json.loads

from projections.follower import collector_paused
from projections.projection import Projection, StatementRuns, handles, topic_class
from projections.store import ViewStore, deleting_fast, sorting_in_runs, sqlite_connection, upsert
from projections.stored import moment
from projections.timefmt import epoch
from service.domain.accounts import Account
from service.domain.keys import ApiKey
from service.domain.legacy import LegacyClient, LegacyUseWindow
from service.domain.restrictions import NO_FACTS, Facts, Restriction, compile_restriction
from service.domain.scopes import ALL

API_KEY = "api_key"
PERSONAL_TOKEN = "personal_token"
ACCESS_TOKEN = "access_token"

# Verdict codes
VALID = "VALID"
NOT_FOUND = "NOT_FOUND"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"
INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
APP_MISMATCH = "APP_MISMATCH"
LEGACY_TOKEN_SUNSET = "LEGACY_TOKEN_SUNSET"


class VerificationView(Projection):
    name = "verification"
    tables = ("verification", "verification_legacy_clients", "verification_restrictions",
              "verification_staged_keys")  # the last on SQLite only: see ``process_page``
    ddl = (
        """CREATE TABLE IF NOT EXISTS verification (
            digest     BLOB PRIMARY KEY,
            kind       TEXT NOT NULL,
            key_id     TEXT NOT NULL,
            app_id     TEXT,
            role       TEXT,
            scopes     TEXT NOT NULL,
            expires_at REAL,
            ends_at    REAL
        ) WITHOUT ROWID""",
        # Legacy OAuth2 clients: their access tokens are rows of ``verification`` (kind
        # access_token, key_id the client's id); disabling a client ends every one of them.
        """CREATE TABLE IF NOT EXISTS verification_legacy_clients (
            id        TEXT PRIMARY KEY,
            client_id TEXT NOT NULL,
            app_id    TEXT NOT NULL,
            ends_at   REAL
        ) WITHOUT ROWID""",
        # Client restrictions of the secrets of keys that carry one (few): canonical JSON.
        """CREATE TABLE IF NOT EXISTS verification_restrictions (
            digest       BLOB PRIMARY KEY,
            restrictions TEXT NOT NULL
        ) WITHOUT ROWID""",
    )

    _COLUMNS = ("digest", "kind", "key_id", "app_id", "role", "scopes", "expires_at", "ends_at")
    _UPSERT = upsert("verification", _COLUMNS, ("digest",))
    _UPSERT_CLIENT = upsert("verification_legacy_clients", ("id", "client_id", "app_id", "ends_at"), ("id",))
    # A new secret for the same credential: a copy of the old secret's row under the new digest.
    _COPY = upsert("verification", _COLUMNS, ("digest",), select=(
        "SELECT ?, kind, key_id, app_id, role, scopes, expires_at, NULL FROM verification WHERE digest = ?"))
    _END = "UPDATE verification SET ends_at = LEAST(COALESCE(ends_at, ?), ?) WHERE digest = ?"

    @handles(Account.Registered)
    def _account(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._UPSERT, (bytes.fromhex(e.token_digest), PERSONAL_TOKEN, str(e.originator_id), None,
                                  e.role, "", None, None))

    @handles(Account.TokenReplaced)
    def _token_replaced(self, db: Any, position: int, e: Any) -> None:
        self._replace_secret(db, e.previous_digest, e.token_digest, epoch(e.timestamp))

    @handles(LegacyClient.CredentialsIssued)
    def _legacy_client(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._UPSERT_CLIENT, (str(e.originator_id), e.client_id, e.app_id, None))

    @handles(LegacyClient.AccessTokenIssued)
    def _access_token(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._UPSERT, (bytes.fromhex(e.token_digest), ACCESS_TOKEN, str(e.originator_id), e.app_id,
                                  None, ALL, epoch(e.expires_at), None))

    @handles(LegacyClient.AccessDisabled)
    def _legacy_disabled(self, db: Any, position: int, e: Any) -> None:
        at = epoch(e.timestamp)
        db.execute("UPDATE verification_legacy_clients SET ends_at = LEAST(COALESCE(ends_at, ?), ?) WHERE id = ?",
                   (at, at, str(e.originator_id)))

    _INSERT_KEY = _UPSERT

    @staticmethod
    def _key_row(e: Any) -> tuple:
        return (bytes.fromhex(e.digest), API_KEY, str(e.originator_id), e.app_id, None, " ".join(e.scopes),
                epoch(e.expires_at), None)

    @handles(ApiKey.Issued)
    def _issued(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._INSERT_KEY, self._key_row(e))

    def process_batch(self, db: Any, batch: Sequence[tuple[int, Any]]) -> None:
        """New keys are written in bulk; every other event in order between them. New keys a bulk pass
        left staged (SQLite, ``process_page``) go into the view first: they came before this batch."""
        if batch and _staging(db) and _has_staged(db):
            _merge_staged(db)
        pending: list[tuple] = []
        for position, event in batch:
            if type(event) is ApiKey.Issued:
                pending.append(self._key_row(event))
                continue
            if pending:
                db.executemany(self._INSERT_KEY, pending)
                pending = []
            self.process(db, position, event)
        if pending:
            db.executemany(self._INSERT_KEY, pending)

    # -- bulk passes (a rebuild, a first start) -----------------------------------------------------
    #
    # New keys are most of a big log, and their digests are random: inserted as they come, each lands
    # on a random leaf of the view's B-tree, and every page's commit writes most of the tree again
    # (SQLite's WAL). So on SQLite a bulk pass appends them to ``verification_staged_keys`` (no index:
    # appends are cheap), committed with the page and its position like any row, and moves them into
    # the view in one ``INSERT … SELECT … ORDER BY digest`` — in the B-tree's order — when an event
    # that may touch them comes (a roll, a revocation…), and at the end of the pass (``finish_bulk``).
    # Whoever writes the view next (another process's live write, a pass resumed after a crash) moves
    # staged keys in first, so every event still applies after the ones before it, exactly once.
    # PostgreSQL writes them into the view directly (sorted by digest).

    _STAGED = "verification_staged_keys"
    _STAGE = f"INSERT INTO {_STAGED} (digest, key_id, app_id, scopes, expires_at) VALUES (?, ?, ?, ?, ?)"
    _INSERT_NEW_KEY = upsert("verification", _COLUMNS, ("digest",),
                             select=f"VALUES (?, '{API_KEY}', ?, ?, NULL, ?, ?, NULL)")

    def create(self, db: Any, *, with_indexes: bool = True) -> None:
        super().create(db, with_indexes=with_indexes)
        if _staging(db):
            db.execute(_STAGED_DDL)

    def finish_bulk(self, db: Any) -> None:
        """At the end of a bulk pass (the log's end reached): staged keys into the view."""
        if _staging(db) and _has_staged(db):
            _merge_staged(db)

    def process_page(self, db: Any, page: Any) -> None:
        """A page of a bulk pass, folded in memory (``_PageFold``): its events become operations on rows
        (read from their stored JSON, ``page.readable``, with no event object built; decoded only when of a
        shape that reader does not know), the rows they touch are read at once (one ``SELECT … IN`` per
        few hundred digests), changed in a dictionary as each event's statements would change them,
        and written once at the page's end — a key issued, its scopes changed, rolled and revoked
        within the page is one row written, not four statements. New keys are staged on SQLite."""
        judged = getattr(page, "judged", None)
        if judged is None:
            return super().process_page(db, page)
        runs = StatementRuns(db)
        groups = [(topic, indexes) for topic, indexes in page.by_topic().items()
                  if (cls := topic_class(topic)) is not None and cls in self._handlers]
        if len(groups) == 1 and groups[0][0] == _ISSUED_TOPIC and _ISSUED_READABLE:
            self._new_keys_only(runs, page, groups[0][1])  # a page of new keys alone (most of a big log)
            runs.flush()
            return None
        wanted = sorted(i for _, indexes in groups for i in indexes)
        ops: list[tuple] = []
        issued_row, issued_topic, readable = _issued_row, _ISSUED_TOPIC, _ISSUED_READABLE
        for i in wanted:
            record = judged[i]
            if record[5] is not None:  # refused: decoded as a RefusedRecord, which no handler takes
                continue
            topic = record[3]
            if topic == issued_topic and readable:
                row = issued_row(record[1], record[6])
                if row is not None:
                    ops.append((_NEW_KEY, row))
                    continue
            else:
                read = _READERS.get(topic)
                if read is not None and (state := page.readable(i)) is not None and (op := read(state)) is not None:
                    ops.append(op)
                    continue
            ops.append(self._operation(page.event(i)))
        staging = _staging(db)
        fold = _PageFold(runs, staging)
        # The rows the page reads: not those of digests it gave a whole row first (a key issued in the
        # page, then changed): the page's own row is the one those events change.
        referenced: set[bytes] = set()
        created: set[bytes] = set()
        for op in ops:
            code = op[0]
            if code >= _SCOPES:
                referenced.update(d for d in _touched(op) if d not in created)
            elif code == _NEW_KEY:
                created.add(op[1][0])
            elif code == _PUT:
                created.add(op[1][0])
        if staging and any(op[0] >= _SCOPES or op[0] == _PUT for op in ops) and _has_staged(runs):
            _merge_staged(runs)  # keys staged by earlier pages came before this page's events: in first
        if referenced:
            fold.load(referenced)
        fold.apply(ops, lambda e: self.process(runs, 0, e))
        fold.write()
        runs.flush()
        return None

    def _new_keys_only(self, db: Any, page: Any, indexes: list[int]) -> None:
        """A page whose only events this view handles are keys issued: their rows read from the stored
        JSON (``_issued_row``) and staged in the log's order on SQLite (keys staged by earlier pages
        stay staged), or written in the B-tree's order (a stable sort: of two rows with the same
        digest, the later still wins)."""
        judged, issued_row = page.judged, _issued_row
        records = judged if len(indexes) == len(judged) else [judged[i] for i in indexes]
        rows = [issued_row(record[1], record[6]) if record[5] is None else _REFUSED for record in records]
        if None in rows:  # of a shape the JSON reader does not read: decoded
            for n, row in enumerate(rows):
                if row is None:
                    event = page.event(indexes[n])
                    rows[n] = self._new_key(event) if type(event) is ApiKey.Issued else _REFUSED
        if _REFUSED in rows:  # refused: decoded as a RefusedRecord, which no handler takes
            rows = [row for row in rows if row is not _REFUSED]
        if not rows:
            return
        if _staging(db):
            db.executemany(self._STAGE, rows)
        else:
            rows.sort(key=_first)
            db.executemany(self._INSERT_NEW_KEY, rows)

    stages_aside = True

    def stage_aside(self, db: Any, judged: Sequence[tuple], vouched: Callable[[tuple], bool], after: int) -> int:
        """A second process's part of a rebuild of this view (``Follower._build_halves``): the new keys
        of ``judged`` staged in the log's order, as ``_new_keys_only`` stages them — up to the first
        record this view handles that is not a key issued whose stored JSON reads as one, with its seal
        held (``vouched``: judged alike whatever came before it). Records of events the view does not
        handle are passed over, as a bulk pass passes them over."""
        rows = []
        through = after
        issued_topic, issued_row, handlers = _ISSUED_TOPIC, _issued_row, self._handlers
        for record in judged:
            topic = record[3]
            if topic == issued_topic:
                row = issued_row(record[1], record[6]) if _ISSUED_READABLE and vouched(record) else None
                if row is None:
                    break
                rows.append(row)
            elif topic_class(topic) in handlers:  # (as ``process_page`` groups a page: by the topic's class)
                break
            through = record[0]
        if rows:
            db.executemany(self._STAGE, rows)
        return through

    def adopt_staged(self, db: Any, schema: str) -> None:
        db.execute(f"INSERT INTO main.{self._STAGED} (digest, key_id, app_id, scopes, expires_at) "
                   f"SELECT digest, key_id, app_id, scopes, expires_at FROM {schema}.{self._STAGED} ORDER BY rowid")

    def _operation(self, e: Any) -> tuple:
        """A decoded event as an operation of ``_PageFold.apply``: as its handler changes the view."""
        kind = type(e)
        if kind is ApiKey.Issued:
            return _NEW_KEY, self._new_key(e)
        if kind is ApiKey.ScopesChanged:
            return _SCOPES, [bytes.fromhex(d) for d in e.digests], " ".join(e.scopes)
        if kind is ApiKey.Rolled:
            return _REPLACE, bytes.fromhex(e.previous_digest), bytes.fromhex(e.digest), epoch(e.previous_valid_until)
        if kind is ApiKey.Revoked:
            return _END, [bytes.fromhex(d) for d in e.digests], epoch(e.timestamp)
        if kind is ApiKey.Restricted:
            return _RESTRICT, [bytes.fromhex(d) for d in e.digests], \
                restriction_text(e.restrictions) if e.restrictions else None
        if kind is Account.Registered:
            return _PUT, [bytes.fromhex(e.token_digest), PERSONAL_TOKEN, str(e.originator_id), None, e.role, "",
                          None, None]
        if kind is Account.TokenReplaced:
            return _REPLACE, bytes.fromhex(e.previous_digest), bytes.fromhex(e.token_digest), epoch(e.timestamp)
        if kind is LegacyClient.AccessTokenIssued:
            return _PUT, [bytes.fromhex(e.token_digest), ACCESS_TOKEN, str(e.originator_id), e.app_id, None, ALL,
                          epoch(e.expires_at), None]
        return _OTHER, e  # the legacy clients' own table (or nothing): through the handler, in order

    @staticmethod
    def _new_key(e: Any) -> tuple:
        """A decoded new key's fields, as ``_issued_row`` reads them from its stored JSON."""
        return (bytes.fromhex(e.digest), str(e.originator_id), e.app_id, " ".join(e.scopes), epoch(e.expires_at))

    @handles(ApiKey.ScopesChanged)
    def _scopes(self, db: Any, position: int, e: Any) -> None:
        scopes = " ".join(e.scopes)
        db.executemany("UPDATE verification SET scopes = ? WHERE digest = ?",
                       [(scopes, bytes.fromhex(d)) for d in e.digests])

    @handles(ApiKey.Rolled)
    def _rolled(self, db: Any, position: int, e: Any) -> None:
        # The old secret ends when its grace period does (the roll's time when there is none).
        self._replace_secret(db, e.previous_digest, e.digest, epoch(e.previous_valid_until))

    @classmethod
    def _replace_secret(cls, db: Any, old_digest: str, new_digest: str, old_ends: float) -> None:
        """A new secret for the same credential; the old one stops at ``old_ends`` (or sooner)."""
        old = bytes.fromhex(old_digest)
        db.execute(cls._COPY, (bytes.fromhex(new_digest), old))
        db.execute(cls._END, (old_ends, old_ends, old))
        db.execute(cls._COPY_RESTRICTION, (bytes.fromhex(new_digest), old))

    # -- client restrictions (a side table: keys without one have no row) -----------------------
    _RESTRICTION = upsert("verification_restrictions", ("digest", "restrictions"), ("digest",))
    _COPY_RESTRICTION = upsert("verification_restrictions", ("digest", "restrictions"), ("digest",), select=(
        "SELECT ?, restrictions FROM verification_restrictions WHERE digest = ?"))

    @handles(ApiKey.Restricted)
    def _restricted(self, db: Any, position: int, e: Any) -> None:
        digests = [bytes.fromhex(d) for d in e.digests]
        if e.restrictions:
            text = restriction_text(e.restrictions)
            db.executemany(self._RESTRICTION, [(d, text) for d in digests])
        else:
            db.executemany("DELETE FROM verification_restrictions WHERE digest = ?", [(d,) for d in digests])

    @handles(ApiKey.Revoked)
    def _revoked(self, db: Any, position: int, e: Any) -> None:
        at = epoch(e.timestamp)
        db.executemany(self._END, [(at, at, bytes.fromhex(d)) for d in e.digests])


_ISSUED_TOPIC = f"{ApiKey.Issued.__module__}:{ApiKey.Issued.__qualname__}"
_ISSUED_READABLE = getattr(ApiKey.Issued, "class_version", 1) == 1  # else stored states need upcasting


def _topic(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# The operations of a page's fold (``_PageFold.apply``), numbered so that those that put a whole row
# come first: from ``_SCOPES`` on, an operation reads the rows of the digests it names (``_touched``).
# (``_RESTRICT`` writes the restrictions' side table only.)
_OTHER, _PUT, _NEW_KEY, _RESTRICT, _SCOPES, _END, _REPLACE = range(7)


def _touched(op: tuple) -> Sequence[bytes]:
    """The digests whose rows an operation from ``_SCOPES`` on reads."""
    return op[1] if op[0] != _REPLACE else (op[1], op[2])


def _digests(value: Any) -> list[bytes] | None:
    """A stored list of hex digests as bytes; None if it is not one (decoded instead)."""
    if type(value) is not list:
        return None
    try:
        return [bytes.fromhex(v) for v in value]  # a str only: fromhex refuses anything else
    except (TypeError, ValueError):
        return None


def _read_scopes(state: dict) -> tuple | None:
    scopes, digests = state.get("scopes"), _digests(state.get("digests"))
    if "class_version" in state or digests is None or type(scopes) is not list \
            or not all(type(s) is str for s in scopes):
        return None
    return _SCOPES, digests, " ".join(scopes)


def _read_rolled(state: dict) -> tuple | None:
    digest, previous = state.get("digest"), state.get("previous_digest")
    if "class_version" in state or type(digest) is not str or type(previous) is not str:
        return None
    try:
        until = moment(state.get("previous_valid_until"))
        return None if until is None else \
            (_REPLACE, bytes.fromhex(previous), bytes.fromhex(digest), until.timestamp())
    except ValueError:
        return None


def _read_revoked(state: dict) -> tuple | None:
    digests = _digests(state.get("digests"))
    try:
        at = moment(state.get("timestamp"))
        if "class_version" in state or digests is None or at is None:
            return None
        return _END, digests, at.timestamp()
    except ValueError:
        return None


# Events read from their stored JSON in a bulk pass, by topic (any other is decoded).
_READERS: dict[str, Callable[[dict], tuple | None]] = {
    _topic(ApiKey.ScopesChanged): _read_scopes,
    _topic(ApiKey.Rolled): _read_rolled,
    _topic(ApiKey.Revoked): _read_revoked,
}


class _PageFold:
    """The verification rows (and client restrictions) a bulk page touches, in memory: loaded from
    the view once, changed by the page's events in order exactly as their statements change the
    view (``_UPSERT``, ``_COPY``, ``_END``, ``UPDATE … scopes``, the restrictions' upsert, copy and
    delete), written at the page's end — new plain keys staged on SQLite, every other row changed
    upserted in the B-tree's order."""

    __slots__ = ("db", "staging", "rows", "in_view", "dirty", "restrictions", "restricted")

    def __init__(self, db: Any, staging: bool) -> None:
        self.db = db
        self.staging = staging
        self.rows: dict[bytes, list | None] = {}  # digest -> the row as it stands (None: no row)
        self.in_view: set[bytes] = set()  # digests found in the view
        self.dirty: dict[bytes, None] = {}  # rows changed, in the order first changed
        self.restrictions: dict[bytes, str | None] = {}  # digest -> its restriction (None: none)
        self.restricted: dict[bytes, None] = {}  # restrictions changed

    def load(self, digests: set[bytes] | list[bytes], *, rows: bool = True) -> None:
        """The rows of ``digests`` (not with ``rows=False``) and their restrictions, from the view, 500
        digests a query; None for those it has not."""
        wanted = list(digests)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            if rows:
                for row in self.db.execute(f"SELECT {', '.join(VerificationView._COLUMNS)} FROM verification "
                                           f"WHERE digest IN ({marks})", chunk).fetchall():
                    values = list(row)
                    digest = values[0] = bytes(values[0])
                    self.rows[digest] = values
                    self.in_view.add(digest)
            for row in self.db.execute("SELECT digest, restrictions FROM verification_restrictions "
                                       f"WHERE digest IN ({marks})", chunk).fetchall():
                self.restrictions[bytes(row[0])] = row[1]
        if rows:
            for digest in wanted:
                self.rows.setdefault(digest, None)
                self.restrictions.setdefault(digest, None)
        else:
            for digest in wanted:
                self.restrictions.setdefault(digest, None)

    def _row(self, digest: bytes) -> list | None:
        if digest not in self.rows:
            self.load([digest])
        return self.rows[digest]

    def apply(self, ops: Sequence[tuple], other: Callable[[Any], None]) -> None:
        """The page's operations in order (``other``: a decoded event for its handler)."""
        rows, dirty = self.rows, self.dirty
        for op in ops:
            code = op[0]
            if code == _NEW_KEY:  # (digest, key_id, app_id, scopes, expires_at), as ``_issued_row`` reads it
                row = op[1]
                digest = row[0]
                rows[digest] = [digest, API_KEY, row[1], row[2], None, row[3], row[4], None]
                dirty[digest] = None
            elif code == _SCOPES:
                text = op[2]
                for digest in op[1]:
                    found = self._row(digest)
                    if found is not None:
                        found[5] = text
                        dirty[digest] = None
            elif code == _END:
                for digest in op[1]:
                    self._end(digest, op[2])
            elif code == _REPLACE:
                self._replace(op[1], op[2], op[3])
            elif code == _PUT:
                rows[op[1][0]] = op[1]
                dirty[op[1][0]] = None
            elif code == _RESTRICT:
                for digest in op[1]:
                    self.restrictions[digest] = op[2]
                    self.restricted[digest] = None
            else:
                other(op[1])

    def _end(self, digest: bytes, at: float | None) -> None:
        """``_END``: ends_at = LEAST(COALESCE(ends_at, at), at)."""
        row = self._row(digest)
        if row is None:
            return
        ends = row[7]
        if at is None:  # SQLite's MIN(x, NULL) is NULL; PostgreSQL's LEAST ignores NULLs
            row[7] = None if self.staging else ends
        else:
            row[7] = at if ends is None or at < ends else ends
        self.dirty[digest] = None

    def _replace(self, old: bytes, new: bytes, old_ends: float | None) -> None:
        """``_replace_secret``: the old secret's row copied under the new digest, the old one ended,
        its restriction copied."""
        row = self._row(old)
        if row is not None:
            self.rows[new] = [new, *row[1:7], None]
            self.dirty[new] = None
        self._row(new)  # known from here on (whether in the view or not)
        self._end(old, old_ends)
        if old not in self.restrictions:  # a row of this page's (put, or a secret's): its restriction not read yet
            self.load([old], rows=False)
        restriction = self.restrictions[old]
        if restriction is not None:
            self.restrictions[new] = restriction
            self.restricted[new] = None

    def write(self) -> None:
        staged, rows = [], []
        for digest in self.dirty:
            row = self.rows[digest]
            if row is None:
                continue
            if self.staging and digest not in self.in_view and row[1] == API_KEY and row[4] is None \
                    and row[7] is None:
                staged.append((digest, row[2], row[3], row[5], row[6]))
            else:
                rows.append(tuple(row))
        if staged:
            self.db.executemany(VerificationView._STAGE, staged)
        if rows:
            rows.sort(key=_first)
            self.db.executemany(VerificationView._UPSERT, rows)
        kept = sorted((d, self.restrictions[d]) for d in self.restricted if self.restrictions[d] is not None)
        if kept:
            self.db.executemany(VerificationView._RESTRICTION, kept)
        gone = sorted((d,) for d in self.restricted if self.restrictions[d] is None)
        if gone:
            self.db.executemany("DELETE FROM verification_restrictions WHERE digest = ?", gone)
_first = itemgetter(0)

_STAGED_DDL = f"""CREATE TABLE IF NOT EXISTS {VerificationView._STAGED} (
    digest     BLOB NOT NULL,
    key_id     TEXT NOT NULL,
    app_id     TEXT,
    scopes     TEXT NOT NULL,
    expires_at REAL
)"""
# Staged keys into the view in the B-tree's order; of two with the same digest, the later wins.
_MERGE_STAGED = upsert("verification", VerificationView._COLUMNS, ("digest",), select=(
    f"SELECT digest, '{API_KEY}', key_id, app_id, NULL, scopes, expires_at, NULL "
    f"FROM {VerificationView._STAGED} WHERE true ORDER BY digest, rowid"))


def _staging(db: Any) -> bool:
    """Whether bulk passes stage new keys on this connection (``db``: a view store's, or its
    ``StatementRuns``): on SQLite."""
    return sqlite_connection(db) is not None


def _has_staged(db: Any) -> bool:
    return db.execute(f"SELECT EXISTS (SELECT 1 FROM {VerificationView._STAGED})").fetchone()[0] == 1


def _merge_staged(db: Any) -> None:
    if isinstance(db, StatementRuns):
        db.flush()
        db = db.db
    with _sorting_in_runs(db):
        db.execute(_MERGE_STAGED)
    with deleting_fast(db):
        db.execute(f"DELETE FROM {VerificationView._STAGED}")


# A merge of a few staged keys sorts in memory either way; only a big one sorts in runs
# (``projections.store.sorting_in_runs``): setting the cache's size drops cached pages (a bulk pass's other views').
_SORT_IN_RUNS_FROM = 250_000  # staged keys


@contextmanager
def _sorting_in_runs(db: Any) -> Iterator[None]:
    """For a big merge of staged keys: sorted in runs (``sorting_in_runs``)."""
    staged = db.execute(f"SELECT (SELECT max(rowid) FROM {VerificationView._STAGED}) - "
                        f"(SELECT min(rowid) FROM {VerificationView._STAGED}) + 1").fetchone()[0]  # about their number
    if staged is None or staged < _SORT_IN_RUNS_FROM:
        yield
        return
    with sorting_in_runs(db):
        yield


def _issued_row(originator_hex: Any, body: bytes) -> tuple | None:
    """A key issued's fields in the view, from its stored JSON (judged, sealed), as ``_new_key`` reads
    them from the decoded event; None when the state is not of the shape this reads (the caller decodes).
    Its state is parsed here and dropped at once, not through ``Page.state``: a page holding its 50,000 parsed
    states until its end made a million-key rebuild of this view ~2 s slower (CPU time, 13.9-14.7 s
    against 12.0-12.6 s), the reading and judging of the log included: memory no longer reused warm."""
    try:
        state = _loads(body)
        if "class_version" in state:  # an event of a later shape: upcast by the mapper
            return None
        expires = state["expires_at"]
        if expires is not None:  # ``stored.moment`` written out: a call less per key (~15% of this reading)
            if expires.get("_type_") != "datetime_iso" or len(expires) != 2:
                return None
            expires = _fromisoformat(expires["_data_"]).timestamp()
        scopes, app_id, digest = state["scopes"], state["app_id"], state["digest"]
        if type(scopes) is not list or type(app_id) is not str or type(digest) is not str:
            return None
        h = originator_hex.lower()  # str(UUID(h)) without the UUID, for 32 hex digits only
        if len(h) != 32 or h.strip("0123456789abcdef"):
            return None
        return (_fromhex(digest), b"-".join(_uuid_groups(h.encode())).decode(), app_id, " ".join(scopes), expires)
    except Exception:  # noqa: BLE001 - anything unexpected: the event is decoded instead
        return None


_fromhex = bytes.fromhex
_REFUSED = ()  # a record no row comes from
_uuid_groups = struct.Struct("8s4s4s4s12s").unpack  # a UUID's 32 hex digits, as its text form groups them
_fromisoformat = datetime.fromisoformat


# The index is keyed by the first 120 bits of the HMAC-SHA256 digest: a bytes object of at most
# 15 bytes takes 48 bytes of memory, one of 16 takes 64 (CPython rounds allocations to 16 bytes),
# and 2^-120 leaves a guessed or colliding secret as hopeless as 2^-128 did.
DIGEST_BYTES = 15

# An API key is held as one packed, immutable record (``KeyRecord``: its expiry, its grant's
# number and its UUID in 28 bytes of a bytes object; 80 bytes allocated), not as an object that
# points to a UUID and a float (64 + 64 + 32 bytes): with the 48-byte digest and the dict's slot,
# about 165 bytes a key at ten million instead of 250. A key that has an end (revoked, or the
# old secret of a roll) has it appended (96 allocated): few keys have one. A change writes a new
# record (a revocation, a roll, new scopes), so a reader never sees half of one. A verdict reads
# the record in one unpack, without building an object.
_HEAD = struct.Struct("<dI")  # expires_at (inf: never), grant number; then the 16-byte UUID
_KEY_RECORD = struct.Struct("<dI16s")
_ENDED_KEY_RECORD = struct.Struct("<dI16sd")  # ... and ends_at
_KEY_RECORD_SIZE = _KEY_RECORD.size
_unpack_head = _HEAD.unpack_from
_unpack_ends = struct.Struct("<d").unpack_from
KEY_ID_BYTES = slice(12, 28)  # where a record holds the key's UUID
NEVER = float("inf")

class Credential:
    """Base of an index entry (or of the view of a key's record); scope sets are shared."""

    __slots__ = ()
    kind: str
    app_id: str | None
    role: str | None
    scopes: frozenset
    expires_at: float | None
    ends_at: float | None
    id: bytes  # the key's (or account's) UUID, 16 bytes: a third of the text form's memory

    @property
    def key_id(self) -> str:
        return str(UUID(bytes=self.id))


class Grant:
    """What a key may do: its app and its scopes. Keys of one app with the same scopes share one."""

    __slots__ = ("app_id", "scopes", "everything", "number")
    restriction: Restriction | None = None  # who may use it (a RestrictedGrant): none here

    def __init__(self, app_id: str, scopes: frozenset, number: int = 0) -> None:
        self.app_id = app_id
        self.scopes = scopes
        self.everything = ALL in scopes  # the scope "All": any scope passes
        self.number = number  # its place in ``GRANTS`` (a key's record holds it)


class KeyEntry(Credential):
    """An API key's secret, as read from its record (or held as is, by tests): four slots."""

    __slots__ = ("id", "grant", "expires_at", "ends_at")
    kind = API_KEY
    role = None

    def __init__(self, id: bytes, grant: Grant, expires_at: float | None, ends_at: float | None) -> None:
        self.id = id
        self.grant = grant
        self.expires_at = expires_at
        self.ends_at = ends_at

    @property
    def app_id(self) -> str:  # type: ignore[override]
        return self.grant.app_id

    @property
    def scopes(self) -> frozenset:  # type: ignore[override]
        return self.grant.scopes


# Grants by number, shared by every index of the process (a key's record holds the number). New
# ones are numbered under a lock: two followers (two stores in one process) may add at once.
GRANTS: list[Grant] = []
_NUMBERING = threading.Lock()
_GRANT_OF: dict[tuple[str, frozenset], Grant] = {}
_SCOPE_SETS: dict[str, frozenset] = {}
_STRINGS: dict[str, str] = {}


def _intern(text: str) -> str:
    return _STRINGS.setdefault(text, text)


def grant_of(app_id: str, scopes: str) -> Grant:
    """The shared grant of ``app_id`` with ``scopes`` (names separated by spaces)."""
    scope_set = _SCOPE_SETS.get(scopes)
    if scope_set is None:
        scope_set = _SCOPE_SETS.setdefault(scopes, frozenset(scopes.split()))
    grant = _GRANT_OF.get((app_id, scope_set))
    if grant is None:
        with _NUMBERING:
            grant = _GRANT_OF.get((app_id, scope_set))
            if grant is None:
                grant = Grant(_intern(app_id), scope_set, len(GRANTS))
                GRANTS.append(grant)
                _GRANT_OF[(app_id, scope_set)] = grant
    return grant


class RestrictedGrant(Grant):
    """A grant whose keys carry a client restriction, compiled once for all keys sharing it."""

    __slots__ = ("restriction", "restriction_text", "base")

    def __init__(self, base: Grant, restriction: Restriction, text: str, number: int) -> None:
        super().__init__(base.app_id, base.scopes, number)
        self.restriction = restriction  # type: ignore[misc]
        self.restriction_text = text
        self.base = base


_RESTRICTED_GRANT_OF: dict[tuple[str, frozenset, str], Grant] = {}


def restriction_text(restrictions: dict) -> str:
    """The canonical JSON of a restriction value (the view's column, the grants' key)."""
    return json.dumps(restrictions, sort_keys=True, separators=(",", ":"))


def restricted(grant: Grant, text: str | None) -> Grant:
    """``grant`` with the restriction of canonical JSON ``text`` (None: without any)."""
    base = grant.base if type(grant) is RestrictedGrant else grant  # type: ignore[attr-defined]
    if not text:
        return base
    key = (base.app_id, base.scopes, text)
    found = _RESTRICTED_GRANT_OF.get(key)
    if found is None:
        restriction = compile_restriction(json.loads(text))  # compiled here, never on the hot path
        with _NUMBERING:
            found = _RESTRICTED_GRANT_OF.get(key)
            if found is None:
                found = RestrictedGrant(base, restriction, text, len(GRANTS))  # type: ignore[arg-type]
                GRANTS.append(found)
                _RESTRICTED_GRANT_OF[key] = found
    return found


def _number(grant: Grant) -> int:
    """The number of ``grant`` (one made elsewhere, as tests do, gets one)."""
    number = grant.number
    if number >= len(GRANTS) or GRANTS[number] is not grant:
        with _NUMBERING:
            number = grant.number = len(GRANTS)
            GRANTS.append(grant)
    return number


class KeyRecord(bytes, Credential):
    """An API key in the index: a packed record (see above) that reads as a ``Credential``."""

    __slots__ = ()
    kind = API_KEY
    role = None

    @classmethod
    def of(cls, id: bytes, grant: Grant, expires_at: float | None, ends_at: float | None) -> KeyRecord:
        expires_at = NEVER if expires_at is None else expires_at
        return cls(_KEY_RECORD.pack(expires_at, _number(grant), id) if ends_at is None
                   else _ENDED_KEY_RECORD.pack(expires_at, _number(grant), id, ends_at))

    @property
    def id(self) -> bytes:  # type: ignore[override]
        return self[KEY_ID_BYTES]

    @property
    def grant(self) -> Grant:
        return GRANTS[_unpack_head(self)[1]]

    @property
    def app_id(self) -> str:  # type: ignore[override]
        return self.grant.app_id

    @property
    def scopes(self) -> frozenset:  # type: ignore[override]
        return self.grant.scopes

    @property
    def expires_at(self) -> float | None:  # type: ignore[override]
        expires_at = _unpack_head(self)[0]
        return None if expires_at == NEVER else expires_at

    @property
    def ends_at(self) -> float | None:  # type: ignore[override]
        return _unpack_ends(self, _KEY_RECORD_SIZE)[0] if len(self) > _KEY_RECORD_SIZE else None


class TokenEntry(Credential):
    __slots__ = ("id", "role", "ends_at")
    kind = PERSONAL_TOKEN
    app_id = None
    scopes = frozenset()
    expires_at = None

    def __init__(self, id: bytes, role: str, ends_at: float | None) -> None:
        self.id = id
        self.role = role
        self.ends_at = ends_at


class LegacyClientState:
    """A legacy OAuth2 client as every one of its access tokens sees it."""

    __slots__ = ("id", "client_id", "app_id", "ends_at", "recorded_until", "retry_at")

    def __init__(self, id: bytes, client_id: str, app_id: str, ends_at: float | None) -> None:
        self.id = id
        self.client_id = client_id
        self.app_id = app_id
        self.ends_at = ends_at  # disabled (or the sunset): every token ends
        self.recorded_until = 0.0  # the end of the last use window recorded as an event
        self.retry_at = 0.0  # after a failed attempt to record a use: when to try again


ALL_SCOPES = frozenset((ALL,))


class AccessTokenEntry(Credential):
    """A legacy access token: no scopes of its own, so it may do everything (``All``) for its
    app until it expires, or until the sunset or its client is disabled."""

    __slots__ = ("client", "expires_at")
    kind = ACCESS_TOKEN
    role = None
    scopes = ALL_SCOPES

    def __init__(self, client: LegacyClientState, expires_at: float | None) -> None:
        self.client = client
        self.expires_at = expires_at

    @property
    def id(self) -> bytes:  # type: ignore[override]
        return self.client.id

    @property
    def app_id(self) -> str:  # type: ignore[override]
        return self.client.app_id

    @property
    def ends_at(self) -> float | None:  # type: ignore[override]
        return self.client.ends_at


class VerificationIndex:
    """The in-memory verification index of one process.

    ``by_digest`` maps a digest's first ``DIGEST_BYTES`` bytes to an API key's ``KeyRecord`` or
    to an entry object (personal and legacy access tokens, few)."""

    view = VerificationView.name

    def __init__(self, legacy_sunset_at: float | None = None) -> None:
        self.by_digest: dict[bytes, Credential] = {}
        self.clients: dict[bytes, LegacyClientState] = {}
        self.legacy_sunset_at = legacy_sunset_at  # access tokens end then, whatever the events say
        # A sealed snapshot of this index (``projections.index_snapshot.IndexSnapshots``), if any:
        # loaded instead of the view when it is this store's, written by the follower's checkpoints.
        self.snapshots: Any = None

    def __len__(self) -> int:
        return len(self.by_digest)

    # -- the hot path ---------------------------------------------------------------

    def check(self, digest: bytes, scope: str | None, app_id: str | None, now: float,
              facts: Facts = NO_FACTS) -> tuple[str, Credential | None]:
        """The verdict for a credential's digest: a code and the entry (if known)."""
        entry = self.by_digest.get(digest[:DIGEST_BYTES])
        if entry is None:
            return NOT_FOUND, None
        return verdict(entry, scope, app_id, now, facts), entry

    # -- loading and following --------------------------------------------------------

    def load(self, store: ViewStore, *, from_view: bool = False) -> int:
        """Load the index from its snapshot, if there is a usable one (and not ``from_view``), else
        from the view; return the log position it reflects (the follower catches up from there)."""
        if self.snapshots is not None:
            if from_view:
                self.snapshots.remove()
            else:
                with collector_paused():
                    position = self.snapshots.restore(self)
                if position is not None:
                    return position
        return self._load_view(store)

    def snapshot_job(self, position: int, *, final: bool = False) -> Any:
        """With the index held still: the job that writes its snapshot at ``position``, if one is due."""
        return None if self.snapshots is None else self.snapshots.prepare(self, position, final=final)

    def _load_view(self, store: ViewStore) -> int:
        fresh: dict[bytes, Credential] = {}
        clients: dict[bytes, LegacyClientState] = {}
        with collector_paused(), store.read() as db:
            position = store.position(db, self.view)
            for client_id, client, app_id, ends_at in store.scan(
                    db, "SELECT id, client_id, app_id, ends_at FROM verification_legacy_clients"):
                state = self._client(UUID(client_id).bytes, client, app_id)
                state.ends_at = _earliest(state.ends_at, ends_at)
                clients[state.id] = state
            pack, pack_ended, fromhex = _KEY_RECORD.pack, _ENDED_KEY_RECORD.pack, bytes.fromhex
            numbers: dict[tuple[str, str], int] = {}
            for row in store.scan(db, "SELECT " + ", ".join(VerificationView._COLUMNS) + " FROM verification"):
                digest, kind, key_id, app_id, role, scopes, expires_at, ends_at = row
                if kind == API_KEY:  # inline: ten million of them at start-up
                    number = numbers.get((app_id, scopes))
                    if number is None:
                        number = numbers[(app_id, scopes)] = grant_of(app_id, scopes).number
                    expires_at = NEVER if expires_at is None else expires_at
                    id = fromhex(key_id.replace("-", ""))  # the view's canonical text: 5x UUID()'s speed
                    if len(id) != 16:
                        id = UUID(key_id).bytes
                    fresh[bytes(digest[:DIGEST_BYTES])] = KeyRecord(
                        pack(expires_at, number, id) if ends_at is None else pack_ended(expires_at, number, id, ends_at))
                else:
                    fresh[bytes(digest[:DIGEST_BYTES])] = self._entry(row, clients)
            for digest, text in store.scan(db, "SELECT digest, restrictions FROM verification_restrictions"):
                digest = bytes(digest[:DIGEST_BYTES])
                if type(entry := fresh.get(digest)) is KeyRecord:
                    fresh[digest] = KeyRecord.of(entry.id, restricted(entry.grant, text), entry.expires_at,
                                                 entry.ends_at)
            store.release(db)  # give back the page cache the full scan filled
        self.by_digest = fresh
        self.clients = clients
        release_free_memory()
        return position

    def _end(self, digest: bytes, at: float | None) -> None:
        """The credential of ``digest`` ends at ``at`` (or sooner, if it already does)."""
        entry = self.by_digest.get(digest)
        if entry is None:
            return
        if type(entry) is KeyRecord:  # a new record, never one changed in place
            self.by_digest[digest] = KeyRecord.of(entry.id, entry.grant, entry.expires_at,
                                                  _earliest(entry.ends_at, at))
        else:
            entry.ends_at = _earliest(entry.ends_at, at)

    def apply(self, events: Sequence[Any]) -> None:
        """Apply new events directly (the same rules as ``VerificationView``, in memory)."""
        table = self.by_digest
        for e in events:
            kind = type(e)
            if kind is ApiKey.Issued:
                table[bytes.fromhex(e.digest)[:DIGEST_BYTES]] = KeyRecord.of(
                    e.originator_id.bytes, self._grant(e.app_id, " ".join(e.scopes)), epoch(e.expires_at), None)
            elif kind is Account.Registered:
                table[bytes.fromhex(e.token_digest)[:DIGEST_BYTES]] = TokenEntry(
                    e.originator_id.bytes, self._intern(e.role), None)
            elif kind is ApiKey.ScopesChanged:
                scopes = " ".join(e.scopes)
                for digest in e.digests:
                    digest = bytes.fromhex(digest)[:DIGEST_BYTES]
                    if (key := table.get(digest)) is not None:
                        grant = self._grant(key.app_id, scopes)  # type: ignore[arg-type]
                        if key.grant.restriction is not None:  # type: ignore[attr-defined]
                            grant = restricted(grant, key.grant.restriction_text)  # type: ignore[attr-defined]
                        table[digest] = KeyRecord.of(key.id, grant, key.expires_at, key.ends_at)  # type: ignore[arg-type]
            elif kind is ApiKey.Restricted:
                text = restriction_text(e.restrictions) if e.restrictions else None
                for digest in e.digests:
                    digest = bytes.fromhex(digest)[:DIGEST_BYTES]
                    if type(key := table.get(digest)) is KeyRecord:
                        table[digest] = KeyRecord.of(key.id, restricted(key.grant, text), key.expires_at,
                                                     key.ends_at)
            elif kind is ApiKey.Rolled:
                old_digest = bytes.fromhex(e.previous_digest)[:DIGEST_BYTES]
                if (old := table.get(old_digest)) is not None:
                    table[bytes.fromhex(e.digest)[:DIGEST_BYTES]] = KeyRecord.of(
                        old.id, old.grant, old.expires_at, None)  # type: ignore[attr-defined]
                    self._end(old_digest, epoch(e.previous_valid_until))
            elif kind is ApiKey.Revoked:
                at = epoch(e.timestamp)
                for digest in e.digests:
                    self._end(bytes.fromhex(digest)[:DIGEST_BYTES], at)
            elif kind is Account.TokenReplaced:
                old = table.get(bytes.fromhex(e.previous_digest)[:DIGEST_BYTES])
                if old is not None:
                    table[bytes.fromhex(e.token_digest)[:DIGEST_BYTES]] = TokenEntry(old.id, old.role, None)
                    old.ends_at = _earliest(old.ends_at, epoch(e.timestamp))
            elif kind is LegacyClient.AccessTokenIssued:
                client = self.clients.get(e.originator_id.bytes)
                if client is not None:
                    table[bytes.fromhex(e.token_digest)[:DIGEST_BYTES]] = AccessTokenEntry(
                        client, epoch(e.expires_at))
            elif kind is LegacyClient.CredentialsIssued:
                self.clients[e.originator_id.bytes] = self._client(e.originator_id.bytes, e.client_id, e.app_id)
            elif kind is LegacyClient.AccessDisabled:
                if (client := self.clients.get(e.originator_id.bytes)) is not None:
                    client.ends_at = _earliest(client.ends_at, epoch(e.timestamp))
            elif kind is LegacyUseWindow.LegacyTokenUsed:
                client = self.clients.get(LegacyClient.create_id(e.client_id).bytes)
                if client is not None:  # recorded (here or elsewhere): no second event this window
                    client.recorded_until = max(client.recorded_until, epoch(e.window_end))

    @staticmethod
    def _intern(text: str) -> str:
        return _intern(text)

    @staticmethod
    def _grant(app_id: str, scopes: str) -> Grant:
        """The shared grant of ``app_id`` with ``scopes`` (names separated by spaces)."""
        return grant_of(app_id, scopes)

    def _client(self, id: bytes, client_id: str, app_id: str) -> LegacyClientState:
        return LegacyClientState(id, client_id, self._intern(app_id), self.legacy_sunset_at)

    def _entry(self, row: tuple, clients: dict[bytes, LegacyClientState]) -> Credential:
        _, kind, key_id, app_id, role, scopes, expires_at, ends_at = row
        if kind == PERSONAL_TOKEN:
            return TokenEntry(UUID(key_id).bytes, self._intern(role), ends_at)
        if kind == ACCESS_TOKEN:
            return AccessTokenEntry(clients[UUID(key_id).bytes], expires_at)
        return KeyRecord.of(UUID(key_id).bytes, self._grant(app_id, scopes), expires_at, ends_at)


def verdict(entry: Credential, scope: str | None, app_id: str | None, now: float,
            facts: Facts = NO_FACTS) -> str:
    """The verdict for a known credential: may it do ``scope`` (on ``app_id``) at ``now``, for a
    request with these ``facts`` (or a function giving them, called only for a restricted key)?"""
    if type(entry) is KeyRecord:  # the common case first: one unpack, no object built
        if len(entry) != _KEY_RECORD_SIZE and now >= _unpack_ends(entry, _KEY_RECORD_SIZE)[0]:
            return REVOKED
        expires_at, number = _unpack_head(entry)
        if now >= expires_at:  # inf when it never expires
            return EXPIRED
        grant = GRANTS[number]
        if app_id is not None and grant.app_id != app_id:
            return APP_MISMATCH
        if scope is not None and not grant.everything and scope not in grant.scopes:
            return INSUFFICIENT_SCOPE
        if grant.restriction is not None:  # the client restriction: only keys that carry one
            return grant.restriction.refusal(facts() if callable(facts) else facts) or VALID
        return VALID
    if type(entry) is KeyEntry:  # the common case first, reading slots only
        ends_at = entry.ends_at
        if ends_at is not None and now >= ends_at:
            return REVOKED
        expires_at = entry.expires_at
        if expires_at is not None and now >= expires_at:
            return EXPIRED
        grant = entry.grant
        if app_id is not None and grant.app_id != app_id:
            return APP_MISMATCH
        if scope is not None and not grant.everything and scope not in grant.scopes:
            return INSUFFICIENT_SCOPE
        if grant.restriction is not None:  # the client restriction: only keys that carry one
            return grant.restriction.refusal(facts() if callable(facts) else facts) or VALID
        return VALID
    ends_at = entry.ends_at
    if type(entry) is TokenEntry:  # manages keys; carries no API scopes, no app and no expiry
        if ends_at is not None and now >= ends_at:
            return REVOKED
        return INSUFFICIENT_SCOPE if scope is not None or app_id is not None else VALID
    # A legacy access token: every scope ("All") of its app, until it expires, or until the
    # sunset or its client is disabled.
    if ends_at is not None and now >= ends_at:
        return LEGACY_TOKEN_SUNSET
    expires_at = entry.expires_at
    if expires_at is not None and now >= expires_at:
        return EXPIRED
    if app_id is not None and entry.app_id != app_id:
        return APP_MISMATCH
    return VALID


def release_free_memory() -> None:
    """Return heap pages freed by a big load to the OS (glibc); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _earliest(current: float | None, candidate: float | None) -> float | None:
    if candidate is None:
        return current
    return candidate if current is None or candidate < current else current
