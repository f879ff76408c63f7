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

Every record the service writes is also *sealed*: its stored state (a JSON object) ends with
``"_mac":"<32 hex>"``, an HMAC-SHA256 (first 128 bits) under a key the store never holds, over

    "keyledger-record-seal/v1\n" ‖ originator id (hex) ‖ "\n" ‖ version ‖ "\n" ‖ topic ‖ "\n"
    ‖ the state without its seal

so a record written or rewritten by anyone without the key — appended at the end, after the
last checkpoint, in a consistent rewrite — has no valid seal, and is found without waiting
for a checkpoint. A seal cannot say where in the log its record stands (the position is
given by the database at insert); order, deletions and truncation are the chain's, the
checkpoints' and the tail mark's (``service.checkpoints``).

A baseline (``AuditLedger.BaselineAccepted``) is an operator's signed decision to accept the
store as it stands — restored from a backup, say — up to a position: the records up to it
are vouched for by that signature, and evidence from before it (checkpoint copies and tail
marks kept outside the store) no longer applies.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate

GENESIS = "0" * 64
CHECKPOINT_FORMAT = "keyledger-audit-checkpoint/v1"
BASELINE_FORMAT = "keyledger-audit-baseline/v1"
SEAL_FORMAT = b"keyledger-record-seal/v1\n"
SEAL_OPEN = _SEAL_OPEN = b'"_mac":"'
SEAL_HEX = _SEAL_HEX = 32  # 128 bits of HMAC-SHA256
SEAL_TAIL = _SEAL_TAIL = len(_SEAL_OPEN) + _SEAL_HEX + 2  # '"_mac":"' + tag + '"}'
_SEAL_OPEN_SIZE = len(_SEAL_OPEN)


class SealKey:
    """HMAC-SHA256 (RFC 2104) keyed once for seals, the label already hashed in: each seal then
    costs two hash copies and no Python-level HMAC object (about half the time of ``hmac.new``)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._inner.update(SEAL_FORMAT)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def tag(self, *parts: bytes | memoryview) -> bytes:
        """The seal (32 hex digits, ASCII) of the concatenation of ``parts``."""
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:_SEAL_HEX].encode("ascii")


def sealer(key: bytes) -> SealKey:
    return SealKey(key)


def seal_tag(key: bytes | SealKey, originator_id: str, version: int, topic: str, body: bytes) -> bytes:
    """The seal of a stored record: 32 hex digits (ASCII bytes). ``originator_id`` in hex;
    ``key`` the key's bytes, or a ``sealer(key)``."""
    keyed = SealKey(key) if isinstance(key, bytes) else key
    return keyed.tag(f"{originator_id}\n{version}\n{topic}\n".encode(), body)


def seal(key: bytes | SealKey, originator_id: str, version: int, topic: str, body: bytes) -> bytes:
    """``body`` (a JSON object's bytes) with its seal as the object's last member."""
    tag = seal_tag(key, originator_id, version, topic, body)
    return body[:-1] + (b"," if len(body) > 2 else b"") + _SEAL_OPEN + tag + b'"}'


def unseal(state: bytes) -> tuple[bytes, bytes | None]:
    """(the state without its seal, the seal) — or (state, None) for a record with no seal
    (written before records were sealed)."""
    if len(state) < _SEAL_TAIL + 1 or state[-2:] != b'"}' or state[-_SEAL_TAIL:-_SEAL_TAIL + len(_SEAL_OPEN)] != _SEAL_OPEN:
        return state, None
    head = state[:-_SEAL_TAIL]
    tag = state[-_SEAL_HEX - 2:-2]
    if head == b"{":
        return b"{}", tag
    if head.endswith(b","):
        return head[:-1] + b"}", tag
    return state, b""  # something that ends like a seal but is not one: a seal that cannot verify


def has_seal(state: bytes) -> bool:
    """Whether a stored state ends with a seal (valid or not): a look at its last bytes."""
    return (len(state) > _SEAL_TAIL and state[-2:] == b'"}'
            and state[-_SEAL_TAIL:-_SEAL_TAIL + len(_SEAL_OPEN)] == _SEAL_OPEN)


