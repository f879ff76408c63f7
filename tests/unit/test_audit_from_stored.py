"""A bulk pass makes the audit trail's rows from the stored JSON itself (``_stored_record``): for
every record it reads so, the same record, the same time and the same column text as from the
decoded event (``audit_record``, the live path); whatever it does not read is left to the latter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

from projections import audit
from service.application.sealing import SealingMapper

AT = {"_type_": "datetime_iso", "_data_": "2030-01-02T03:04:05.678901+00:00"}
REQUEST = {"id": "r1", "ip": "10.0.0.1", "user_agent": "ünï \u2026"}
ISSUED = "service.domain.keys:ApiKey.Issued"
REGISTERED = "service.domain.apps:App.Registered"
SCOPES = "service.domain.keys:ApiKey.ScopesChanged"


class Db:
    """Reads find nothing; writes are kept."""

    def __init__(self) -> None:
        self.writes: list[tuple] = []

    def execute(self, sql, params=()):
        self.writes.append((sql, tuple(params)))

        class Cursor:
            def fetchone(self):
                return None

        return Cursor()


def transcoder() -> JSONTranscoder:
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        t.register(transcoding)
    return t


def issued(**extra):
    return {"timestamp": AT, "by": "account:a1", "request": REQUEST, "app_id": "app-1", "description": "d",
            "scopes": ["All"], "expires_at": {"_type_": "datetime_iso", "_data_": "2031-05-06T07:08:09+00:00"},
            "digest": "ab" * 32, "display": "ak_…1234", "origin": "user", "_mac": "00" * 16, **extra}


CASES = [  # (topic, state, read from the stored JSON?)
    (ISSUED, issued(), True),
    (ISSUED, issued(expires_at=None, note={"id": {"_type_": "uuid_hex", "_data_": uuid4().hex}, "l": [1, [True]]}),
     True),
    (REGISTERED, {"timestamp": AT, "by": "system:importer", "request": {}, "slug": "app-2", "name": "App ✓",
                  "owner_id": "o1", "origin": "user"}, True),
    (SCOPES, {"timestamp": AT, "by": "key:k1", "request": {"id": None}, "scopes": ["Predict"],
              "previous_scopes": ["All"], "digests": ["cd" * 32]}, True),
    (SCOPES, {"timestamp": AT, "scopes": [], "previous_scopes": [], "digests": []}, True),  # no actor, no request
    (ISSUED, issued(ratio=1.5), False),  # a float: the transcoder's reading
    (ISSUED, issued(price={"_type_": "decimal_str", "_data_": "1.10"}), False),
    (ISSUED, issued(class_version=2), False),  # a later shape: upcast by the mapper
    (ISSUED, issued(app_id={"_type_": "uuid_hex", "_data_": uuid4().hex}), False),
    (ISSUED, issued(request={"id": 1.5}), False),
]


def fast_row(db, position, originator_hex, version, state, shape, apps=None, owners=None, ids=None):
    """``_stored_rows``' row (and its recent record) for one parsed state, or None."""
    rows, parts = [], []
    add = audit._stored_rows(db, {} if apps is None else apps, {} if owners is None else owners,
                             {} if ids is None else ids, rows, parts)
    if not add(position, originator_hex, version, state, shape, "h" * 64, "p" * 64):
        assert rows == parts == [] and db.writes == []
        return None
    assert len(rows) == len(parts) == 1
    return rows[0], audit._Recent(rows, parts).get(position)


def live_row(db, position, event, apps=None, owners=None):
    """The live path's row (``_write``) and its recent record."""
    record = audit.audit_record(db, position, event, {} if apps is None else apps, {} if owners is None else owners)
    owner_id = record["owner_id"]
    row = audit._live_row(record, audit.microseconds(event.timestamp), "h" * 64, "p" * 64)
    record["hash"], record["prev_hash"] = "h" * 64, "p" * 64
    return row, (record, owner_id)


