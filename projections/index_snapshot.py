"""A sealed snapshot of the in-memory verification index: start-up without reading a million rows.

Loading the index from its view decodes every row of ``verification`` (about 3.5 s for a million
keys on this machine). A snapshot is the index itself, packed: the API keys' 15-byte digests and
their packed records (``KeyRecord``, as held in memory) in two contiguous blocks, the grants they
number, and the few other credentials (personal and legacy access tokens, legacy clients) — with
the log position it reflects. A start loads it (about half a second for a million keys) and then
catches up from that position by reading the log, as after any load, so every event committed
after the snapshot (a revocation included) takes effect before the process answers.

It holds keyed digests, key ids, app ids and scopes — what the view holds — never a secret.

A snapshot is used only when it can be shown to be this store's, and up to date with it:

- it is sealed (HMAC-SHA256 under a key derived from the record-sealing key, which the store
  never holds): a file written or altered by anyone else — a planted key — is refused;
- its header names the store (the pepper's fingerprint, the legacy sunset, the accepted baseline)
  and the stored record at its position (a SHA-256 of it, ``fingerprint``): a snapshot of another
  store, of a store restored from an older backup (its position beyond the log's end), or of a log
  rewritten since, does not match, and is ignored;
- anything unreadable (truncated, another format) is ignored too.

Ignored means one log line (``keyledger.projections``: why) and the index loaded from its view as
before. A snapshot is written (to a new file, then renamed over the old one, mode 0600) when an
index of at least ``min_entries`` credentials was loaded from its view, while following once
``every`` events have been applied since the last one, and when the process stops if ``at_stop``
have (a command-line process applying one event does not rewrite it). A rebuild removes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from projections.verification import (
    DIGEST_BYTES,
    GRANTS,
    AccessTokenEntry,
    KeyRecord,
    LegacyClientState,
    RestrictedGrant,
    TokenEntry,
    _intern,
    grant_of,
    restricted,
)

log = logging.getLogger("keyledger.projections")

MAGIC = b"keyledger-index-snapshot/v1\n"
FILE_NAME = "verification-index.snapshot"
MIN_ENTRIES = 50_000  # smaller indexes load from their view in a fraction of a second
EVERY = 200_000  # events applied while following before the next snapshot
AT_STOP = 1_000  # ... and at a stop (fewer are caught up from the log in milliseconds at the next start)
_TAG = 32  # HMAC-SHA256
_LENGTHS = struct.Struct("<QQQQ")  # header, digests of plain records, of ended records, ...
_PLAIN = 28  # a KeyRecord without an end; 36 with one
_ENDED = 36
_GRANT_NUMBER = struct.Struct("<I")


def snapshot_key(seal_key: bytes) -> bytes:
    """The snapshot's sealing key, derived from the record-sealing key."""
    return hmac.new(seal_key, b"keyledger-index-snapshot-key/v1", hashlib.sha256).digest()


