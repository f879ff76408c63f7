"""Audit trail: one row per event, chained by SHA-256, indexed for the security team.

``hash`` is the chain over the event store's records as stored (``service.domain.audit``):
``SHA-256(prev_hash ‖ seq ‖ originator ‖ version ‖ topic ‖ stored state)``, the first
``prev_hash`` 64 zeros. The integrity check recomputes it from the event store and compares
it with these rows. ``data`` holds an event's facts without digests or secrets.

All of the audit trail's SQL is in this module.
"""

from __future__ import annotations

import base64
import hashlib
import json
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any
from uuid import NAMESPACE_URL, UUID

from eventsourcing.utils import resolve_topic

from projections.projection import Projection
from projections.store import ViewStore, upsert
from projections.timefmt import rfc3339
from service.domain.audit import GENESIS, chain_hash
from service.domain.keys import ApiKey

_NOT_DATA = {"originator_id", "originator_version", "originator_topic", "timestamp", "by", "request"}
_SECRET_LIKE = {"digest", "digests", "previous_digest", "token_digest", "secret_digest",  # not secrets,
                "request_digest", "sealed_answer",
                "sealed_secret", "previous_sealed_secret"}  # but of no use here (a retry's answer: sealed)
_LEFT_OUT = frozenset(_NOT_DATA | _SECRET_LIKE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# (seq, originator id, version, topic, state) of the records after a position, as stored.
StoredRecords = Callable[[int, int], Sequence[tuple]]


_SCALARS = frozenset((str, int, float, bool, type(None)))

try:
    from orjson import OPT_SORT_KEYS as _SORTED
    from orjson import dumps as _orjson_dumps
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - a dependency
    _loads, _orjson_dumps, _SORTED = json.loads, None, 0


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:  # most of an event's values: as they are
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    return value


def event_type(event: Any) -> str:
    """``ApiKey.Revoked`` and the like: the aggregate and the event's class name."""
    return type(event).__qualname__


def microseconds(value: datetime) -> int:
    """Microseconds since 1970 (UTC): the sortable form of a time the view filters on."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


class AuditTrail(Projection):
    """One row per stored event, with the chain hash of the stored record itself
    (``service.domain.audit.chain_hash``), read through ``stored_records`` — the audit view
    is the witness an integrity check compares the event store against, record by record.

    An event's ``app_id`` is its own ``app_id`` attribute, else an app's ``slug``, else the app
    its aggregate was first recorded under — so new event types that carry ``app_id`` (or
    belong to an aggregate that did) appear under their app with no change here."""

    name = "audit"
    reads_records = True  # the chain is hashed over the stored records
    tables = ("audit_events", "audit_aggregate_apps", "audit_app_owners")
    ddl = (
        """CREATE TABLE IF NOT EXISTS audit_events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, occurred_at TEXT NOT NULL,
            at_us INTEGER NOT NULL, actor_kind TEXT NOT NULL, actor_id TEXT NOT NULL, app_id TEXT,
            owner_id TEXT, key_id TEXT, aggregate_id TEXT NOT NULL, data TEXT NOT NULL,
            request TEXT NOT NULL, hash TEXT NOT NULL, prev_hash TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS audit_aggregate_apps (
            aggregate_id TEXT PRIMARY KEY, app_id TEXT NOT NULL)""",
        "CREATE TABLE IF NOT EXISTS audit_app_owners (app_id TEXT PRIMARY KEY, owner_id TEXT NOT NULL)",
    )
    indexes = (
        "CREATE INDEX IF NOT EXISTS audit_by_key ON audit_events (key_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_app ON audit_events (app_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_owner ON audit_events (owner_id, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_events (actor_id, actor_kind, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_type ON audit_events (type, seq)",
        "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_events (at_us, seq)",
    )
    _LEGACY_TABLES = ("audit_key_apps",)  # views from before the chain covered stored records

    def __init__(self, stored_records: StoredRecords,
                 on_head: Callable[[int, str], None] | None = None) -> None:
        self.stored_records = stored_records
        self.on_head = on_head  # told the chain's head after each batch (the tail mark)
        # Facts that never change once recorded (an aggregate's app, an app's owner), kept
        # in memory so most events need no look-up; bounded, re-read from the view on a miss.
        self._apps: dict[str, str | None] = {}
        self._owners: dict[str, str | None] = {}
        self._ids: dict[str, str] = {}  # an originator id's 32 hex digits -> its UUID text (bulk passes)
        self._prefetched: tuple[Any, Any] | None = None  # (db, the head's cursor): see prefetch()
        # (the audit record, its app's owner) of each event of the batch just written, by position:
        # for a view applied after this one in the same transaction (projections.webhooks). A bulk
        # page's records are made only when asked for (``_Recent``).
        self.recent: Any = {}

    def create(self, db: Any, *, with_indexes: bool = True) -> None:
        columns = db.columns("audit_events")
        if columns and "owner_id" not in columns:  # an older view: its hashes meant something else
            for table in (*self.tables, *self._LEGACY_TABLES):
                db.execute(f"DROP TABLE IF EXISTS {table}")
            db.execute("DELETE FROM projection_tracking WHERE projection = ?", (self.name,))
        super().create(db, with_indexes=with_indexes)

    def side_build(self) -> None:
        self.on_head = None  # the tail mark is the main process's: told once the rows are adopted

    def adopt(self, db: Any, schema: str) -> None:
        super().adopt(db, schema)
        head = db.execute("SELECT seq, hash FROM main.audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        if head is not None and self.on_head is not None:
            self.on_head(head[0], head[1])

    def process(self, db: Any, position: int, event: Any) -> None:
        self.process_batch(db, [(position, event)])

    def prefetch(self, db: Any) -> None:
        """Ask for the chain's head now: in a pipelined write it travels with the positions'
        read, and the next batch of this transaction reads the answer without a round trip."""
        self._prefetched = (db, db.execute(_HEAD))

    def process_batch(self, db: Any, batch: Sequence[tuple[int, Any]]) -> None:
        self._write(db, batch, None)

    def process_page(self, db: Any, page: Sequence[tuple[int, Any]]) -> None:
        """A page of a bulk pass: the chain hashed over the stored records the page was decoded
        from (no second read of the log), the aggregate → app and app → owner facts written once
        per page, every row in one ``executemany``. Read from judged records (``Page.judged``),
        each row is made from the stored JSON itself (``_stored_record``), no event object built;
        a record it cannot read so (refused, of a later shape, a value of a type it does not know)
        is decoded and made by ``audit_record``, as live."""
        facts = _Facts(db)
        if getattr(page, "judged", None) is not None:
            self._write_judged(facts, page)
        else:
            self._write(facts, page, getattr(page, "records", None))
        facts.flush()

    def _write_judged(self, db: Any, page: Any) -> None:
        judged = page.judged
        if not judged:
            return
        head = db.execute(_HEAD).fetchone()
        prev_hash = head[0] if head else GENESIS
        if len(self._apps) > 200_000 or len(self._owners) > 200_000 or len(self._ids) > 200_000:
            self._apps.clear()
            self._owners.clear()
            self._ids.clear()
        apps, owners, topics = self._apps, self._owners, _TOPICS
        rows: list[tuple] = []
        parts: list[Any] = []  # by row: its (data, request) when made from stored JSON, else its record
        self.recent = _Recent(rows, parts)
        add = _stored_rows(db, apps, owners, self._ids, rows, parts)
        state_of = getattr(page, "state", None) or _parsed(judged)
        for i, stored in enumerate(judged):
            position, state = stored[0], stored[4]
            if type(state) is bytes and type(stored[1]) is str:  # ``chain_hash``, inlined
                sha = sha256(f"{prev_hash}\n{position}\n{stored[1]}\n{stored[2]}\n{stored[3]}\n"
                             .encode("utf-8", "surrogatepass"))
                sha.update(state)
                digest = sha.hexdigest()
            else:
                digest = chain_hash(prev_hash, position, stored[1], stored[2], stored[3], state)
            if stored[5] is None:
                shape = topics.get(stored[3])
                if shape is None:
                    shape = topics[stored[3]] = _shape(stored[3])
                if shape and add(position, stored[1], stored[2], state_of(i), shape, digest, prev_hash):
                    prev_hash = digest
                    continue
            event = page.event(i)
            record = audit_record(db, position, event, apps, owners)
            rows.append(_live_row(record, microseconds(event.timestamp), digest, prev_hash))
            record["hash"], record["prev_hash"] = digest, prev_hash
            parts.append(record)
            prev_hash = digest
        db.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if self.on_head is not None:
            self.on_head(judged[-1][0], prev_hash)

    def _write(self, db: Any, batch: Sequence[tuple[int, Any]], records: dict[int, tuple] | None) -> None:
        if not batch:
            return
        first, last = batch[0][0], batch[-1][0]
        if records is None:
            records = {r[0]: r for r in self.stored_records(first - 1, last - first + 1)}
        prefetched, self._prefetched = self._prefetched, None
        head = prefetched[1] if prefetched is not None and prefetched[0] is db else db.execute(_HEAD)
        row = head.fetchone()
        prev_hash = row[0] if row else GENESIS
        if len(self._apps) > 200_000 or len(self._owners) > 200_000:
            self._apps.clear()
            self._owners.clear()
        rows = []
        recent: dict[int, tuple[dict, str | None]] = {}
        self.recent = recent
        for position, event in batch:
            stored = records.get(position)
            if stored is None:
                raise RuntimeError(f"the stored record at position {position} could not be read back")
            digest = chain_hash(prev_hash, *stored)
            record = audit_record(db, position, event, self._apps, self._owners)
            recent[position] = (record, record["owner_id"])  # the same dict: hashes added below
            rows.append(_live_row(record, microseconds(event.timestamp), digest, prev_hash))
            record["hash"], record["prev_hash"] = digest, prev_hash
            prev_hash = digest
        db.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if self.on_head is not None:  # a hash of the stored records: true whether this commits or not
            self.on_head(last, prev_hash)


_HEAD = "SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1"


def _live_row(record: dict, at_us: int, digest: str, prev_hash: str) -> tuple:
    """The ``audit_events`` row of an ``audit_record`` (its ``owner_id`` taken out of it): what
    the live path writes, and what a row made from stored JSON (``_stored_rows``) must equal."""
    actor = record["actor"]
    return (record["seq"], record["id"], record["type"], record["occurred_at"], at_us, actor["kind"], actor["id"],
            record["app_id"], record.pop("owner_id"), record["key_id"], record["aggregate_id"],
            _data_json(record["data"]), _request_json(record["request"]), digest, prev_hash)
_AGGREGATE_APP = upsert("audit_aggregate_apps", ("aggregate_id", "app_id"), ("aggregate_id",), update=())
_APP_OWNER = upsert("audit_app_owners", ("app_id", "owner_id"), ("app_id",))
# One encoder each, made once (``json.dumps`` with options makes a new one per call).
_json_data = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
_json_request = json.JSONEncoder(sort_keys=True).encode


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        return any(_has_float(v) for v in value.values())
    if kind is list or kind is tuple:
        return any(_has_float(v) for v in value)
    return kind is float or isinstance(value, float)


def _data_json(value: Any) -> str:
    """The ``data`` (and ``request``) column's text: compact JSON, keys sorted, UTF-8 — by orjson
    (a sixth of the json module's time) unless the value holds a float (orjson writes NaN as null,
    and spells some numbers otherwise) or anything orjson refuses (non-text keys, lone surrogates,
    types it does not know): then by the json module. The same value always gets the same text,
    read from the stored JSON (``_stored_record``, no floats there) or from a decoded event."""
    if _orjson_dumps is not None and not _has_float(value):
        try:
            return _orjson_dumps(value, option=_SORTED).decode()
        except (TypeError, ValueError):
            pass
    return _json_data(value)


def _float_free_json(value: Any, otherwise: Callable[[Any], str]) -> str:
    """``_data_json`` (``otherwise``: ``_json_data``) or ``_request_json`` (``_json_request``) of a
    value known to hold no float (read by ``_stored_record``)."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value, option=_SORTED).decode()
        except (TypeError, ValueError):
            pass
    return otherwise(value)


def _request_json(value: dict) -> str:
    if _orjson_dumps is not None and not _has_float(value):
        try:
            return _orjson_dumps(value, option=_SORTED).decode()
        except (TypeError, ValueError):
            pass
    return _json_request(value)
_EVENT_ID_NAMESPACE = NAMESPACE_URL.bytes


class _Facts:
    """The view store for a page of a bulk pass: the aggregate → app and app → owner facts the
    page's events state are gathered, in order, and written with one ``executemany`` each at its
    end; reads go through. A fact is read back only when the cache has none for it, that is, when
    no event of this page stated it (the caches are cleared only between pages), so no read
    misses a gathered write. Both tables are the audit trail's own and hold facts that never
    change (``DO NOTHING`` keeps the first app, the owner's upsert the last), so writing them
    after the page's other statements changes no row."""

    __slots__ = ("db", "apps", "owners")

    def __init__(self, db: Any) -> None:
        self.db = db
        self.apps: list[tuple] = []
        self.owners: list[tuple] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql is _AGGREGATE_APP:
            self.apps.append(params)
        elif sql is _APP_OWNER:
            self.owners.append(params)
        else:
            return self.db.execute(sql, params)
        return None

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.db.executemany(sql, rows)

    def flush(self) -> None:
        if self.apps:
            self.db.executemany(_AGGREGATE_APP, self.apps)
        if self.owners:
            self.db.executemany(_APP_OWNER, self.owners)
        self.apps, self.owners = [], []


def event_id(originator_id: UUID | str, version: int) -> str:
    """The audit event's id: ``uuid5(NAMESPACE_URL, "keyledger:event:<originator>:<version>")``,
    computed without building two UUID objects (a million of them in a rebuild): SHA-1's first 32
    hex digits, the 13th made the version (5), the 17th given the variant's bits (10xx)."""
    sha = _EVENT_ID_PREFIX.copy()
    sha.update(f"{originator_id}:{version}".encode())
    h = sha.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_EVENT_ID_PREFIX = hashlib.sha1(_EVENT_ID_NAMESPACE + b"keyledger:event:")
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


def _app_and_owner(db: Any, aggregate_id: str, app: Any, slug: Any, owner_id: Any, apps: dict,
                   owners: dict) -> tuple[str | None, str | None]:
    """An event's app and its owner: the event's own (an app's registration names both, written to
    the aggregate -> app and app -> owner facts every time: a cached fact may be from a rolled-back
    write), else the facts known, cached in ``apps`` and ``owners``."""
    if isinstance(app, str):
        db.execute(_AGGREGATE_APP, (aggregate_id, app))
        apps.setdefault(aggregate_id, app)
    elif aggregate_id in apps:
        app = apps[aggregate_id]
    else:
        row = db.execute("SELECT app_id FROM audit_aggregate_apps WHERE aggregate_id = ?",
                         (aggregate_id,)).fetchone()
        app = apps[aggregate_id] = row[0] if row else None
    if slug is not None and isinstance(owner_id, str):
        db.execute(_APP_OWNER, (slug, owner_id))
        owners[slug] = owner_id
    elif app is None:
        owner_id = None
    elif app in owners:
        owner_id = owners[app]
    else:
        row = db.execute("SELECT owner_id FROM audit_app_owners WHERE app_id = ?", (app,)).fetchone()
        owner_id = owners[app] = row[0] if row else None
    return app, owner_id


def audit_record(db: Any, position: int, event: Any, apps: dict | None = None,
                 owners: dict | None = None) -> dict:
    """The audit shape of one event (without its hashes), and its app's owner. ``apps`` and
    ``owners`` cache the aggregate -> app and app -> owner facts."""
    apps = {} if apps is None else apps
    owners = {} if owners is None else owners
    kind, _, actor_id = str(getattr(event, "by", "system:unknown")).partition(":")
    originator_id = event.originator_id
    aggregate_id = str(originator_id)
    slug = getattr(event, "slug", None)
    app_id, owner_id = _app_and_owner(db, aggregate_id, getattr(event, "app_id", None) or slug, slug,
                                      getattr(event, "owner_id", None), apps, owners)
    key_id = aggregate_id if isinstance(event, ApiKey.Event) else getattr(event, "key_id", None)
    data = {k: _plain(v) for k, v in vars(event).items() if k not in _LEFT_OUT}
    request = getattr(event, "request", None) or {}
    return {
        "seq": position,
        "id": event_id(aggregate_id, event.originator_version),
        "type": event_type(event),
        "occurred_at": rfc3339(event.timestamp),
        "actor": {"kind": kind, "id": actor_id},
        "app_id": app_id,
        "key_id": key_id,
        "data": data,
        "request": {"id": request.get("id"), "ip": request.get("ip"), "user_agent": request.get("user_agent")},
        "owner_id": owner_id,
        "aggregate_id": aggregate_id,
    }


# -- rows from stored JSON (bulk passes) ------------------------------------------------------------

# The attributes ``audit_record`` reads with a default: an event class that defines one itself
# (a class default the stored state may lack) is read through its decoded event instead.
_READ_WITH_DEFAULT = ("by", "app_id", "slug", "owner_id", "key_id", "request", "timestamp")
_TOPICS: dict[str, tuple[str, bool] | tuple[()]] = {}  # topic -> (event type, a key's event?) or ()


def _shape(topic: str) -> tuple[str, bool] | tuple[()]:
    """What ``audit_record`` reads off the class of ``topic``'s events, or () when its records are
    decoded instead (an unknown topic, a class of a later version, a class with defaults)."""
    try:
        cls = resolve_topic(topic)
    except Exception:  # noqa: BLE001 - decoded, and refused there as live
        return ()
    if not isinstance(cls, type) or getattr(cls, "class_version", 1) != 1 or any(
            hasattr(cls, name) for name in _READ_WITH_DEFAULT):
        return ()
    return cls.__qualname__, issubclass(cls, ApiKey.Event)


_PLAIN = frozenset((str, int, bool, type(None)))
_LEFT_OUT_STORED = _LEFT_OUT | {"_mac"}  # and the seal, which the mapper drops


class _Unread(Exception):
    """A stored value ``_stored_plain`` does not read: the event is decoded instead."""


def _stored_plain(value: Any) -> Any:
    """``_plain`` of the value the mapper decodes from a stored JSON value: times (``datetime_iso``)
    and UUIDs (``uuid_hex``) as their text; any other typed value, or a float, is not read."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            name, data = value["_type_"], value["_data_"]
            if type(data) is str:
                if name == "datetime_iso":
                    return rfc3339(datetime.fromisoformat(data))
                if name == "uuid_hex":
                    return str(UUID(data))
            raise _Unread
        return {k: _stored_plain(v) for k, v in value.items()}
    if kind is list:
        return [_stored_plain(v) for v in value]
    raise _Unread  # a float (the transcoder reads numbers orjson may not), anything else


def _parsed(judged: Sequence[tuple]) -> Callable[[int], Any]:
    """``Page.state`` for a page that has none: ``judged[i]``'s stored state parsed, or None when
    the record is refused or its state is not a JSON object."""
    def state(i: int) -> Any:
        record = judged[i]
        if record[5] is not None:
            return None
        try:
            found = _loads(record[6])
        except Exception:  # noqa: BLE001 - not JSON: decoded (and refused) by the caller
            return None
        return found if type(found) is dict else None
    return state


_MISSING = object()


def _rfc3339_of(text: str, moment: datetime) -> str:
    """``rfc3339(moment)`` of ``moment = datetime.fromisoformat(text)``: cut from ``text`` itself when
    it is ``isoformat()``'s text of a UTC time (how the mapper stores every time), a sixth of the cost
    (every event's time is another). ``fromisoformat`` having read it, the separators in their places
    leave ASCII digits in the others; ``isoformat`` writes no fraction for 0 microseconds."""
    size = len(text)
    if (size == 32 or size == 25) and moment.tzinfo is UTC and text[size - 6:] == "+00:00" and text[4] == "-" \
            and text[7] == "-" and text[10] == "T" and text[13] == ":" and text[16] == ":" \
            and (size == 25 or text[19] == ".") and text.isascii():
        return text[:19] + "Z" if size == 25 or moment.microsecond == 0 else text[:26] + "Z"
    return rfc3339(moment)  # type: ignore[return-value]


def _stored_rows(db: Any, apps: dict, owners: dict, ids: dict[str, str], rows: list[tuple],
                 parts: list[Any]) -> Callable[..., bool]:
    """A page's maker of rows from stored JSON (bulk passes): ``add(position, originator_hex, version,
    state, shape, digest, prev_hash)``, given a judged record's parsed stored ``state`` (shared: never
    changed), appends to ``rows`` the row the live path writes for its decoded event (``audit_record``,
    ``_live_row``), the same values and the same column text, and to ``parts`` its (data, request), and
    says True; or says False, having written nothing, when it does not read the state so (a later shape,
    a value of a type it does not know, a float): the caller decodes the event. ``apps`` and ``owners``
    are ``_app_and_owner``'s caches; ``ids`` caches an originator's hex digits' UUID text."""
    times: dict[str, tuple[str, int]] = {}  # a stored time's text -> (its RFC 3339 text, microseconds)
    actors: dict[str, tuple[str, str]] = {}  # a ``by`` text -> (kind, id)
    plain, left_out, prefix, variant = _PLAIN, _LEFT_OUT_STORED, _EVENT_ID_PREFIX, _VARIANT
    dumps, sort = _orjson_dumps, _SORTED

    def time_of(text: str) -> tuple[str, int]:  # ``stored.moment``'s reading, cached by text (no call per event)
        found = times.get(text)
        if found is None:
            moment = datetime.fromisoformat(text)
            found = times[text] = (_rfc3339_of(text, moment), microseconds(moment))  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    def add(position: int, originator_hex: Any, version: Any, state: Any, shape: tuple[str, bool],
            digest: str, prev_hash: str) -> bool:
        if state is None or type(version) is not int or "class_version" in state or type(originator_hex) is not str:
            return False
        aggregate_id = ids.get(originator_hex)
        if aggregate_id is None:
            h = originator_hex.lower()
            if len(h) != 32 or h.strip("0123456789abcdef"):
                return False
            aggregate_id = ids[originator_hex] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        # ``state.get(...)``, but without a call each (most of these are absent)
        by = state["by"] if "by" in state else "system:unknown"
        app_id = state["app_id"] if "app_id" in state else None
        slug = state["slug"] if "slug" in state else None
        owner_id = state["owner_id"] if "owner_id" in state else None
        key_id = state["key_id"] if "key_id" in state else None
        request = (state["request"] if "request" in state else None) or {}
        stamp = state["timestamp"] if "timestamp" in state else None
        # A typed value, or a number the transcoder reads: decoded.
        if type(by) not in plain or type(app_id) not in plain or type(slug) not in plain \
                or type(owner_id) not in plain or type(key_id) not in plain \
                or type(request) is not dict or type(stamp) is not dict or len(stamp) != 2:
            return False
        when = stamp.get("_data_")
        if stamp.get("_type_") != "datetime_iso" or type(when) is not str:
            return False
        request_id = request["id"] if "id" in request else None
        ip = request["ip"] if "ip" in request else None
        user_agent = request["user_agent"] if "user_agent" in request else None
        if type(request_id) not in plain or type(ip) not in plain or type(user_agent) not in plain:
            return False
        data = {}
        try:
            for k, v in state.items():
                if k in left_out:
                    continue
                kind = type(v)
                if kind in plain:
                    data[k] = v
                elif kind is list and plain.issuperset(map(type, v)):
                    data[k] = v  # the same list: nothing here changes it
                elif kind is dict and len(v) == 2 and v.get("_type_") == "datetime_iso" \
                        and type(v.get("_data_")) is str:
                    data[k] = time_of(v["_data_"])[0]
                else:
                    data[k] = _stored_plain(v)
            occurred_at, at_us = time_of(when)
        except (_Unread, ValueError, TypeError, AttributeError):
            return False
        if type(by) is str:
            actor = actors.get(by)
            if actor is None:
                kind_of, _, actor_id = by.partition(":")
                actor = actors[by] = (kind_of, actor_id)
            kind_of, actor_id = actor
        else:
            kind_of, _, actor_id = str(by).partition(":")
        if not app_id and slug is None:  # ``_app_and_owner`` of a known aggregate, inlined
            app = apps.get(aggregate_id, _MISSING)
            if app is None:
                owner = None
            elif app is _MISSING or (owner := owners.get(app, _MISSING)) is _MISSING:
                app, owner = _app_and_owner(db, aggregate_id, None, None, owner_id, apps, owners)
        else:
            app, owner = _app_and_owner(db, aggregate_id, app_id or slug, slug, owner_id, apps, owners)
        sha = prefix.copy()  # ``event_id``, inlined
        sha.update(f"{aggregate_id}:{version}".encode())
        h = sha.hexdigest()
        asked = {"id": request_id, "ip": ip, "user_agent": user_agent}
        if dumps is not None:
            try:
                data_json = dumps(data, option=sort).decode()
            except (TypeError, ValueError):
                data_json = _json_data(data)
            try:
                request_json = dumps(asked, option=sort).decode()
            except (TypeError, ValueError):
                request_json = _json_request(asked)
        else:  # pragma: no cover - orjson is a dependency
            data_json, request_json = _json_data(data), _json_request(asked)
        rows.append((position, f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}", shape[0],
                     occurred_at, at_us, kind_of, actor_id, app, owner, aggregate_id if shape[1] else key_id,
                     aggregate_id, data_json, request_json, digest, prev_hash))
        parts.append((data, asked))
        return True

    return add


