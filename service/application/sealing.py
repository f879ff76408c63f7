"""Sealed records: every event the service stores carries an HMAC of itself, and nothing the
service did not seal is applied once sealing has begun.

* ``SealingMapper`` seals each record as it is encoded — before ``save()``, in the process that
  writes, with no extra round trip — and checks the seal of each record it decodes (an aggregate
  whose stream holds a record with a broken seal cannot be loaded).
* ``RecordRules`` judges a stored record as read from the store, whatever the store returned:
  values of the wrong type (a state made TEXT, a NULL, a garbage id), a seal that does not
  verify, or no seal where one is due. Records before the first sealed one (written before
  sealing began) need none: the signed checkpoints cover them, as before. Records up to an
  accepted baseline (``AuditLedger.BaselineAccepted``) are vouched for by its signature.

The seal's key is derived from the audit signing key (``service.credentials.record_seal_key``):
instances that share a store already share that key, and the store never holds it.
"""

from __future__ import annotations

import hmac
from binascii import hexlify
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    EventStore,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
    find_id_convertor,
)
from eventsourcing.utils import get_topic, resolve_topic

try:  # a faster JSON parser for reading the log (a rebuild decodes every record); optional
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - a dependency; the library's decoder does the same, slower
    _fast_loads = None

from service.domain.audit import SEAL_HEX, SEAL_OPEN, SEAL_TAIL, has_seal, seal, seal_status, sealer
from service.domain.errors import TamperedRecord


def id_hex(originator_id: UUID | str) -> str:
    return originator_id.hex if isinstance(originator_id, UUID) else originator_id


def kind_of(value: Any) -> str:
    """A stored value's type, as a person reads it (TEXT, NULL, an integer…)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "TEXT"
    if isinstance(value, (bytes, memoryview)):
        return "bytes"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return type(value).__name__


class SealingMapper(Mapper):
    """The library's mapper, sealing what it encodes and checking the seal of what it decodes."""

    def __init__(self, transcoder: Transcoder, key: bytes) -> None:
        super().__init__(transcoder)
        self.key = sealer(key)  # keyed once; copied for each record
        self._names = getattr(transcoder, "names", None)  # the JSON transcoder's transcodings by name
        # Per (topic, type of id): the event class, its id's convertor, its class version.
        self._decodings: dict[tuple[str, type], tuple[Any, Any, int]] = {}

    def to_stored_event(self, domain_event: DomainEventProtocol) -> StoredEvent:
        # The library's Mapper.to_stored_event (no compressor, no cipher here), sealed.
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        body = self.transcoder.encode(event_state)
        return StoredEvent(originator_id=originator_id, originator_version=originator_version, topic=topic,
                           state=seal(self.key, id_hex(originator_id), originator_version, topic, body))

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol:
        state = stored_event.state
        if not isinstance(state, bytes):
            raise TamperedRecord(f"its state is {kind_of(state)}, not bytes")
        oid, version, topic = stored_event.originator_id, stored_event.originator_version, stored_event.topic
        if seal_status(self.key, id_hex(oid), version, topic, state) is False:
            raise TamperedRecord("its seal does not verify")
        return self.decode_opened(oid, version, topic, state)

    def decode_opened(self, originator_id: UUID | str, version: int, topic: str, state: bytes) -> DomainEventProtocol:
        """Decode a record whose seal has been judged (its seal, if any, is dropped): the library's
        ``Mapper.to_domain_event`` (no compressor, no cipher here) without building a second
        stored record."""
        decoding = self._decodings.get((topic, type(originator_id)))
        if decoding is None:
            cls = resolve_topic(topic)
            decoding = self._decodings[(topic, type(originator_id))] = (
                cls, find_id_convertor(cls, type(originator_id)), getattr(cls, "class_version", 1))
        cls, convert_id, class_version = decoding
        try:
            event_state: dict[str, Any] = self.decode_state(state)
            event_state.pop("_mac", None)
        except Exception as error:
            raise MapperDeserialisationError(f"Failed to deserialise the state of {topic} {originator_id} "
                                             f"version {version}: {error}") from error
        event_state["originator_id"] = convert_id(originator_id)
        event_state["originator_version"] = version
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return domain_event


    def decode_state(self, state: bytes) -> Any:
        """The transcoder's ``decode(state)``: parsed by orjson and revived as the library's JSON
        transcoder revives (``{"_type_": name, "_data_": data}`` objects, innermost first, become
        their values), about three times as fast; anything orjson refuses or that does not revive
        (NaN, an unknown type name) goes to the transcoder itself, and so does a state holding a
        non-integer number (orjson reads an integer beyond 64 bits as one; events hold few)."""
        names = self._names
        if _fast_loads is None or names is None:
            return self.transcoder.decode(state)
        try:
            value = _fast_loads(state)
            return _revive(value, names) if type(value) is dict else value
        except Exception:  # noqa: BLE001 - the library's decoder says what is wrong, as before
            return self.transcoder.decode(state)


