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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import IntegrityError, PersistenceError
from eventsourcing.sqlite import SQLiteApplicationRecorder

from service import credentials
from service.application.base import LedgerApplication, text_problem
from service.application.sealing import RecordRules
from service.domain.actors import Actor
from service.domain.audit import (
    GENESIS,
    AuditLedger,
    baseline_message,
    chain_hash,
    checkpoint_message,
    has_seal,
    signature_digest,
)
from service.domain.errors import (
    AuditChainBroken,
    Conflict,
    Forbidden,
    InvalidRequest,
    ScopeUnknown,
    TamperedRecord,
    Unavailable,
)
from service.domain.keys import ApiKey
from service.domain.legacy import LegacyClient
from service.domain.restrictions import NO_FACTS, RequestFacts, compile_restriction, judged_by
from service.domain.scopes import CATALOGUE, grants

READ_BATCH = 10_000  # stored records read at a time while walking the chain

# (seq, originator id, version, topic, state): a record exactly as the event store holds it.
StoredRecord = tuple[int, str, int, str, bytes]


@dataclass
class Ledger:
    """The audit ledger's records as found in the store, each judged."""

    recorded: list[dict] = field(default_factory=list)  # every checkpoint, as recorded
    genuine: list[dict] = field(default_factory=list)  # checkpoints and baselines that verify, in order
    baselines: list[dict] = field(default_factory=list)  # the genuine baselines, in order
    bad_seqs: dict[int, str] = field(default_factory=dict)  # a ledger record's seq -> why it is not genuine

    @property
    def epochs(self) -> list[str]:
        """"-" (before any baseline), then each baseline's id, oldest first."""
        return ["-", *(signature_digest(b["signature"]) for b in self.baselines)]

    @property
    def epoch(self) -> str:
        return self.epochs[-1]


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- credentials that can act for an app: one function per kind ---------------------------------

def _api_key_access(key: ApiKey, scope: str, at: datetime, facts: RequestFacts = NO_FACTS) -> dict | None:
    """An API key as it stood at ``at``: active then, with a scope that covers ``scope``, and a
    client restriction then that lets a request with ``facts`` through (a restriction judging a
    fact the question leaves out excludes nothing: the key could be used, from where it allows);
    its secrets then (the current one, and any rolled one still in its grace period)."""
    if key.status_at(at) != "active" or not grants(key.scopes, scope):
        return None
    restrictions = key.restrictions
    if judged_by(restrictions, facts) and compile_restriction(restrictions).refusal(facts) is not None:  # type: ignore[union-attr]
        return None
    secrets = [{"display": key.display, "valid_until": key.expires_at}]
    secrets += [{"display": display, "valid_until": until} for _, display, until in key.retiring
                if until > at]
    return {"kind": "api_key", "key_id": str(key.id), "scopes": list(key.scopes), "secrets": secrets,
            "restrictions": restrictions}


def _legacy_client_access(client: LegacyClient, scope: str, at: datetime,
                          facts: RequestFacts = NO_FACTS) -> dict | None:
    """A legacy OAuth2 client as it stood at ``at``: its access tokens carry no scopes, so until
    its legacy access was disabled (and before the sunset, which ``access_at`` applies) it could
    obtain a token and do anything its app may."""
    if client.disabled_at is not None and client.disabled_at <= at:
        return None
    return {"kind": "access_token", "client_id": client.client_id, "scopes": ["All"],
            "secrets": [{"display": client.secret_display, "valid_until": None}], "restrictions": None}


CREDENTIAL_KINDS: dict[type, Callable[[Any, str, datetime, RequestFacts], dict | None]] = {
    ApiKey: _api_key_access,
    LegacyClient: _legacy_client_access,
}