def seal_status(key: SealKey, originator_id: str, version: int, topic: str, state: bytes) -> bool | None:
    """None when ``state`` has no seal; else whether its seal holds. ``key`` is a ``sealer(key)``.
    Hashes the sealed state in place (no copy of it is made); ``has_seal`` and ``SealKey.tag``
    inlined (every record of a rebuild comes through here)."""
    size = len(state)
    end = size - _SEAL_TAIL  # the seal's member starts here; before it, ',' or '{'
    if end <= 0 or state[-2:] != b'"}' or state[end:end + _SEAL_OPEN_SIZE] != _SEAL_OPEN:
        return None
    inner = key._inner.copy()
    inner.update(f"{originator_id}\n{version}\n{topic}\n".encode())
    if state[end - 1] == 0x2C:  # ','
        inner.update(memoryview(state)[:end - 1])
        inner.update(b"}")
    elif end == 1:  # '{' alone: the seal of an empty object
        inner.update(b"{}")
    else:
        return False
    outer = key._outer.copy()
    outer.update(inner.digest())
    return hmac.compare_digest(outer.hexdigest()[:_SEAL_HEX].encode("ascii"), state[-_SEAL_HEX - 2:-2])


def seal_holds(key: bytes | SealKey, originator_id: str, version: int, topic: str, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(seal_tag(key, originator_id, version, topic, body), tag)


def chain_hash(prev_hash: str, seq: int, originator_id: UUID | str, version: int, topic: str,
               state: bytes) -> str:
    """The chain's hash after the stored record at position ``seq``. Values of the wrong type
    (a state made TEXT, a NULL: tampering, reported by the integrity check) hash as their
    ``repr`` after a marker no genuine record has, so the chain never fails to compute."""
    if isinstance(originator_id, UUID):
        originator_id = originator_id.hex
    h = hashlib.sha256(f"{prev_hash}\n{seq}\n{originator_id}\n{version}\n{topic}\n"
                       .encode("utf-8", "surrogatepass"))
    if isinstance(state, bytes):
        h.update(state)
    else:
        h.update(b"\x00not bytes: " + repr(state).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def checkpoint_message(*, number: int, seq: int, head_hash: str, previous: str, signed_at: str) -> str:
    """The exact text a checkpoint's signature covers (UTF-8, no trailing newline)."""
    return (f"{CHECKPOINT_FORMAT} number={number} seq={seq} hash={head_hash} "
            f"previous={previous} signed_at={signed_at}")


def baseline_message(*, seq: int, head_hash: str, accepted_at: str, by: str, reason: str) -> str:
    """The exact text a baseline's signature covers (UTF-8, no trailing newline)."""
    reason_sha256 = hashlib.sha256(reason.encode("utf-8")).hexdigest()
    return (f"{BASELINE_FORMAT} seq={seq} hash={head_hash} accepted_at={accepted_at} by={by} "
            f"reason_sha256={reason_sha256}")


class RefusedRecord:
    """What the projections receive in place of a stored record the service refused to apply
    (unsealed where a seal is due, a seal that does not verify, values of the wrong type): the
    audit trail shows it, and nothing else takes effect."""

    def __init__(self, originator_id: object, originator_version: object, topic: object, reason: str,
                 timestamp: datetime) -> None:
        self.originator_id = originator_id
        self.originator_version = originator_version
        self.topic = topic if isinstance(topic, str) else repr(topic)
        self.reason = reason
        self.timestamp = timestamp
        self.by = "system:unknown"


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

    class BaselineAccepted(LedgerAggregate.Event):
        seq: int
        hash: str
        accepted_at: str
        reason: str
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

    def accept_baseline(self, *, seq: int, head_hash: str, accepted_at: str, reason: str, message: str,
                        signature: str, public_key_sha256: str, by: str, at: datetime) -> None:
        self._accept(seq=seq, hash=head_hash, accepted_at=accepted_at, reason=reason, message=message,
                     signature=signature, public_key_sha256=public_key_sha256, by=by, request={},
                     timestamp=at)

    @event(BaselineAccepted)
    def _accept(self, seq: int, hash: str, accepted_at: str, reason: str, message: str, signature: str,
                public_key_sha256: str, by: str, request: dict, timestamp: datetime) -> None:
        self.last_seq = seq  # the next checkpoint chains on from the accepted head
        self.last_hash = hash