@pytest.mark.parametrize(("topic", "state", "fast"), CASES)
def test_a_row_from_the_stored_json_is_the_row_from_the_event(topic, state, fast):
    t = transcoder()
    mapper = SealingMapper(t, b"k" * 32)
    body = audit._orjson_dumps(state) if audit._orjson_dumps else t.encode(state)
    originator = uuid4()
    shape = audit._shape(topic)
    assert shape
    db_fast, db_live = Db(), Db()
    got = fast_row(db_fast, 7, originator.hex, 3, audit._loads(body), shape)
    if not fast:
        assert got is None
        return
    if "class_version" not in state:
        event = mapper.decode_opened(originator, 3, topic, body)
        assert got is not None
        assert got == live_row(db_live, 7, event)
        assert db_fast.writes == db_live.writes


def odd(**changes):
    state = issued()
    for k, v in changes.items():
        if v is DROP:
            state.pop(k)
        else:
            state[k] = v
    return state


DROP = object()
TYPED_AT = {"_type_": "datetime_iso", "_data_": "2031-05-06T07:08:09.5+02:00"}
ODD = [  # (topic, state): odd shapes, every one read from the stored JSON
    (ISSUED, odd(by=5)),  # not text: str() of it, as the event's attribute
    (ISSUED, odd(by=True)),
    (ISSUED, odd(by="True")),  # the same text as str(True): the actor cache keys on the text's type too
    (ISSUED, odd(by="no-colon")),
    (ISSUED, odd(by=None)),
    (ISSUED, odd(by=DROP, request=DROP)),
    (ISSUED, odd(app_id="")),  # falsy: the app known for the aggregate
    (ISSUED, odd(app_id=0)),
    (ISSUED, odd(app_id=DROP, slug="app-s", owner_id="o-s")),  # an app's slug on a key's event
    (ISSUED, odd(app_id="", slug="app-s", owner_id=7)),  # an owner that is not text: no fact
    (ISSUED, odd(key_id="other")),  # a key's event: its aggregate, whatever it says
    (SCOPES, {"timestamp": AT, "key_id": "k9", "by": "key:k9", "scopes": [], "previous_scopes": [], "digests": []}),
    (ISSUED, odd(expires_at=TYPED_AT)),  # a time in another offset: made UTC
    (ISSUED, odd(expires_at={"_type_": "datetime_iso", "_data_": "2031-05-06T07:08:09"})),  # naive
    (ISSUED, odd(timestamp={"_type_": "datetime_iso", "_data_": "2030-01-02T03:04:05.678901+05:30"})),
    (ISSUED, odd(timestamp={"_type_": "datetime_iso", "_data_": AT["_data_"]}, valid_until=AT)),  # shared text
    (ISSUED, odd(scopes=["a", 1, True, None])),  # a list of plain values: kept as it is
    (ISSUED, odd(scopes=[TYPED_AT, [{"_type_": "uuid_hex", "_data_": "ab" * 16}]])),  # typed values in lists
    (ISSUED, odd(note={"_type_": "x", "_data_": "y", "z": 1})),  # three members: a plain object
    (ISSUED, odd(note={"_type_": "datetime_iso", "x": "y"})),
    (ISSUED, odd(note={"b": {"_type_": "uuid_hex", "_data_": "cd" * 16}, "a": []})),
    (ISSUED, odd(request={"id": "x", "ip": None, "extra": "left out"})),
    (ISSUED, odd(request={"user_agent": "\u2028 \U0001f511 \"q\" \\"})),
    (ISSUED, odd(description="\u00e9 \U0001f511 \x00 \"\\</script>", big=2**63 - 1, small=-2**63)),
    (ISSUED, odd(origin=False, empty={}, nothing=None)),
]


