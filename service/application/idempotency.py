"""Use cases: commands committed last, and answers recorded with them for retries (Idempotency-Key).

**Commit last.** Inside ``deferred()`` a use case's ``save()`` does not write: it checks the
aggregates' versions against the store (so a conflict raises ``IntegrityError`` where it always
did, and the use case reports it as before) and keeps the events. The caller builds its whole
answer, then ``commit()`` writes every event in one transaction. Nothing that runs before the
answer is known can fail after the change is recorded, so a committed command is never answered
with an error; whatever fails before the commit leaves nothing behind.

**Answers recorded with their command.** ``commit_answered()`` adds an ``IdempotentRequest``
record to that same transaction: the answer is sealed (AES-256-GCM) under a key derived with
the pepper from the caller, their Idempotency-Key and a random *seal key* kept beside the views
for the retention period. The event store holds only the ciphertext and a keyed digest of the
request; the Idempotency-Key itself is never stored. Without the client's key, nobody — a
reader of both stores, or the service itself — can open the answer, and once the seal key is
deleted (after 24 hours) nobody can, whatever they hold (crypto-shredding: events are forever).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, PersistenceError

from service.application.base import LedgerApplication
from service.domain.errors import Conflict, KeyledgerError, Unavailable
from service.domain.idempotency import IdempotentRequest, request_record_id

log = logging.getLogger("keyledger")

SEAL_KEY_BYTES = 32
_NONCE_BYTES = 12


class IdempotencyKeyReused(KeyledgerError):
    """The same Idempotency-Key with another request, within the retention period."""

    code = "IDEMPOTENCY_KEY_REUSED"


class AnswerUnreadable(Conflict):
    """The request was done, but its recorded answer can no longer be opened."""


class CommitRaced(Exception):
    """Another writer committed first: a duplicate of this request (its answer is recorded),
    or a change to one of the same aggregates. Run the command again."""


@dataclass(frozen=True)
class IdempotentCall:
    """One caller's request under one Idempotency-Key."""

    record_id: UUID
    request_digest: str  # keyed digest of what was asked
    seal_context: bytes = field(repr=False)  # derives the seal's key; holds the caller's key


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as recorded: replayed byte for byte."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def to_bytes(self) -> bytes:
        return json.dumps({"status": self.status, "headers": self.headers,
                           "body": base64.b64encode(self.body).decode("ascii")}).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Answer:
        plain = json.loads(data)
        return cls(status=plain["status"], headers=[(k, v) for k, v in plain["headers"]],
                   body=base64.b64decode(plain["body"]))


@dataclass
class Batch:
    """Events of commands run inside ``deferred()``, not yet written."""

    events: list = field(default_factory=list)
    aggregates: dict = field(default_factory=dict)
    versions: dict[UUID, int] = field(default_factory=dict)  # each aggregate's last deferred version

    def __bool__(self) -> bool:
        return bool(self.events)


_BATCH: ContextVar[Batch | None] = ContextVar("keyledger_deferred_batch", default=None)


