"""The audit chain and its signed checkpoints.

The chain covers the event store's records themselves, byte for byte:

    hash(n) = SHA-256(hash(n-1) ‖ "\\n" ‖ n ‖ "\\n" ‖ originator id (hex) ‖ "\\n" ‖ version ‖ "\\n"
                      ‖ topic ‖ "\\n" ‖ stored state bytes)

with ``hash(0)`` = 64 zeros and ``n`` the record's position in the log. Hashing the stored
bytes (not a decoded or abridged copy) means any change to a stored event is caught — a
planted digest included — and the check runs at the speed of a raw read, with no decoding.

A checkpoint signs the chain's head with Ed25519. Checkpoints are events of one stream
(``AuditLedger``), numbered 1, 2, 3…; each names the signature of the one before, so a
checkpoint cannot be removed from the middle without breaking the next one's link.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate

GENESIS = "0" * 64
CHECKPOINT_FORMAT = "keyledger-audit-checkpoint/v1"


def chain_hash(prev_hash: str, seq: int, originator_id: UUID | str, version: int, topic: str,
               state: bytes) -> str:
    """The chain's hash after the stored record at position ``seq``."""
    if not isinstance(originator_id, str):
        originator_id = originator_id.hex
    h = hashlib.sha256(f"{prev_hash}\n{seq}\n{originator_id}\n{version}\n{topic}\n".encode())
    h.update(state)
    return h.hexdigest()


def checkpoint_message(*, number: int, seq: int, head_hash: str, previous: str, signed_at: str) -> str:
    """The exact text a checkpoint's signature covers (UTF-8, no trailing newline)."""
    return (f"{CHECKPOINT_FORMAT} number={number} seq={seq} hash={head_hash} "
            f"previous={previous} signed_at={signed_at}")


def signature_digest(signature: str) -> str:
    """What the next checkpoint names as ``previous``: SHA-256 of the base64 signature text."""
    return hashlib.sha256(signature.encode("ascii")).hexdigest()


class AuditLedger(LedgerAggregate):
    """The stream of signed checkpoints; there is one per store."""

    class Opened(LedgerAggregate.Created):
        public_key_sha256: str

    class CheckpointSigned(LedgerAggregate.Event):
        number: int
        seq: int
        hash: str
        previous: str
        signed_at: str
        message: str
        signature: str
        public_key_sha256: str

    @staticmethod
    def create_id(**_: object) -> UUID:
        return uuid5(NAMESPACE_URL, "keyledger:audit-ledger")

    @event(Opened)
    def __init__(self, public_key_sha256: str, by: str, request: dict) -> None:
        self.public_key_sha256 = public_key_sha256
        self.checkpoints = 0
        self.last_seq = 0
        self.last_hash = GENESIS
        self.last_signature_digest = "-"

    def record(self, *, seq: int, head_hash: str, signed_at: str, signature: str, message: str,
               public_key_sha256: str, by: str, at: datetime) -> None:
        self._record(number=self.checkpoints + 1, seq=seq, hash=head_hash,
                     previous=self.last_signature_digest, signed_at=signed_at, message=message,
                     signature=signature, public_key_sha256=public_key_sha256, by=by, request={},
                     timestamp=at)

    @event(CheckpointSigned)
    def _record(self, number: int, seq: int, hash: str, previous: str, signed_at: str, message: str,
                signature: str, public_key_sha256: str, by: str, request: dict, timestamp: datetime) -> None:
        self.checkpoints = number
        self.last_seq = seq
        self.last_hash = hash
        self.last_signature_digest = signature_digest(signature)
