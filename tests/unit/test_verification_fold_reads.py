"""A bulk pass reads a key's scope change, roll or revocation from its stored JSON (``_READERS``) as an
operation on the verification view's rows: for every state it reads so, the same operation as from the
decoded event (``VerificationView._operation``, which the live handlers' statements mirror); whatever
it does not read (a later shape, a typed or odd value) is decoded instead."""

from __future__ import annotations

from uuid import uuid4

import orjson
import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex

from projections import verification
from projections.verification import VerificationView
from service.application.sealing import SealingMapper

AT = {"_type_": "datetime_iso", "_data_": "2030-01-02T03:04:05.678901+00:00"}
LATER = {"_type_": "datetime_iso", "_data_": "2030-01-02T04:04:05+01:00"}
SCOPES = "service.domain.keys:ApiKey.ScopesChanged"
ROLLED = "service.domain.keys:ApiKey.Rolled"
REVOKED = "service.domain.keys:ApiKey.Revoked"
BASE = {"timestamp": AT, "by": "account:a1", "request": {}}
A, B = "ab" * 32, "CD" * 32  # hex digests, one in capitals (fromhex reads both)


def rolled(**extra):
    return {**BASE, "digest": B, "display": "ak_…1", "previous_digest": A, "previous_display": "ak_…2",
            "previous_valid_until": LATER, **extra}


CASES = [  # (topic, state, read from the stored JSON?)
    (SCOPES, {**BASE, "scopes": ["Predict", "Search"], "previous_scopes": ["All"], "digests": [A, B]}, True),
    (SCOPES, {**BASE, "scopes": [], "previous_scopes": [], "digests": []}, True),
    (SCOPES, {**BASE, "scopes": ["All"], "previous_scopes": [], "digests": [A], "class_version": 2}, False),
    (SCOPES, {**BASE, "scopes": [{"_type_": "uuid_hex", "_data_": uuid4().hex}], "previous_scopes": [],
              "digests": [A]}, False),
    (SCOPES, {**BASE, "scopes": ["All"], "previous_scopes": [], "digests": "ab"}, False),
    (ROLLED, rolled(), True),
    (ROLLED, rolled(previous_valid_until=None), False),
    (ROLLED, rolled(previous_valid_until={"_type_": "decimal_str", "_data_": "1"}), False),
    (ROLLED, rolled(digest={"_type_": "uuid_hex", "_data_": uuid4().hex}), False),
    (REVOKED, {**BASE, "digests": [A, B]}, True),
    (REVOKED, {**BASE, "digests": []}, True),
    (REVOKED, {**BASE, "digests": [A], "class_version": 2}, False),
]


def mapper() -> SealingMapper:
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        t.register(transcoding)
    return SealingMapper(t, b"k" * 32)


@pytest.mark.parametrize(("topic", "state", "fast"), CASES)
def test_an_operation_read_from_the_stored_json_is_the_decoded_events(topic, state, fast):
    got = verification._READERS[topic](orjson.loads(orjson.dumps(state)))
    if not fast:
        assert got is None
        return
    event = mapper().decode_opened(uuid4(), 3, topic, orjson.dumps(state))
    assert got == VerificationView()._operation(event)


def test_the_fold_ends_a_secret_as_the_view_does():
    """``LEAST(COALESCE(ends_at, at), at)``: the earlier end stays; a first end is set."""
    fold = verification._PageFold(None, staging=True)
    d = bytes.fromhex(A)
    fold.rows[d] = [d, "api_key", "k", "app", None, "All", None, None]
    fold.apply([(verification._END, [d], 20.0), (verification._END, [d], 30.0), (verification._END, [d], 10.0)],
               other=lambda e: None)
    assert fold.rows[d][7] == 10.0 and list(fold.dirty) == [d]