class IndexSnapshots:
    """Writes and reads the verification index's snapshot file (see the module's docstring).

    ``fingerprint(position)`` says which stored record the log holds at ``position`` (None when
    it holds none there), and ``identity`` names the store and the settings the index depends on."""

    def __init__(self, path: Path | str, key: bytes, fingerprint: Callable[[int], str | None],
                 identity: Callable[[], dict[str, Any]], *, min_entries: int = MIN_ENTRIES, every: int = EVERY,
                 at_stop: int = AT_STOP) -> None:
        self.path = Path(path)
        self.key = key
        self.fingerprint = fingerprint
        self.identity = identity  # evaluated at each write and read: a baseline accepted meanwhile counts
        self._writing = threading.Lock()
        self.min_entries = min_entries
        self.every = every
        self.at_stop = at_stop
        self.position = 0  # of the last snapshot written or loaded
        self.loaded = False  # the last load came from the snapshot

    # -- writing ------------------------------------------------------------------------

    def prepare(self, index: Any, position: int, *, final: bool = False) -> Callable[[], bool] | None:
        """Called with the index held still (the follower's memory lock): when a snapshot of ``index``
        (reflecting the log up to ``position``) is due, a copy of its tables (quick) and the job that
        packs and writes it (slower: run it after letting go). None when none is due: the index is
        small, or it moved less than ``every`` events since the last snapshot (``at_stop`` when
        ``final``, the process stopping). Due at once when the index came from its view."""
        if len(index.by_digest) < self.min_entries or position == self.position:
            return None
        if self.position and abs(position - self.position) < (self.at_stop if final else self.every):
            return None
        table, clients = dict(index.by_digest), dict(index.clients)
        return lambda: self._save(table, clients, position)

    def _save(self, table: dict, clients: dict, position: int) -> bool:
        fingerprint = self.fingerprint(position) if position else "empty"
        if fingerprint is None:
            return False
        return self._write(table, clients, position, fingerprint)

    def _write(self, table: dict, clients: dict, position: int, fingerprint: str) -> bool:
        plain_digests, plain_records, ended_digests, ended_records = [], [], [], []
        others = []
        used: dict[int, int] = {}  # the process's grant number -> the snapshot's
        grants: list[list] = []
        for digest, entry in table.items():
            if type(entry) is KeyRecord:
                number = _GRANT_NUMBER.unpack_from(entry, 8)[0]
                mine = used.get(number)
                if mine is None:
                    mine = used[number] = len(grants)
                    grant = GRANTS[number]
                    grants.append([grant.app_id, " ".join(sorted(grant.scopes)),
                                   grant.restriction_text if type(grant) is RestrictedGrant else None])
                record = entry if mine == number else entry[:8] + _GRANT_NUMBER.pack(mine) + entry[12:]
                if len(entry) == _PLAIN:
                    plain_digests.append(digest)
                    plain_records.append(record)
                else:
                    ended_digests.append(digest)
                    ended_records.append(record)
            elif type(entry) is TokenEntry:
                others.append(["token", digest.hex(), entry.id.hex(), entry.role, entry.ends_at])
            elif type(entry) is AccessTokenEntry:
                others.append(["access", digest.hex(), entry.client.id.hex(), entry.expires_at])
        header = json.dumps({
            "position": position, "fingerprint": fingerprint, "identity": self.identity(), "grants": grants,
            "others": others, "clients": [[c.id.hex(), c.client_id, c.app_id, c.ends_at, c.recorded_until]
                                          for c in clients.values()],
        }, separators=(",", ":")).encode()
        blocks = [header, b"".join(plain_digests), b"".join(plain_records), b"".join(ended_digests),
                  b"".join(ended_records)]
        body = MAGIC + _LENGTHS.pack(len(header), len(plain_digests), len(ended_digests), 0) + b"".join(blocks)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with self._writing:
            return self._replace(temporary, body, position)

    def _replace(self, temporary: Path, body: bytes, position: int) -> bool:
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(body)
                file.write(hmac.new(self.key, body, hashlib.sha256).digest())
            os.replace(temporary, self.path)
        except OSError as error:
            log.warning("the verification index's snapshot could not be written (%s)", error)
            temporary.unlink(missing_ok=True)
            return False
        self.position = position
        return True

    def remove(self) -> None:
        """Forget the snapshot (a rebuild: the index is the view's again)."""
        self.path.unlink(missing_ok=True)
        self.position = 0
        self.loaded = False

    # -- reading ------------------------------------------------------------------------

    def restore(self, index: Any) -> int | None:
        """Fill ``index`` from the snapshot and return its position; None (said in one log line when
        a file was there) when there is none or it cannot be used — the caller loads the view."""
        self.loaded = False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            return self._ignored(f"it cannot be read ({error.strerror})")
        if len(data) < len(MAGIC) + _LENGTHS.size + _TAG or not data.startswith(MAGIC):
            return self._ignored("it is not a snapshot of this format")
        body, tag = memoryview(data)[:-_TAG], data[-_TAG:]
        if not hmac.compare_digest(hmac.new(self.key, body, hashlib.sha256).digest(), tag):
            return self._ignored("its seal does not verify (written by another key, or altered)")
        try:
            header_size, plain, ended, _ = _LENGTHS.unpack_from(data, len(MAGIC))
            start = len(MAGIC) + _LENGTHS.size
            header = json.loads(bytes(body[start:start + header_size]))
            position = header["position"]
            if header["identity"] != self.identity():
                return self._ignored("it belongs to another store or other settings")
            expected = self.fingerprint(position) if position else "empty"
            if expected is None:
                return self._ignored(f"its position {position} is beyond the event log's end "
                                     "(a store restored from an older backup?)")
            if header["fingerprint"] != expected:
                return self._ignored(f"the event log's record at its position {position} is not the one it saw")
            start += header_size
            table, clients = self._unpack(index, header, data, start, plain, ended)
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as error:
            return self._ignored(f"it cannot be decoded ({type(error).__name__})")
        index.by_digest = table
        index.clients = clients
        self.position = position
        self.loaded = True
        return position

    def _unpack(self, index: Any, header: dict, data: bytes, start: int, plain: int, ended: int
                ) -> tuple[dict, dict]:
        numbers = []
        for app_id, scopes, restriction in header["grants"]:
            grant = grant_of(app_id, scopes)
            if restriction is not None:
                grant = restricted(grant, restriction)
            numbers.append(grant.number)
        renumber = numbers != list(range(len(numbers)))
        table: dict[bytes, Any] = {}
        for count, size in ((plain, _PLAIN), (ended, _ENDED)):
            digests_end = start + count * DIGEST_BYTES
            end = digests_end + count * size
            if end > len(data) - _TAG:
                raise ValueError("truncated")
            digests = map(data.__getitem__, map(slice, range(start, digests_end, DIGEST_BYTES),
                                                range(start + DIGEST_BYTES, digests_end + 1, DIGEST_BYTES)))
            records = map(data.__getitem__, map(slice, range(digests_end, end, size),
                                                range(digests_end + size, end + 1, size)))
            if renumber:
                pack = _GRANT_NUMBER.pack
                records = (r[:8] + pack(numbers[_GRANT_NUMBER.unpack_from(r, 8)[0]]) + r[12:] for r in records)
            table.update(zip(digests, map(KeyRecord, records), strict=True))
            start = end
        if start != len(data) - _TAG:
            raise ValueError("trailing bytes")
        clients: dict[bytes, LegacyClientState] = {}
        for id_hex, client_id, app_id, ends_at, recorded_until in header["clients"]:
            client = LegacyClientState(bytes.fromhex(id_hex), client_id, _intern(app_id), ends_at)
            client.recorded_until = recorded_until
            clients[client.id] = client
        for other in header["others"]:
            if other[0] == "token":
                _, digest, id_hex, role, ends_at = other
                table[bytes.fromhex(digest)] = TokenEntry(bytes.fromhex(id_hex), _intern(role), ends_at)
            else:
                _, digest, id_hex, expires_at = other
                table[bytes.fromhex(digest)] = AccessTokenEntry(clients[bytes.fromhex(id_hex)], expires_at)
        return table, clients

    def _ignored(self, why: str) -> None:
        log.warning("the verification index's snapshot %s is ignored: %s; loading the index from its view",
                    self.path.name, why)
        return None


