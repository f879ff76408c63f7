"""Verification: digest → credential, in SQL and in every serving process's memory.

The SQL view ``verification`` is the materialised form (one row per digest: a key's
current secret, secrets still in a roll's grace period, personal tokens). Each serving
process loads it once at start into ``VerificationIndex`` and refreshes the rows each
new batch of events touched. A verification is then a dictionary look-up and a few
comparisons: no I/O, no store access.
"""

from __future__ import annotations

import ctypes
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from projections.follower import collector_paused
from projections.projection import Projection, handles
from projections.store import ViewStore
from projections.timefmt import epoch
from service.domain.accounts import Account
from service.domain.keys import ApiKey
from service.domain.scopes import ALL

API_KEY = "api_key"
PERSONAL_TOKEN = "personal_token"

# Verdict codes
VALID = "VALID"
NOT_FOUND = "NOT_FOUND"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"
INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
APP_MISMATCH = "APP_MISMATCH"


class VerificationView(Projection):
    name = "verification"
    tables = ("verification",)
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
    )
    indexes = ("CREATE INDEX IF NOT EXISTS verification_by_key ON verification (key_id)",)

    @handles(Account.Registered)
    def _account(self, db: sqlite3.Connection, position: int, e: Any) -> None:
        db.execute("INSERT OR REPLACE INTO verification VALUES (?, ?, ?, NULL, ?, '', NULL, NULL)",
                   (bytes.fromhex(e.token_digest), PERSONAL_TOKEN, str(e.originator_id), e.role))

    _INSERT_KEY = "INSERT OR REPLACE INTO verification VALUES (?, ?, ?, ?, NULL, ?, ?, NULL)"

    @staticmethod
    def _key_row(e: Any) -> tuple:
        return (bytes.fromhex(e.digest), API_KEY, str(e.originator_id), e.app_id, " ".join(e.scopes),
                epoch(e.expires_at))

    @handles(ApiKey.Issued)
    def _issued(self, db: sqlite3.Connection, position: int, e: Any) -> None:
        db.execute(self._INSERT_KEY, self._key_row(e))

    def process_batch(self, db: sqlite3.Connection, batch: Sequence[tuple[int, Any]]) -> None:
        """New keys are written in bulk; every other event in order between them."""
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

    @handles(ApiKey.ScopesChanged)
    def _scopes(self, db: sqlite3.Connection, position: int, e: Any) -> None:
        db.execute("UPDATE verification SET scopes = ? WHERE key_id = ?",
                   (" ".join(e.scopes), str(e.originator_id)))

    @handles(ApiKey.Rolled)
    def _rolled(self, db: sqlite3.Connection, position: int, e: Any) -> None:
        old = bytes.fromhex(e.previous_digest)
        db.execute(
            "INSERT OR REPLACE INTO verification "
            "SELECT ?, kind, key_id, app_id, role, scopes, expires_at, NULL FROM verification WHERE digest = ?",
            (bytes.fromhex(e.digest), old))
        ends = epoch(e.previous_valid_until)  # equal to the roll's time when there is no grace
        db.execute("UPDATE verification SET ends_at = MIN(COALESCE(ends_at, ?), ?) WHERE digest = ?",
                   (ends, ends, old))

    @handles(ApiKey.Revoked)
    def _revoked(self, db: sqlite3.Connection, position: int, e: Any) -> None:
        at = epoch(e.timestamp)
        db.execute("UPDATE verification SET ends_at = MIN(COALESCE(ends_at, ?), ?) WHERE key_id = ?",
                   (at, at, str(e.originator_id)))


DIGEST_BYTES = 16  # the index is keyed by the first 128 bits of the HMAC-SHA256 digest


class Credential:
    """Base of an index entry. Entries are small slotted objects; scope sets are shared."""

    __slots__ = ()
    kind: str
    app_id: str | None
    role: str | None
    scopes: frozenset
    id: bytes  # the key's (or account's) UUID, 16 bytes: a third of the text form's memory

    @property
    def key_id(self) -> str:
        return str(UUID(bytes=self.id))


class KeyEntry(Credential):
    __slots__ = ("id", "app_id", "scopes", "expires_at", "ends_at")
    kind = API_KEY
    role = None

    def __init__(self, id: bytes, app_id: str, scopes: frozenset, expires_at: float | None,
                 ends_at: float | None) -> None:
        self.id = id
        self.app_id = app_id
        self.scopes = scopes
        self.expires_at = expires_at
        self.ends_at = ends_at


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


class VerificationIndex:
    """The in-memory verification index of one process."""

    view = VerificationView.name

    def __init__(self) -> None:
        self.by_digest: dict[bytes, Credential] = {}
        self._scope_sets: dict[str, frozenset] = {}
        self._strings: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.by_digest)

    # -- the hot path ---------------------------------------------------------------

    def check(self, digest: bytes, scope: str | None, app_id: str | None, now: float
              ) -> tuple[str, Credential | None]:
        """The verdict for a credential's digest: a code and the entry (if known)."""
        entry = self.by_digest.get(digest[:DIGEST_BYTES])
        if entry is None:
            return NOT_FOUND, None
        if entry.ends_at is not None and now >= entry.ends_at:
            return REVOKED, entry
        if entry.expires_at is not None and now >= entry.expires_at:
            return EXPIRED, entry
        if app_id is not None and entry.app_id != app_id:
            return APP_MISMATCH, entry
        if entry.kind == PERSONAL_TOKEN:
            return (INSUFFICIENT_SCOPE, entry) if scope is not None else (VALID, entry)
        if scope is not None and scope not in entry.scopes and ALL not in entry.scopes:
            return INSUFFICIENT_SCOPE, entry
        return VALID, entry

    # -- loading and following --------------------------------------------------------

    def load(self, store: ViewStore) -> int:
        fresh: dict[bytes, Credential] = {}
        with collector_paused(), store.read() as db:
            position = store.position(db, self.view)
            cursor = db.cursor()
            cursor.row_factory = None  # plain tuples: no Row object per key
            for row in cursor.execute("SELECT * FROM verification"):
                fresh[row[0][:DIGEST_BYTES]] = self._entry(row)
            db.execute("PRAGMA shrink_memory")  # give back the page cache the full scan filled
        self.by_digest = fresh
        release_free_memory()
        return position

    def refresh(self, store: ViewStore, events: Sequence[Any]) -> None:
        ids = list({str(e.originator_id) for e in events
                    if isinstance(e, (Account.Registered, ApiKey.Event))})
        if not ids:
            return
        with store.read() as db:
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                for row in db.execute(f"SELECT * FROM verification WHERE key_id IN ({marks})", chunk):
                    self.by_digest[row[0][:DIGEST_BYTES]] = self._entry(row)

    def _entry(self, row: sqlite3.Row | tuple) -> Credential:
        _, kind, key_id, app_id, role, scopes, expires_at, ends_at = row
        intern = self._strings.setdefault
        if kind == PERSONAL_TOKEN:
            return TokenEntry(UUID(key_id).bytes, intern(role, role), ends_at)
        scope_set = self._scope_sets.get(scopes)
        if scope_set is None:
            scope_set = self._scope_sets[scopes] = frozenset(scopes.split())
        return KeyEntry(UUID(key_id).bytes, intern(app_id, app_id), scope_set, expires_at, ends_at)


def release_free_memory() -> None:
    """Return heap pages freed by a big load to the OS (glibc); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
