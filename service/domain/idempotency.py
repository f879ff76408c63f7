"""Idempotent requests: the answer to a POST sent with an ``Idempotency-Key``, recorded with its command.

An ``IdempotentRequest`` is saved in the same ``save()`` as the aggregates its command changed,
so the answer exists exactly when the change does: a process killed after the commit leaves
an answer a retry can be given, and two duplicates racing to commit conflict on the record's
deterministic id (the loser's whole ``save()`` rolls back, its change included).

The record holds no secret and nothing a reader of the store can use: ``request_digest`` is a
keyed digest of what was asked (method, path, body), and ``sealed_answer`` is the answer
encrypted under a key the store never holds (see ``service.application.idempotency``). A key
used again after the retention period answers a new request: the record gets another
``Answered`` event, its version guarding the race as the creation did.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate

RETENTION = timedelta(hours=24)  # how long a retry gets the first answer


def request_record_id(scope_digest: str) -> UUID:
    """The record's id from a keyed digest of the caller and their Idempotency-Key."""
    return uuid5(NAMESPACE_URL, f"keyledger:idempotent-request:{scope_digest}")


class IdempotentRequest(LedgerAggregate):
    class Recorded(LedgerAggregate.Created):
        request_digest: str
        sealed_answer: str

    class Answered(LedgerAggregate.Event):
        request_digest: str
        sealed_answer: str

    @event(Recorded)
    def __init__(self, request_digest: str, sealed_answer: str, by: str, request: dict) -> None:
        self.request_digest = request_digest
        self.sealed_answer = sealed_answer

    @property
    def answered_at(self) -> datetime:
        return self.modified_on

    def is_current(self, now: datetime) -> bool:
        """Whether a retry at ``now`` still gets this answer."""
        return now < self.answered_at + RETENTION

    def answer_again(self, request_digest: str, sealed_answer: str, *, by: str, request: dict,
                     at: datetime) -> None:
        """The key answers a new request once the previous answer has expired."""
        self._answer(request_digest=request_digest, sealed_answer=sealed_answer, by=by, request=request,
                     timestamp=at)

    @event(Answered)
    def _answer(self, request_digest: str, sealed_answer: str, by: str, request: dict,
                timestamp: datetime) -> None:
        self.request_digest = request_digest
        self.sealed_answer = sealed_answer