class IdempotencyUseCases(LedgerApplication):
    # -- commit last ------------------------------------------------------------------

    @contextmanager
    def deferred(self) -> Iterator[Batch]:
        """Run commands without writing; ``commit(batch)`` writes them afterwards."""
        batch = Batch()
        token = _BATCH.set(batch)
        try:
            yield batch
        finally:
            _BATCH.reset(token)

    @staticmethod
    def deferring() -> bool:
        return _BATCH.get() is not None

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        batch = _BATCH.get()
        if batch is None:
            return super().save(*objs, **kwargs)
        collected: ProcessingEvent = ProcessingEvent()
        collected.collect_events(*objs, **kwargs)
        self._check_versions(collected.events, batch)
        batch.events.extend(collected.events)
        batch.aggregates.update(collected.aggregates)
        for domain_event in collected.events:
            batch.versions[domain_event.originator_id] = domain_event.originator_version
        return []

    def _check_versions(self, events: list, batch: Batch) -> None:
        """Raise ``IntegrityError`` as the store would if these events were written now."""
        first: dict[UUID, int] = {}
        for domain_event in events:
            first.setdefault(domain_event.originator_id, domain_event.originator_version)
        for originator_id, version in first.items():
            last = batch.versions.get(originator_id)
            if last is None and version == 1 and getattr(originator_id, "version", None) == 4:
                continue  # a new aggregate with a random id: nothing can be stored under it yet
            if last is None:
                try:
                    stored = self.recorder.select_events(originator_id, desc=True, limit=1)
                except PersistenceError as error:
                    raise Unavailable("The event store cannot be read right now; retry shortly.") from error
                last = stored[0].originator_version if stored else 0
            if last >= version:
                raise IntegrityError(f"{originator_id} is at version {last} already")

    def _find(self, cls: type, aggregate_id: UUID) -> Any:
        """As loaded for a deferred command, its version is the one its next event must follow:
        ``_check_versions`` need not read it again (a write by another process in between is
        found by the commit, and the command run again)."""
        aggregate = super()._find(cls, aggregate_id)
        batch = _BATCH.get()
        if batch is not None and aggregate is not None:
            batch.versions.setdefault(aggregate.id, aggregate.version)
        return aggregate

    def commit(self, batch: Batch, *extra: Any) -> None:
        """Write the deferred events (and ``extra`` aggregates) in one transaction.
        ``CommitRaced`` if another writer got there first; ``Unavailable`` if the store failed."""
        processing: ProcessingEvent = ProcessingEvent()
        processing.events.extend(batch.events)
        processing.aggregates.update(batch.aggregates)
        processing.collect_events(*extra)
        try:
            recordings = self._record(processing)
        except IntegrityError:
            raise CommitRaced() from None
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        try:  # recorded: nothing after this point may turn the answer into an error
            self._take_snapshots(processing)
        except Exception:  # noqa: BLE001 - a snapshot is an optimisation; the next save takes one
            log.warning("a snapshot could not be taken after a commit", exc_info=True)
        self._notify(recordings)

    # -- answers recorded with their command ---------------------------------------------

    def idempotent_call(self, scope: str, key: str, request: bytes) -> IdempotentCall:
        """``scope``: who asks (an actor reference, or the credentials sent); ``key``: their
        Idempotency-Key; ``request``: what they ask (method, path, canonical body)."""
        context = f"keyledger:idempotency\0{scope}\0{key}"
        return IdempotentCall(
            record_id=request_record_id(self.digester.hexdigest(context)),
            request_digest=self.digester.hexdigest(
                "keyledger:idempotent-request\0" + hashlib.sha256(request).hexdigest()),
            seal_context=context.encode("utf-8", "surrogatepass"))

    def recorded_answer(self, call: IdempotentCall, seal_key: Callable[[], bytes | None]) -> Answer | None:
        """The answer recorded for this call within the retention period (None if there is none);
        ``IdempotencyKeyReused`` if the key answered another request."""
        record = self._find(IdempotentRequest, call.record_id)
        if record is None or not record.is_current(self.now()):
            return None
        if not hmac.compare_digest(record.request_digest, call.request_digest):
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with another request in the last 24 hours; "
                "use a new key for a new request.", **{"Idempotency-Key": ["Used for another request."]})
        key = seal_key()
        try:
            if key is None:
                raise InvalidTag
            return Answer.from_bytes(self._open(record, call, key))
        except (InvalidTag, ValueError, KeyError, TypeError):
            raise AnswerUnreadable(
                "The request with this Idempotency-Key was done, but its answer can no longer be "
                "read; read the resource instead.", **{"Idempotency-Key": ["Already used."]}) from None

    def commit_answered(self, batch: Batch, call: IdempotentCall, answer: Answer, seal_key: bytes, *,
                        by: str, request: dict) -> None:
        """Commit the deferred events with the record of their answer (``CommitRaced`` if a
        duplicate committed first: its answer is then the one to give)."""
        now = self.now()
        record = self._find(IdempotentRequest, call.record_id)
        if record is not None and record.is_current(now):
            raise CommitRaced()
        sealed = self._seal(call, seal_key, answer.to_bytes())
        if record is None:
            record = IdempotentRequest._create(
                IdempotentRequest.Recorded, id=call.record_id, request_digest=call.request_digest,
                sealed_answer=sealed, by=by, request=request, timestamp=now)
        else:  # the previous answer expired: the key answers this new request
            record.answer_again(call.request_digest, sealed, by=by, request=request, at=now)
        self.commit(batch, record)

    def _cipher(self, call: IdempotentCall, seal_key: bytes) -> AESGCM:
        material = call.seal_context + b"\0" + seal_key
        return AESGCM(self.digester.digest("keyledger:idempotency-seal\0" + material.hex()))

    def _seal(self, call: IdempotentCall, seal_key: bytes, plain: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher(call, seal_key).encrypt(nonce, plain, call.record_id.bytes)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def _open(self, record: IdempotentRequest, call: IdempotentCall, seal_key: bytes) -> bytes:
        data = base64.b64decode(record.sealed_answer)
        return self._cipher(call, seal_key).decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:],
                                                    call.record_id.bytes)
