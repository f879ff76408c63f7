"""A bulk pass makes the audit trail's rows from the stored JSON itself (``_stored_record``): for
every record it reads so, the same record, the same time and the same column text as from the
decoded event (``audit_record``, the live path); whatever it does not read is left to the latter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

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


@pytest.mark.parametrize(("topic", "state", "fast"), CASES)
def test_a_row_from_the_stored_json_is_the_row_from_the_event(topic, state, fast):
    t = transcoder()
    mapper = SealingMapper(t, b"k" * 32)
    body = audit._orjson_dumps(state) if audit._orjson_dumps else t.encode(state)
    originator = uuid4()
    shape = audit._shape(topic)
    assert shape
    db_fast, db_live = Db(), Db()
    got = audit._stored_record(db_fast, 7, originator.hex, 3, body, shape, {}, {}, {})
    if not fast:
        assert got is None
        return
    if "class_version" not in state:
        event = mapper.decode_opened(originator, 3, topic, body)
        expected = audit.audit_record(db_live, 7, event, {}, {})
        assert got is not None
        record, at_us = got
        assert record == expected
        assert at_us == audit.microseconds(event.timestamp)
        assert audit._float_free_json(record["data"], audit._json_data) == audit._data_json(expected["data"])
        assert audit._float_free_json(record["request"], audit._json_request) == audit._request_json(
            expected["request"])
        assert db_fast.writes == db_live.writes


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