def test_odd_shapes_make_the_live_rows_with_shared_caches():
    """Every odd shape above, one after the other with the caches of a page shared (as in a bulk
    page), after the app they name is registered: each row and each fact written is the live one."""
    t = transcoder()
    mapper = SealingMapper(t, b"k" * 32)
    registered = {"timestamp": AT, "by": "system:importer", "request": {}, "slug": "app-1", "name": "App 1",
                  "owner_id": "o1", "origin": "user"}
    stream = [(REGISTERED, registered, uuid4())]
    key = uuid4()
    for topic, state in ODD:
        stream.append((ISSUED, issued(), key))  # the key's app first: later events find it cached
        stream.append((topic, state, key))
        stream.append((topic, state, uuid4()))  # and a key no event named an app for
    fast_caches, live_caches = ({}, {}), ({}, {})
    ids: dict = {}
    rows, parts = [], []
    db_fast, db_live = Db(), Db()
    add = audit._stored_rows(db_fast, *fast_caches, ids, rows, parts)
    expected = []
    for position, (topic, state, originator) in enumerate(stream, start=1):
        body = audit._orjson_dumps(state)
        hexed = originator.hex.upper() if position % 2 else originator.hex  # any case of hex digits
        assert add(position, hexed, position, audit._loads(body), audit._shape(topic), f"{position:064}", "p" * 64), \
            (topic, state)
        event = mapper.decode_opened(originator, position, topic, body)
        record = audit.audit_record(db_live, position, event, *live_caches)
        owner_id = record["owner_id"]
        expected.append(audit._live_row(record, audit.microseconds(event.timestamp), f"{position:064}", "p" * 64))
        record["hash"], record["prev_hash"] = f"{position:064}", "p" * 64
        assert audit._Recent(rows, parts).get(position) == (record, owner_id)
    assert rows == expected
    assert [tuple(type(v) for v in row) for row in rows] == [tuple(type(v) for v in row) for row in expected]
    assert db_fast.writes == db_live.writes
    assert audit._Recent(rows, parts).get(0) is None and audit._Recent(rows, parts).get(len(stream) + 1) is None


def test_a_state_it_does_not_read_writes_nothing():
    for state in (None, issued(by=1.5), issued(app_id=[]), issued(timestamp="2030-01-01"),
                  issued(timestamp={"_type_": "datetime_iso", "_data_": "not a time"}),
                  issued(timestamp={"_type_": "datetime_iso", "_data_": AT["_data_"], "x": 1}),
                  issued(request=["x"]), issued(request={"ip": ["10.0.0.1"]}), issued(scopes=[1.5]),
                  issued(note={"_type_": "decimal_str", "_data_": "1"}), issued(class_version=1)):
        db = Db()
        assert fast_row(db, 1, uuid4().hex, 1, state, audit._shape(ISSUED)) is None, state
    for originator, version in ((uuid4().hex[:31], 1), ("g" * 32, 1), (uuid4().bytes, 1), (uuid4().hex, "1"),
                                (uuid4().hex, True)):
        assert fast_row(Db(), 1, originator, version, issued(), audit._shape(ISSUED)) is None


def test_a_topic_with_class_defaults_or_unknown_is_decoded():
    assert audit._shape("service.domain.nothing:Here.Event") == ()
    assert audit._shape(ISSUED) == ("ApiKey.Issued", True)
    assert audit._shape(REGISTERED) == ("App.Registered", False)


def test_the_column_text_is_the_same_for_the_same_value_however_made():
    value = {"b": [1, "x"], "a": {"z": None, "y": True}, "u": "ünï"}
    assert audit._data_json(value) == audit._float_free_json(value, audit._json_data) == \
        '{"a":{"y":true,"z":null},"b":[1,"x"],"u":"ünï"}'
    assert audit._data_json({"x": float("nan")}) == '{"x": NaN}'  # a float: the json module, as before
    assert audit._data_json({1: "a"}) == '{"1": "a"}'  # orjson refuses non-text keys
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert audit._stored_plain({"_type_": "datetime_iso", "_data_": when.isoformat()}) == "2030-01-01T00:00:00Z"
    with pytest.raises(audit._Unread):
        audit._stored_plain(Decimal("1"))


class RowsDb(Db):
    """Reads find nothing; each ``executemany``'s rows are kept by statement."""

    def __init__(self) -> None:
        super().__init__()
        self.many: list[tuple[str, list]] = []

    def executemany(self, sql, rows):
        self.many.append((sql, [tuple(r) for r in rows]))