class AuditUseCases(LedgerApplication):
    # -- who reads what ----------------------------------------------------------------

    def audit_reader(self, *, by: Actor) -> str | None:
        """Whose apps' events the caller may read: their own (owners) or everyone's (None)."""
        if by.kind == "key":
            raise Forbidden("API keys cannot read the audit trail; use a personal token (pat_…).")
        if by.is_introspector:
            raise Forbidden("An introspector account only asks POST /v2/introspect; it reads no audit trail.")
        return None if by.reads_everything else by.id

    def require_auditor(self, *, by: Actor) -> None:
        self.audit_reader(by=by)
        if not by.reads_everything:
            raise Forbidden("Only auditors and admins can check the whole audit trail.")

    # -- the stored records ----------------------------------------------------------------

    def stored_records(self, after: int, limit: int) -> list[StoredRecord]:
        """Every record after position ``after``, up to ``limit`` of them, as stored (nothing decoded or
        checked: a value of the wrong type comes as it is); originator ids as 32 hex digits. The
        audit trail reads back so the records of a batch just read: from this process's own writes
        only if they hold all of them (``raw_records(every=True)``)."""
        return [(seq, oid.hex if isinstance(oid, UUID) else oid, version, topic, state)
                for seq, oid, version, topic, state in self.raw_records(after, limit, every=True)]

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

    # -- the ledger: checkpoints and baselines ------------------------------------------------

    def ledger(self, public_key: Ed25519PublicKey) -> Ledger:
        """The checkpoints and baselines recorded in the store, each checked: signature, links,
        seal. Read from the ledger's own records (never a snapshot)."""
        ledger = Ledger()
        previous = "-"
        judge = RecordRules(self.seal_key).judge  # a seal, where there is one, must verify
        for position, oid, version, topic, state in self.raw_stream(AuditLedger.create_id()):
            problem, body = judge(position or 0, oid, version, topic, state)
            try:
                if problem:
                    raise TamperedRecord(problem)
                e = self.mapper.decode_opened(oid if isinstance(oid, UUID) else UUID(oid), version, topic, body)  # type: ignore[attr-defined]
            except Exception as error:  # noqa: BLE001 - a tampered record; the walk reports where it is
                ledger.bad_seqs[position] = f"it cannot be read ({error})"
                continue
            sealed = has_seal(state)
            if isinstance(e, AuditLedger.CheckpointSigned):
                cp = {"number": e.number, "seq": e.seq, "hash": e.hash, "previous": e.previous,
                      "signed_at": e.signed_at, "message": e.message, "signature": e.signature,
                      "version": e.originator_version, "sealed": sealed}
                ledger.recorded.append(cp)
                problem = _checkpoint_problem(cp, public_key, len(ledger.recorded), previous)
                previous = signature_digest(cp["signature"])
                if problem:
                    ledger.bad_seqs[position] = problem
                else:
                    ledger.genuine.append(cp)
            elif isinstance(e, AuditLedger.BaselineAccepted):
                baseline = {"kind": "baseline", "seq": e.seq, "hash": e.hash, "accepted_at": e.accepted_at,
                            "by": e.by, "reason": e.reason, "message": e.message, "signature": e.signature,
                            "version": e.originator_version, "sealed": sealed}
                problem = _baseline_problem(baseline, public_key)
                if problem:
                    ledger.bad_seqs[position] = problem
                else:
                    ledger.baselines.append(baseline)
                    ledger.genuine.append(baseline)
        return ledger

    def checkpoints(self) -> tuple[list[dict], list[int]]:
        """Every recorded checkpoint, oldest first, as recorded (not verified); and the versions
        of ledger records that cannot even be decoded."""
        try:
            stored = self.recorder.select_events(AuditLedger.create_id())
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        found, unreadable = [], []
        for record in stored:
            try:
                e = self.mapper.to_domain_event(record)
            except Exception:  # noqa: BLE001 - a tampered record; the walk reports where it is
                unreadable.append(record.originator_version)
                continue
            if isinstance(e, AuditLedger.CheckpointSigned):
                found.append({"number": e.number, "seq": e.seq, "hash": e.hash, "previous": e.previous,
                              "signed_at": e.signed_at, "message": e.message, "signature": e.signature,
                              "version": e.originator_version})
        return found, unreadable

    def prime_record_rules(self, public_key: Ed25519PublicKey) -> str:
        """Before following the log: from the ledger, where seals are due (after the first
        checkpoint that was itself sealed) and up to where a baseline vouches for the records.
        Returns the current epoch (the latest baseline's id, "-" for none)."""
        ledger = self.ledger(public_key)
        rules = self.record_rules
        sealed = [cp for cp in ledger.genuine if cp["sealed"] and "number" in cp]
        if sealed:
            rules.seals_due_after(sealed[0]["seq"])
        if ledger.baselines:
            rules.accepted_through = max(rules.accepted_through, ledger.baselines[-1]["seq"])
        return ledger.epoch

    # -- checkpoints -------------------------------------------------------------------------

    def sign_checkpoint(self, signing_key: Ed25519PrivateKey, *, now: datetime | None = None,
                        by: Actor | None = None, mirrored: Iterable[dict] = (),
                        mark: dict | None = None) -> dict | None:
        """Verify the records since the last genuine checkpoint (or baseline), then sign the
        chain's head and record the checkpoint; None if nothing is new since the last one (or
        another process signed at the same moment). Raises ``AuditChainBroken`` — and signs
        nothing — when a record since then is not one the service wrote, or when evidence kept
        outside the store (``mirrored`` checkpoints, the tail ``mark``) says records are missing."""
        now = now or self.now()
        by = by or Actor.system("keyledger")
        public_key = signing_key.public_key()
        ledger = self.ledger(public_key)
        problems = _outside_problems(ledger, public_key, mirrored)
        mark = _current_mark(ledger, mark, problems)
        start = ledger.genuine[-1] if ledger.genuine else None
        seq, head = (start["seq"], start["hash"]) if start else (0, GENESIS)
        rules = self.record_rules.copy()
        rules.accepted_through = max(rules.accepted_through, ledger.baselines[-1]["seq"] if ledger.baselines else 0)
        sealed = [cp for cp in ledger.genuine if cp["sealed"] and "number" in cp]
        if sealed:
            rules.seals_due_after(sealed[0]["seq"])
        ledger_hex = AuditLedger.create_id().hex
        news = False
        last_seq = seq
        for record in self._walk(seq):  # only the records since the last checkpoint
            problem, _ = rules.judge(*record)
            if problem:
                problems.append((record[0], f"the stored record at seq {record[0]}: {problem}"))
                break
            if mark and last_seq < mark["seq"] < record[0]:
                problems.append((last_seq + 1, _mark_missing(mark, last_seq)))
                break
            seq, head = record[0], chain_hash(head, *record)
            last_seq = seq
            if mark and seq == mark["seq"] and mark.get("hash") not in (None, head):
                problems.append((seq, f"the chain at seq {seq} is not what this instance recorded there "
                                      "(events before it were rewritten, moved or removed)"))
                break
            # News: any record but a checkpoint's own (a baseline is news: a checkpoint follows it).
            news = news or record[1] != ledger_hex or str(record[3]).endswith("BaselineAccepted")
        problems += _mark_beyond(mark, last_seq)
        if problems:
            first_bad_seq, reason = min(problems)
            raise AuditChainBroken(first_bad_seq, reason)
        if not news:
            return None
        fingerprint = credentials.public_key_sha256(signing_key)
        aggregate = self._open_ledger(fingerprint, by=by, now=now)
        signed_at = _rfc3339(now)
        previous = aggregate.last_signature_digest
        message = checkpoint_message(number=aggregate.checkpoints + 1, seq=seq, head_hash=head,
                                     previous=previous, signed_at=signed_at)
        signature = base64.b64encode(signing_key.sign(message.encode("utf-8"))).decode("ascii")
        aggregate.record(seq=seq, head_hash=head, signed_at=signed_at, signature=signature, message=message,
                         public_key_sha256=fingerprint, by=by.ref, at=now)
        try:
            self.save(aggregate)
        except IntegrityError:
            return None  # another process recorded a checkpoint first; theirs covers this head
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        return {"number": aggregate.checkpoints, "seq": seq, "hash": head, "signed_at": signed_at,
                "previous": previous, "message": message, "epoch": ledger.epoch,
                "signature": signature, "public_key_sha256": fingerprint}

    def _open_ledger(self, fingerprint: str, *, by: Actor, now: datetime) -> AuditLedger:
        """The ledger of checkpoints and baselines, opened now if the store has none yet."""
        ledger_id = AuditLedger.create_id()
        aggregate = self._ledger_aggregate(ledger_id)
        if aggregate is None:
            aggregate = AuditLedger._create(AuditLedger.Opened, id=ledger_id, public_key_sha256=fingerprint,
                                            by=by.ref, request={}, timestamp=now)
        return aggregate

    def accept_baseline(self, signing_key: Ed25519PrivateKey, *, reason: str, by: Actor,
                        now: datetime | None = None) -> dict:
        """Accept the store as it stands as the new baseline: record who, why and the position
        accepted (the chain's head recomputed from every stored record), signed. Records up to
        it count as genuine from now on, and evidence kept outside the store from before it is
        superseded. For a store restored from a backup, after an operator has looked."""
        if not by.is_admin:
            raise Forbidden("Only an admin can accept the audit trail's baseline.")
        for name, value in (("reason", reason), ("by", by.id)):
            problem = text_problem(value, 500)
            if problem:
                raise InvalidRequest(f"{name}: {problem}", **{name: [problem]})
        now = now or self.now()
        seq, head, checked = 0, GENESIS, 0
        for record in self._walk(0):
            seq, head = record[0], chain_hash(head, *record)
            checked += 1
        fingerprint = credentials.public_key_sha256(signing_key)
        aggregate = self._open_ledger(fingerprint, by=by, now=now)
        accepted_at = _rfc3339(now)
        message = baseline_message(seq=seq, head_hash=head, accepted_at=accepted_at, by=by.ref, reason=reason)
        signature = base64.b64encode(signing_key.sign(message.encode("utf-8"))).decode("ascii")
        aggregate.accept_baseline(seq=seq, head_hash=head, accepted_at=accepted_at, reason=reason, message=message,
                                  signature=signature, public_key_sha256=fingerprint, by=by.ref, at=now)
        self._save_new(aggregate, conflict="Another process changed the audit ledger at the same moment; run "
                                           "the command again.")
        self.record_rules.accepted_through = max(self.record_rules.accepted_through, seq)
        return {"kind": "baseline", "seq": seq, "hash": head, "accepted_at": accepted_at, "by": by.ref,
                "reason": reason, "message": message, "signature": signature, "checked": checked,
                "epoch": signature_digest(signature)}

    def _ledger_aggregate(self, ledger_id: UUID) -> AuditLedger | None:
        """The ledger, even when one of its own records was altered: then it is rebuilt from its
        genuine records (a baseline is how an operator gets past such a record; signing after it
        only happens once the records since it verify)."""
        try:
            return self._find(AuditLedger, ledger_id)
        except Conflict:
            pass
        ledger: AuditLedger | None = None
        judge = RecordRules(self.seal_key).judge
        last_version = 0
        for position, oid, version, topic, state in self.raw_stream(ledger_id):
            if type(version) is int:
                last_version = max(last_version, version)
            problem, _ = judge(position or 0, oid, version, topic, state)
            try:
                if problem:
                    raise TamperedRecord(problem)
                e = self.mapper.decode_opened(oid if isinstance(oid, UUID) else UUID(oid), version, topic, state)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the altered record: left out
                continue
            if ledger is not None:
                ledger.version = e.originator_version - 1  # over the gap the altered record left
            ledger = e.mutate(ledger)  # type: ignore[attr-defined]
        if ledger is not None:
            ledger.version = last_version  # the decision goes after every record the stream holds
        return ledger

    # -- integrity -----------------------------------------------------------------------------

    def check_integrity(self, *, witness: Iterable[tuple[int, str]], public_key: Ed25519PublicKey,
                        mirrored: Iterable[dict] = (), mark: dict | None = None) -> dict:
        """Recompute the chain from the stored records and judge each one (types, seal); compare
        the chain with ``witness`` (the (seq, hash) pairs the audit view recorded), the recorded
        checkpoints and baselines, ``mirrored`` (copies of checkpoints kept outside the store)
        and the tail ``mark`` (the last position this instance saw, kept outside the store).
        Returns ``{"ok", "checked", "first_bad_seq", "reason", "checkpoints", "signed_through"}``;
        never raises for anything the store holds."""
        ledger = self.ledger(public_key)
        problems = _outside_problems(ledger, public_key, mirrored)  # (seq, reason); the smallest is reported
        mark = _current_mark(ledger, mark, problems)
        signed: dict[int, dict] = {}  # signed head seq -> checkpoint (or baseline) with a valid signature
        for cp in ledger.genuine:
            signed[cp["seq"]] = cp
        for cp in _current_lines(ledger, mirrored):
            if "number" in cp and not _checkpoint_problem(cp, public_key, cp.get("number"), None):
                signed.setdefault(cp["seq"], cp)
        bad_seqs = ledger.bad_seqs
        rules = RecordRules(self.seal_key)
        rules.accepted_through = ledger.baselines[-1]["seq"] if ledger.baselines else 0

        ledger_hex = AuditLedger.create_id().hex
        witnessed = iter(witness)
        w = next(witnessed, None)
        prev, checked, proven, first_unproven, last_seq = GENESIS, 0, 0, None, 0
        pending = sorted(signed)  # signed seqs not reached yet, in order
        due = pending.pop(0) if pending else None
        found: tuple[int, str] | None = None
        for record in self._walk(0):
            seq, originator_id = record[0], record[1]
            if mark and last_seq < mark["seq"] < seq:
                found = (last_seq + 1, _mark_missing(mark, last_seq))
                break
            digest = chain_hash(prev, *record)
            checked += 1
            last_seq = seq
            problem, _ = rules.judge(*record)
            also = f"; {problem}" if problem else ""
            if w is not None:
                if w[0] == seq:
                    if w[1] != digest:
                        found = (seq, f"the stored event at seq {seq} is not the one recorded "
                                      f"(edited, replaced or reordered){also}")
                        break
                    w = next(witnessed, None)
                elif w[0] < seq:
                    found = (w[0], f"the event at seq {w[0]} is missing from the event store "
                                   "(deleted or moved)")
                    break
                else:
                    found = (seq, f"the stored event at seq {seq} was never recorded (inserted){also}")
                    break
            if problem:
                found = (seq, f"the stored record at seq {seq}: {problem}")
                break
            if originator_id == ledger_hex:
                if seq in bad_seqs and seq > rules.accepted_through:
                    found = (seq, f"checkpoint at seq {seq}: {bad_seqs[seq]}")
                    break
            elif first_unproven is None:
                first_unproven = seq
            if mark and seq == mark["seq"] and mark.get("hash") not in (None, digest):
                found = (first_unproven or seq, f"the chain at seq {seq} is not what this instance recorded "
                                                f"there: rewritten, moved or removed after seq {proven}")
                break
            while due is not None and due <= seq:
                cp = signed[due]
                if due != seq or digest != cp["hash"]:  # due < seq: the signed record is gone
                    what = "baseline" if cp.get("kind") == "baseline" else f"checkpoint {cp['number']}"
                    found = (first_unproven or due,
                             f"{what} signed the chain at seq {due}, but the stored "
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
            else:
                problems += _mark_beyond(mark, last_seq)
        if found:
            problems.append(found)
        checkpoints = sum(1 for cp in signed.values() if cp.get("kind") != "baseline")
        if problems:
            seq, reason = min(problems)
            return {"ok": False, "checked": checked, "first_bad_seq": seq, "reason": reason,
                    "checkpoints": checkpoints, "signed_through": proven}
        return {"ok": True, "checked": checked, "first_bad_seq": None, "reason": None,
                "checkpoints": checkpoints, "signed_through": proven}

    # -- point in time ----------------------------------------------------------------------------

    def access_at(self, app_id: str, *, scope: str, at: datetime, by: Actor,
                  aggregate_ids: Iterable[str], facts: RequestFacts = NO_FACTS) -> list[dict]:
        """The credentials of ``app_id`` that could perform ``scope`` at ``at``, replayed from
        their own events; ``aggregate_ids`` are the app's credentials' aggregates (audit view).
        ``facts`` narrow it to a request from an origin, an address or a mobile app."""
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
            credential = kind(past, scope, at, facts)
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


def _baseline_problem(baseline: dict, public_key: Ed25519PublicKey) -> str | None:
    """Why a recorded (or mirrored) baseline is not genuine (None if it is)."""
    try:
        expected = baseline_message(seq=baseline["seq"], head_hash=baseline["hash"],
                                    accepted_at=baseline["accepted_at"], by=baseline["by"],
                                    reason=baseline["reason"])
        if baseline["message"] != expected:
            return "its fields differ from the text that was signed"
        public_key.verify(base64.b64decode(baseline["signature"], validate=True), expected.encode("utf-8"))
    except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
        return "its signature does not verify with the audit public key"
    return None


def _current_lines(ledger: Ledger, mirrored: Iterable[dict]) -> list[dict]:
    """The mirrored checkpoints written since the store's latest baseline (the others are superseded)."""
    return [line for line in mirrored
            if line.get("kind") != "baseline" and line.get("epoch", "-") == ledger.epoch]


def _outside_problems(ledger: Ledger, public_key: Ed25519PublicKey, mirrored: Iterable[dict]) -> list[tuple[int, str]]:
    """What the copies kept outside the store say is missing from it: a checkpoint or a baseline
    the store no longer holds (or holds replaced). A copy whose signature does not verify proves
    nothing; copies from before the store's latest baseline are superseded by it."""
    problems: list[tuple[int, str]] = []
    epochs = ledger.epochs
    by_number = {cp["number"]: cp for cp in ledger.recorded}
    baselines = {b["signature"] for b in ledger.baselines}
    for line in mirrored:
        try:
            if line.get("kind") == "baseline":
                if not _baseline_problem(line, public_key) and line["signature"] not in baselines:
                    problems.append((line["seq"] + 1, f"the baseline accepted at seq {line['seq']} is missing "
                                                      "from the event store"))
                continue
            if _checkpoint_problem(line, public_key, line.get("number"), None):
                continue
            epoch = line.get("epoch", "-")
            if epoch != ledger.epoch:
                if epoch not in epochs:
                    problems.append((line["seq"] + 1, f"checkpoint {line['number']} was signed after a baseline "
                                                      "the event store no longer holds"))
                continue
            if by_number.get(line["number"], {}).get("signature") != line["signature"]:
                problems.append((line["seq"] + 1, f"checkpoint {line['number']} (signed at seq {line['seq']}) "
                                                  "is missing from the event store or was replaced"))
        except (KeyError, TypeError):
            continue  # a line that is not a copy of ours
    return problems


def _current_mark(ledger: Ledger, mark: dict | None, problems: list[tuple[int, str]]) -> dict | None:
    """The tail mark if it was written since the store's latest baseline (None when superseded)."""
    if not mark:
        return None
    epoch = mark.get("epoch", "-")
    if epoch == ledger.epoch:
        return mark
    if epoch not in ledger.epochs:
        problems.append((mark["seq"], f"this instance recorded seq {mark['seq']} after a baseline the event "
                                      "store no longer holds"))
    return None


def _mark_missing(mark: dict, last_seq: int) -> str:
    return (f"this instance saw the record at seq {mark['seq']}, which is no longer in the log: the events "
            f"after seq {last_seq} were removed (and others written since)")


def _mark_beyond(mark: dict | None, last_seq: int) -> list[tuple[int, str]]:
    """Truncation: the log ends before the position this instance saw it reach."""
    if mark and mark["seq"] > last_seq:
        return [(last_seq + 1, f"this instance saw the log reach seq {mark['seq']}, but it ends at seq "
                               f"{last_seq}: events were removed from the end (if the store was restored "
                               "from a backup, see `keyledger audit accept-baseline`)")]
    return []