def _revive(obj: dict, names: dict[str, Any]) -> Any:
    """``JSONTranscoder._decode_obj`` applied bottom-up to a parsed object, as ``object_hook`` is."""
    for name, value in obj.items():
        kind = type(value)
        if kind is dict:
            obj[name] = _revive(value, names)
        elif kind is list:
            obj[name] = _revive_list(value, names)
        elif kind is float:  # orjson reads an integer beyond 64 bits as a float: let json read floats
            raise ValueError("a number: decoded by the transcoder")
    if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
        return names[obj["_type_"]].decode(obj["_data_"])  # unknown: KeyError, and the transcoder says it
    return obj


def _revive_list(items: list, names: dict[str, Any]) -> list:
    for i, value in enumerate(items):
        kind = type(value)
        if kind is dict:
            items[i] = _revive(value, names)
        elif kind is list:
            items[i] = _revive_list(value, names)
        elif kind is float:
            raise ValueError("a number: decoded by the transcoder")
    return items


def _sealed(record: StoredEvent) -> bool:
    return isinstance(record.state, bytes) and has_seal(record.state)


class SealedEventStore(EventStore):
    """An aggregate's stream, loaded: once one of its records is sealed, every later one must be
    (a record without a seal after a sealed one was written outside the service). Read after a
    snapshot (``gt``), every record must be sealed: snapshots are (``SealedSnapshotStore``)."""

    def get(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
            limit: int | None = None) -> Iterator[DomainEventProtocol]:
        records = self.recorder.select_events(originator_id=originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        return self._checked(records, sealed_seen=gt is not None and not desc, ordered=not desc)

    def _checked(self, records: Iterable[StoredEvent], *, sealed_seen: bool, ordered: bool
                 ) -> Iterator[DomainEventProtocol]:
        for record in records:
            if _sealed(record):
                sealed_seen = True
            elif sealed_seen and ordered:
                raise TamperedRecord(f"version {record.originator_version} of {record.originator_id} has no seal, "
                                     "though an earlier one has: written outside the service")
            yield self.mapper.to_domain_event(record)


class SealedSnapshotStore(EventStore):
    """Snapshots are a cache: one without a valid seal is ignored (the aggregate is replayed from
    its events instead), never trusted."""

    def get(self, originator_id: Any, *, gt: int | None = None, lte: int | None = None, desc: bool = False,
            limit: int | None = None) -> Iterator[DomainEventProtocol]:
        records = self.recorder.select_events(originator_id=originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        return self._genuine(records)

    def _genuine(self, records: Iterable[StoredEvent]) -> Iterator[DomainEventProtocol]:
        for record in records:
            if not _sealed(record):
                continue
            try:
                yield self.mapper.to_domain_event(record)
            except (TamperedRecord, ValueError):
                continue


class RecordRules:
    """What a stored record must be, by its position: see the module's docstring."""

    def __init__(self, key: bytes) -> None:
        self.key = sealer(key)
        self._raw_key = key
        self.sealed_from: int | None = None  # records at or after this seq must be sealed
        self.accepted_through = 0  # records up to this seq are vouched for by a signed baseline

    def copy(self) -> RecordRules:
        rules = RecordRules(self._raw_key)
        rules.sealed_from, rules.accepted_through = self.sealed_from, self.accepted_through
        return rules

    def seals_due_after(self, seq: int) -> None:
        """Every record after ``seq`` must be sealed (a sealed checkpoint signed there)."""
        if self.sealed_from is None or seq + 1 < self.sealed_from:
            self.sealed_from = seq + 1

    def judge(self, seq: Any, originator_id: Any, version: Any, topic: Any, state: Any) -> tuple[str | None, bytes]:
        """(why the record is not one the service wrote, or None; its state as bytes, to decode
        with ``SealingMapper.decode_opened``). Never raises, whatever the store returned."""
        if type(originator_id) is str and len(originator_id) == 32 and _is_hex(originator_id):
            oid = originator_id  # SQLite's (the common case first)
        elif isinstance(originator_id, UUID):
            oid = originator_id.hex
        elif isinstance(originator_id, str) and len(originator_id) == 32 and _is_hex(originator_id):
            oid = originator_id
        else:
            return f"its originator id is {kind_of(originator_id)} {_short(originator_id)}, not a UUID", b""
        if type(version) is not int:
            return f"its version is {kind_of(version)}, not an integer", b""
        if not isinstance(topic, str):
            return f"its topic is {kind_of(topic)}, not TEXT", b""
        if not isinstance(state, bytes):
            if isinstance(state, memoryview):
                state = bytes(state)
            else:
                return f"its state is {kind_of(state)}, not bytes", b""
        holds = seal_status(self.key, oid, version, topic, state)
        accepted = seq <= self.accepted_through
        if holds is None:
            if self.sealed_from is not None and seq >= self.sealed_from and not accepted:
                return (f"it has no seal, though every record since seq {self.sealed_from} is sealed: "
                        "written outside the service"), state
            return None, state
        if not holds:
            if accepted:
                return None, state
            return "its seal does not verify: written or altered outside the service", state
        if self.sealed_from is None or seq < self.sealed_from:
            self.sealed_from = seq
        return None, state

    def judge_rows(self, rows: Iterable[Sequence[Any]]) -> list[tuple]:
        """Rows (seq, originator id, version, topic, state) as the store returned them, each judged as
        ``judge`` judges it, in order: (seq, originator id as 32 hex digits, version, topic, state,
        why it is refused or None, its state as bytes, the originator id as returned) — the records of
        ``LedgerApplication.read_judged``. The common row (an int, 32 hex digits, an int, TEXT and
        bytes whose seal holds: every row of a bulk pass on SQLite) is judged inline, its seal computed
        as ``seal_status`` computes it (no call per row, one hash update, the header's tail formatted once
        per version and topic);
        any other row — a seal that does not hold or is missing, a value of another type — by
        ``judge`` itself, so every verdict is ``judge``'s."""
        judged: list[tuple] = []
        append, judge_one = judged.append, self.judge
        new_inner, new_outer, compare = self.key._inner.copy, self.key._outer.copy, hmac.compare_digest
        tail, opening, opening_size, hex_size = SEAL_TAIL, SEAL_OPEN, len(SEAL_OPEN), SEAL_HEX
        digest_size = hex_size // 2
        heads: dict[tuple[int, str], bytes] = {}
        sealed_from = self.sealed_from
        for row in rows:
            seq, oid, version, topic, state = row
            if (type(state) is bytes and type(oid) is str and type(version) is int and type(topic) is str
                    and type(seq) is int and len(oid) == 32):
                end = len(state) - tail  # where the seal's member starts, after a ','
                if end > 1 and state[end - 1] == 0x2C and state[-2:] == b'"}' and state[end:end + opening_size] == opening:
                    try:
                        int(oid, 16)  # _is_hex
                    except ValueError:
                        pass
                    else:
                        head = heads.get((version, topic))  # "\n{version}\n{topic}\n": few of them
                        if head is None:
                            head = heads[(version, topic)] = f"\n{version}\n{topic}\n".encode()
                        inner = new_inner()
                        inner.update(b"".join((oid.encode(), head, state[:end - 1], b"}")))
                        outer = new_outer()
                        outer.update(inner.digest())
                        if compare(hexlify(outer.digest()[:digest_size]), state[-hex_size - 2:-2]):
                            if sealed_from is None or seq < sealed_from:
                                sealed_from = self.sealed_from = seq
                            append((seq, oid, version, topic, state, None, state, oid))
                            continue
            problem, body = judge_one(seq, oid, version, topic, state)
            sealed_from = self.sealed_from
            append((seq, oid.hex if isinstance(oid, UUID) else oid, version, topic, state, problem, body, oid))
        return judged


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