def test_a_bulk_page_writes_the_rows_and_tells_the_records_of_the_live_path():
    """A page of judged records (read from the stored JSON or, a float among them, decoded) gives the
    rows, the facts and the ``recent`` records of the same events applied live (``process_batch``)."""
    from projections.follower import Page

    t = transcoder()
    mapper = SealingMapper(t, b"k" * 32)
    app, key, lost = uuid4(), uuid4(), uuid4()
    registered = {"timestamp": AT, "by": "system:importer", "request": REQUEST, "slug": "app-1", "name": "App 1",
                  "owner_id": "o1", "origin": "user"}
    scopes = {"timestamp": AT, "by": "key:k1", "request": {}, "scopes": ["a"], "previous_scopes": [], "digests": []}
    history = [(app, 1, REGISTERED, registered), (key, 1, ISSUED, issued(app_id="app-1")),
               (key, 2, SCOPES, scopes), (key, 3, ISSUED, issued(app_id="app-1", ratio=0.5)),  # decoded
               (lost, 1, SCOPES, scopes), (lost, 2, SCOPES, scopes),  # an aggregate of no known app, twice
               (key, 4, SCOPES, {**scopes, "previous_scopes": [1.5]})]  # decoded
    judged = []
    for seq, (originator, version, topic, state) in enumerate(history, start=1):
        body = audit._orjson_dumps(state)
        judged.append((seq, originator.hex, version, topic, body, None, body, originator.hex))
    events = {r[0]: mapper.decode_opened(UUID(r[1]), r[2], r[3], r[6]) for r in judged}
    bulk_db, live_db = RowsDb(), RowsDb()
    bulk = audit.AuditTrail(lambda after, limit: [])
    bulk.process_page(bulk_db, Page(judged=judged, decode=lambda r: events[r[0]]))
    live = audit.AuditTrail(lambda after, limit: [r[:5] for r in judged if after < r[0] <= after + limit])
    live.process_batch(live_db, sorted(events.items()))
    facts = [(sql, rows) for sql, rows in bulk_db.many if not sql.startswith("INSERT INTO audit_events")]
    inserted = [(sql, rows) for sql, rows in bulk_db.many if sql.startswith("INSERT INTO audit_events")]
    assert inserted == live_db.many
    for statement in (audit._AGGREGATE_APP, audit._APP_OWNER):  # the facts, written at the page's end
        assert [row for sql, rows in facts if sql == statement for row in rows] == \
            [params for sql, params in live_db.writes if sql == statement]
    assert bulk_db.writes == [(sql, params) for sql, params in live_db.writes  # the reads, as they were
                              if sql not in (audit._AGGREGATE_APP, audit._APP_OWNER)]
    assert [r[11] for r in inserted[0][1]][3].endswith('"ratio": 0.5, "scopes": ["All"]}')  # the json module's text
    for seq in events:
        assert bulk.recent.get(seq) == live.recent[seq]
    assert bulk.recent.get(len(history) + 1) is None


def test_a_stored_time_cut_from_its_text_is_the_rfc3339_of_its_value():
    texts = ["2030-01-02T03:04:05.678901+00:00", "2030-01-02T03:04:05+00:00", "2030-01-02T03:04:05.000000+00:00",
             "0999-12-31T23:59:59.999999+00:00", "2030-01-02T03:04:05.000001+00:00", "2030-01-02T03:04:05.100000+00:00",
             "2030-01-02 03:04:05.678901+00:00", "2030-01-02T03:04:05,678901+00:00", "2030-01-02T03:04:05.678+00:00",
             "2030-01-02T03:04:05.678901-00:00", "2030-01-02T03:04:05.678901+01:00", "2030-01-02T03:04:05.678901",
             "2030-01-02T03:04:05.678901Z", "2030-01-02T03:04:05Z", "2030-W01-3T03:04:05.678901+00:00",
             "2030-01-02T030405.678901+00:00", "2030-01-02T03:04:05.678901+00:00:00", "20300102T030405.678901+00:00",
             "2030-01-02T03:04:05+00:00:00.000", "2030-01-02T03:04+00:00", "2030-01-02T03:04:05.6789012+00:00",
             "2030-01-02T03:04:05+05:30", "2030-01-02T03:04:05.678901+14:00", "2030-01-02T03:04:05.678901-12:00"]
    for text in texts:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            continue
        assert audit._rfc3339_of(text, moment) == audit.rfc3339(moment), text
    start = datetime(1970, 1, 1, tzinfo=UTC)
    for n in range(2000):  # times as the mapper stores them, with and without microseconds
        moment = start + timedelta(seconds=n * 1_234_567.891, microseconds=0 if n % 3 else n)
        assert audit._rfc3339_of(moment.isoformat(), moment) == audit.rfc3339(moment)
