"""Use cases: the audit trail's tamper evidence and its point-in-time answers.

* ``stored_records`` reads the event store's records as stored (no decoding): the audit
  chain is computed over them (``service.domain.audit.chain_hash``).
* ``sign_checkpoint`` signs the chain's head with Ed25519 and records it as an event of the
  ``AuditLedger`` stream. The scheduler calls it hourly; ``keyledger serve`` at start.
* ``check_integrity`` recomputes the chain from the stored records and compares it, record
  by record, with the chain the audit view recorded as the events happened (which finds the
  position of an edited, deleted, inserted or reordered record), and with every signed
  checkpoint (which finds a consistent rewrite of events and view by someone without the key).
* ``access_at``: which credentials of an app could perform a scope at a moment, by replaying
  each credential's own events up to that moment. One small function per credential kind.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import IntegrityError, PersistenceError
from eventsourcing.sqlite import SQLiteApplicationRecorder

from service import credentials
from service.application.base import LedgerApplication
from service.domain.actors import Actor
from service.domain.audit import (
    GENESIS,
    AuditLedger,
    chain_hash,
    checkpoint_message,
    signature_digest,
)
from service.domain.errors import Forbidden, ScopeUnknown, Unavailable
from service.domain.keys import ApiKey
from service.domain.legacy import LegacyClient
from service.domain.scopes import CATALOGUE, grants

READ_BATCH = 10_000  # stored records read at a time while walking the chain

# (seq, originator id, version, topic, state): a record exactly as the event store holds it.
StoredRecord = tuple[int, str, int, str, bytes]


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- credentials that can act for an app: one function per kind ---------------------------------

def _api_key_access(key: ApiKey, scope: str, at: datetime) -> dict | None:
    """An API key as it stood at ``at``: active then, with a scope that covers ``scope``;
    its secrets then (the current one, and any rolled one still in its grace period)."""
    if key.status_at(at) != "active" or not grants(key.scopes, scope):
        return None
    secrets = [{"display": key.display, "valid_until": key.expires_at}]
    secrets += [{"display": display, "valid_until": until} for _, display, until in key.retiring
                if until > at]
    return {"kind": "api_key", "key_id": str(key.id), "scopes": list(key.scopes), "secrets": secrets}


def _legacy_client_access(client: LegacyClient, scope: str, at: datetime) -> dict | None:
    """A legacy OAuth2 client as it stood at ``at``: its access tokens carry no scopes, so until
    its legacy access was disabled (and before the sunset, which ``access_at`` applies) it could
    obtain a token and do anything its app may."""
    if client.disabled_at is not None and client.disabled_at <= at:
        return None
    return {"kind": "access_token", "client_id": client.client_id, "scopes": ["All"],
            "secrets": [{"display": client.secret_display, "valid_until": None}]}


CREDENTIAL_KINDS: dict[type, Callable[[Any, str, datetime], dict | None]] = {
    ApiKey: _api_key_access,
    LegacyClient: _legacy_client_access,
}


class AuditUseCases(LedgerApplication):
    # -- who reads what ----------------------------------------------------------------

    def audit_reader(self, *, by: Actor) -> str | None:
        """Whose apps' events the caller may read: their own (owners) or everyone's (None)."""
        if by.kind == "key":
            raise Forbidden("API keys cannot read the audit trail; use a personal token (pat_…).")
        return None if by.reads_everything else by.id

    def require_auditor(self, *, by: Actor) -> None:
        self.audit_reader(by=by)
        if not by.reads_everything:
            raise Forbidden("Only auditors and admins can check the whole audit trail.")

    # -- the stored records ----------------------------------------------------------------

    def stored_records(self, after: int, limit: int) -> list[StoredRecord]:
        """Up to ``limit`` records after position ``after``, as stored (nothing decoded);
        originator ids as 32 hex digits."""
        try:
            if isinstance(self.recorder, SQLiteApplicationRecorder):
                # The one store-specific statement: the library's select_notifications turns
                # every id into a UUID object, which costs more than the rest of the check.
                with self.recorder.datastore.transaction(commit=False) as cursor:
                    cursor.row_factory = None  # plain tuples
                    cursor.execute(
                        "SELECT rowid, originator_id, originator_version, topic, state FROM "
                        f"{self.recorder.events_table_name} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                        (after, limit))
                    return cursor.fetchall()
            notifications = self.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False)
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        return [(n.id, n.originator_id.hex if isinstance(n.originator_id, UUID) else str(n.originator_id),
                 n.originator_version, n.topic, n.state) for n in notifications]

    def _walk(self, after: int) -> Iterator[StoredRecord]:
        """Every record after ``after``, in order. On an SQLite file: one statement on a
        read-only connection of its own, streamed (the fastest way through a million rows)."""
        pool = getattr(getattr(self.recorder, "datastore", None), "pool", None)
        if (isinstance(self.recorder, SQLiteApplicationRecorder) and pool is not None
                and not pool.is_sqlite_memory_mode):
            try:
                db = sqlite3.connect(Path(pool.db_name).resolve().as_uri() + "?mode=ro", uri=True,
                                     timeout=10)
            except sqlite3.Error as error:
                raise Unavailable("The event store cannot be read right now; retry shortly.") from error
            try:
                cursor = db.execute(
                    "SELECT rowid, originator_id, originator_version, topic, state FROM "
                    f"{self.recorder.events_table_name} WHERE rowid > ? ORDER BY rowid", (after,))
                while rows := cursor.fetchmany(READ_BATCH):
                    yield from rows
            except sqlite3.Error as error:
                raise Unavailable("The event store cannot be read right now; retry shortly.") from error
            finally:
                db.close()
            return
        while True:
            batch = self.stored_records(after, READ_BATCH)
            yield from batch
            if len(batch) < READ_BATCH:
                return
            after = batch[-1][0]

    # -- checkpoints -------------------------------------------------------------------------

    def sign_checkpoint(self, signing_key: Ed25519PrivateKey, *, now: datetime | None = None,
                        by: Actor | None = None) -> dict | None:
        """Sign the chain's head and record the checkpoint; None if nothing is new since the
        last one (or another process signed at the same moment). Safe to run any time."""
        now = now or self.now()
        by = by or Actor.system("keyledger")
        ledger_id = AuditLedger.create_id()
        ledger_hex = ledger_id.hex
        ledger = self._find(AuditLedger, ledger_id)
        seq, head = (ledger.last_seq, ledger.last_hash) if ledger else (0, GENESIS)
        news = False
        for record in self._walk(seq):  # only the records since the last checkpoint
            seq, head = record[0], chain_hash(head, *record)
            news = news or record[1] != ledger_hex
        if not news:
            return None
        fingerprint = credentials.public_key_sha256(signing_key)
        if ledger is None:
            ledger = AuditLedger._create(AuditLedger.Opened, id=ledger_id, public_key_sha256=fingerprint,
                                         by=by.ref, request={}, timestamp=now)
        signed_at = _rfc3339(now)
        previous = ledger.last_signature_digest
        message = checkpoint_message(number=ledger.checkpoints + 1, seq=seq, head_hash=head,
                                     previous=previous, signed_at=signed_at)
        signature = base64.b64encode(signing_key.sign(message.encode("utf-8"))).decode("ascii")
        ledger.record(seq=seq, head_hash=head, signed_at=signed_at, signature=signature, message=message,
                      public_key_sha256=fingerprint, by=by.ref, at=now)
        try:
            self.save(ledger)
        except IntegrityError:
            return None  # another process recorded a checkpoint first; theirs covers this head
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        return {"number": ledger.checkpoints, "seq": seq, "hash": head, "signed_at": signed_at,
                "previous": previous, "message": message,
                "signature": signature, "public_key_sha256": fingerprint}

    def checkpoints(self) -> tuple[list[dict], list[int]]:
        """Every recorded checkpoint, oldest first, as recorded (not yet verified); and the
        versions of ledger records that cannot even be decoded."""
        try:
            stored = self.recorder.select_events(AuditLedger.create_id())
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        found, unreadable = [], []
        for record in stored:
            try:
                e = self.mapper.to_domain_event(record)
            except Exception:  # a tampered record; the walk reports where it is
                unreadable.append(record.originator_version)
                continue
            if isinstance(e, AuditLedger.CheckpointSigned):
                found.append({"number": e.number, "seq": e.seq, "hash": e.hash, "previous": e.previous,
                              "signed_at": e.signed_at, "message": e.message, "signature": e.signature,
                              "version": e.originator_version})
        return found, unreadable

    # -- integrity -----------------------------------------------------------------------------

    def check_integrity(self, *, witness: Iterable[tuple[int, str]], public_key: Ed25519PublicKey,
                        mirrored: Iterable[dict] = ()) -> dict:
        """Recompute the chain from the stored records and compare it with ``witness`` (the
        (seq, hash) pairs the audit view recorded), the recorded checkpoints and ``mirrored``
        (copies of checkpoints kept outside the store). Returns ``{"ok", "checked",
        "first_bad_seq", "reason", "checkpoints", "signed_through"}``."""
        recorded, unreadable = self.checkpoints()
        problems: list[tuple[int, str]] = []  # (seq, reason); the smallest seq is reported
        signed: dict[int, dict] = {}  # signed head seq -> checkpoint with a valid signature
        # ledger versions whose checkpoint is not genuine
        bad_versions: dict[int, str] = {v: "it cannot be read (altered)" for v in unreadable}
        previous = "-"
        for number, cp in enumerate(recorded, start=1):
            problem = _checkpoint_problem(cp, public_key, number, previous)
            if problem:
                bad_versions[cp["version"]] = problem
            else:
                signed[cp["seq"]] = cp
            previous = signature_digest(cp["signature"])
        by_number = {cp["number"]: cp for cp in recorded}
        for cp in mirrored:
            if _checkpoint_problem(cp, public_key, cp.get("number"), None):
                continue  # a mirror line that does not verify proves nothing
            if by_number.get(cp["number"], {}).get("signature") != cp["signature"]:
                problems.append((cp["seq"] + 1, f"checkpoint {cp['number']} (signed at seq {cp['seq']}) "
                                                "is missing from the event store or was replaced"))
            signed.setdefault(cp["seq"], cp)

        ledger_hex = AuditLedger.create_id().hex
        witnessed = iter(witness)
        w = next(witnessed, None)
        prev, checked, proven, first_unproven, last_seq = GENESIS, 0, 0, None, 0
        pending = sorted(signed)  # signed seqs not reached yet, in order
        due = pending.pop(0) if pending else None
        found: tuple[int, str] | None = None
        for seq, originator_id, version, topic, state in self._walk(0):
            digest = chain_hash(prev, seq, originator_id, version, topic, state)
            checked += 1
            last_seq = seq
            if w is not None:
                if w[0] == seq:
                    if w[1] != digest:
                        found = (seq, f"the stored event at seq {seq} is not the one recorded "
                                      "(edited, replaced or reordered)")
                        break
                    w = next(witnessed, None)
                elif w[0] < seq:
                    found = (w[0], f"the event at seq {w[0]} is missing from the event store "
                                   "(deleted or moved)")
                    break
                else:
                    found = (seq, f"the stored event at seq {seq} was never recorded (inserted)")
                    break
            if originator_id == ledger_hex:
                if version in bad_versions:
                    found = (seq, f"checkpoint at seq {seq}: {bad_versions[version]}")
                    break
            elif first_unproven is None:
                first_unproven = seq
            while due is not None and due <= seq:
                cp = signed[due]
                if due != seq or digest != cp["hash"]:  # due < seq: the signed record is gone
                    found = (first_unproven or due,
                             f"checkpoint {cp['number']} signed the chain at seq {due}, but the stored "
                             f"events no longer give that hash: rewritten after seq {proven}")
                    break
                proven, first_unproven = due, None
                due = pending.pop(0) if pending else None
            if found:
                break
            prev = digest
        else:
            if w is not None:
                found = (w[0], f"the event at seq {w[0]} is missing from the event store (deleted)")
            elif due is not None:
                found = (last_seq + 1, f"checkpoint signed at seq {due}, beyond the last stored event: "
                                       "events were removed from the end")
        if found:
            problems.append(found)
        if problems:
            seq, reason = min(problems)
            return {"ok": False, "checked": checked, "first_bad_seq": seq, "reason": reason,
                    "checkpoints": len(signed), "signed_through": proven}
        return {"ok": True, "checked": checked, "first_bad_seq": None, "reason": None,
                "checkpoints": len(signed), "signed_through": proven}

    # -- point in time ----------------------------------------------------------------------------

    def access_at(self, app_id: str, *, scope: str, at: datetime, by: Actor,
                  aggregate_ids: Iterable[str]) -> list[dict]:
        """The credentials of ``app_id`` that could perform ``scope`` at ``at``, replayed from
        their own events; ``aggregate_ids`` are the app's credentials' aggregates (audit view)."""
        self.audit_reader(by=by)
        self._visible_app(app_id, by)  # type: ignore[attr-defined]
        if scope not in CATALOGUE:
            raise ScopeUnknown(f"Unknown scope {scope!r}. Use a scope from GET /v2/scopes.",
                               scope=["Not in the catalogue."], valid_scopes=list(CATALOGUE))
        found = []
        for aggregate_id in aggregate_ids:
            past = self._as_of(UUID(aggregate_id), at)
            kind = CREDENTIAL_KINDS.get(type(past))
            if kind is None or getattr(past, "app_id", None) != app_id:
                continue
            if kind is _legacy_client_access and at >= self.legacy.sunset_at:  # type: ignore[attr-defined]
                continue  # no access token works after the sunset
            credential = kind(past, scope, at)
            if credential is not None:
                found.append(credential)
        return found

    def _as_of(self, aggregate_id: UUID, at: datetime) -> Any:
        """The aggregate as it stood at ``at`` (None if it did not exist yet)."""
        version = None
        try:
            for domain_event in self.events.get(aggregate_id):
                if domain_event.timestamp <= at:
                    version = domain_event.originator_version
                else:
                    break
            return None if version is None else self.repository.get(aggregate_id, version=version)
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error


def _checkpoint_problem(cp: dict, public_key: Ed25519PublicKey, number: int | None,
                        previous: str | None) -> str | None:
    """Why a recorded checkpoint is not genuine (None if it is)."""
    try:
        expected = checkpoint_message(number=cp["number"], seq=cp["seq"], head_hash=cp["hash"],
                                      previous=cp["previous"], signed_at=cp["signed_at"])
        if cp["message"] != expected:
            return "its fields differ from the text that was signed"
        public_key.verify(base64.b64decode(cp["signature"], validate=True), expected.encode("utf-8"))
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return "its signature does not verify with the audit public key"
    if number is not None and cp["number"] != number:
        return f"it is numbered {cp['number']} where {number} was expected (a checkpoint was removed)"
    if previous is not None and cp["previous"] != previous:
        return "it does not name the checkpoint before it (a checkpoint was removed or replaced)"
    return None