def _by_seq(row: tuple) -> int:
    return row[0]


class _Recent:
    """``AuditTrail.recent`` after a bulk page: (the audit record with its hashes, its app's owner)
    by position, a record made only when asked for, from its row and its (data, request) — or the
    record itself, for a row made from a decoded event."""

    __slots__ = ("rows", "parts")

    def __init__(self, rows: list[tuple], parts: list[Any]) -> None:
        self.rows, self.parts = rows, parts

    def get(self, position: int, default: Any = None) -> Any:
        rows = self.rows
        i = bisect_left(rows, position, key=_by_seq)
        if i == len(rows) or rows[i][0] != position:
            return default
        row, part = rows[i], self.parts[i]
        if type(part) is dict:
            return part, row[8]
        data, request = part
        return {"seq": row[0], "id": row[1], "type": row[2], "occurred_at": row[3],
                "actor": {"kind": row[5], "id": row[6]}, "app_id": row[7], "key_id": row[9], "data": data,
                "request": request, "aggregate_id": row[10], "hash": row[13], "prev_hash": row[14]}, row[8]


@dataclass(frozen=True)
class AuditFilter:
    """What the security team narrows the trail to; every field optional."""

    app_id: str | None = None
    key_id: str | None = None
    actor_kind: str | None = None  # account | key | system
    actor_id: str | None = None  # None with actor_kind "system": any system actor
    type: str | None = None
    since_us: int | None = None  # inclusive
    until_us: int | None = None  # exclusive


