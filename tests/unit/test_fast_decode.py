"""Reading the log parses stored states with orjson and revives them as the library's JSON transcoder
does: the same values, and the transcoder's own error for whatever orjson or the revival refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from service.application.sealing import SealingMapper


def transcoder() -> JSONTranscoder:
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        t.register(transcoding)
    return t


STATES = [
    {"timestamp": datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "id": uuid4(), "n": 3, "x": 1.5,
     "scopes": ["Predict", "Search"], "nested": {"at": [datetime(2031, 1, 1, tzinfo=UTC), None, {"k": uuid4()}]},
     "price": Decimal("1.10"), "text": "ünïcode \u2026 \"quoted\" \\ back", "empty": {}, "flag": True},
    {},
    {"_type_": "not a transcoding", "other": 1},  # three keys: a plain object
    {"list": [[1, [2, {"_type_": "uuid_hex", "_data_": uuid4().hex}]]]},
]


@pytest.mark.parametrize("state", STATES)
def test_the_fast_decode_gives_the_transcoders_values(state):
    t = transcoder()
    data = t.encode(state)
    assert SealingMapper(t, b"k" * 32).decode_state(data) == t.decode(data)


@pytest.mark.parametrize("data", [b'{"x":NaN}', b'{"big":123456789012345678901234567890}', b'{"x":1e400}'])
def test_what_orjson_refuses_is_decoded_by_the_transcoder(data):
    t = transcoder()
    assert repr(SealingMapper(t, b"k" * 32).decode_state(data)) == repr(t.decode(data))


def test_an_unknown_type_name_raises_the_transcoders_error():
    t = transcoder()
    data = json.dumps({"a": {"_type_": "martian", "_data_": "x"}}).encode()
    with pytest.raises(TranscodingNotRegisteredError):
        SealingMapper(t, b"k" * 32).decode_state(data)