class AuditLog:
    """Queries over the audit trail: filtered pages by log position, streams, the chain."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def events(self, *, key_id: str | None = None, app_id: str | None = None,
               after_seq: int = 0, limit: int | None = 1000) -> list[dict]:
        """Events oldest first, filtered; ``limit=None`` for all of them."""
        return self.page(AuditFilter(app_id=app_id, key_id=key_id), after=after_seq,
                         limit=-1 if limit is None else limit)

    def page(self, filters: AuditFilter, *, owner_id: str | None = None, after: int = 0,
             limit: int = 100, upto: int | None = None) -> list[dict]:
        """Up to ``limit`` matching events after position ``after``, oldest first; an owner
        (``owner_id``) sees only events of their own apps."""
        where, params = self._where(filters, owner_id)
        where.append("seq > ?")
        params.append(after)
        if upto is not None:
            where.append("seq <= ?")
            params.append(upto)
        sql = f"SELECT * FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit >= 0:  # a negative limit: every match
            sql += " LIMIT ?"
            params.append(limit)
        with self.store.read() as db:
            rows = db.execute(sql, params).fetchall()
        return [self._event(r) for r in rows]

    def stream(self, filters: AuditFilter, *, owner_id: str | None = None,
               chunk: int = 1000) -> Iterator[dict]:
        """Every matching event up to the log's end as it is now, read ``chunk`` at a time
        (each chunk its own short read): constant memory, however many there are."""
        upto, after = self.last_seq(), 0
        while True:
            events = self.page(filters, owner_id=owner_id, after=after, limit=chunk, upto=upto)
            yield from events
            if len(events) < chunk:
                return
            after = events[-1]["seq"]

    def count(self, filters: AuditFilter, *, owner_id: str | None = None) -> int:
        where, params = self._where(filters, owner_id)
        with self.store.read() as db:
            return db.execute(f"SELECT COUNT(*) FROM audit_events WHERE {' AND '.join(where)}",
                              params).fetchone()[0]

    def last_seq(self) -> int:
        with self.store.read() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0]

    def chain(self, chunk: int = 50_000) -> Iterator[tuple[int, str]]:
        """(seq, hash) of every row, in order: the witness the integrity check compares with."""
        after = 0
        while True:
            with self.store.read() as db:  # plain tuples: a million rows are read
                rows = list(self.store.scan(db, "SELECT seq, hash FROM audit_events WHERE seq > ? "
                                                "ORDER BY seq LIMIT ?", (after, chunk)))
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def aggregates_of_app(self, app_id: str, *, until_us: int) -> list[str]:
        """The aggregates (keys, legacy clients…) with events under ``app_id`` by ``until_us``,
        in the order they first appeared."""
        with self.store.read() as db:
            rows = db.execute(
                "SELECT aggregate_id, MIN(seq) AS first FROM audit_events WHERE app_id = ? AND at_us <= ? "
                "GROUP BY aggregate_id ORDER BY first", (app_id, until_us)).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def _where(filters: AuditFilter, owner_id: str | None) -> tuple[list[str], list]:
        where: list[str] = ["1 = 1"]
        params: list = []
        for column, value in (("owner_id", owner_id), ("app_id", filters.app_id),
                              ("key_id", filters.key_id), ("actor_kind", filters.actor_kind),
                              ("actor_id", filters.actor_id), ("type", filters.type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if filters.since_us is not None:
            where.append("at_us >= ?")
            params.append(filters.since_us)
        if filters.until_us is not None:
            where.append("at_us < ?")
            params.append(filters.until_us)
        return where, params

    @staticmethod
    def _event(r: Any) -> dict:
        return {
            "seq": r["seq"], "id": r["id"], "type": r["type"], "occurred_at": r["occurred_at"],
            "actor": {"kind": r["actor_kind"], "id": r["actor_id"]}, "app_id": r["app_id"],
            "key_id": r["key_id"], "data": json.loads(r["data"]), "request": json.loads(r["request"]),
            "hash": r["hash"], "prev_hash": r["prev_hash"],
        }


def encode_cursor(seq: int) -> str:
    """An opaque cursor: a position in the log (stable under concurrent writes)."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    """The position in a cursor; None if it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    kind, _, number = text.partition(":")
    if kind != "seq" or not number.isdigit() or len(number) > 18:
        return None
    return int(number)
