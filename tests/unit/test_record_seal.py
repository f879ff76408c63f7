"""The record seal: what it covers, and what unsealing accepts."""

from __future__ import annotations

import json

import pytest

from service.application.sealing import RecordRules
from service.domain.audit import seal, seal_holds, unseal

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

KEY = b"k" * 32
OID = "0" * 31 + "1"


def test_a_sealed_state_is_still_a_json_object_and_unseals_to_the_original():
    body = b'{"by":"system:test","scopes":["Predict"]}'
    sealed = seal(KEY, OID, 3, "service.domain.keys:ApiKey.ScopesChanged", body)
    assert json.loads(sealed)["scopes"] == ["Predict"] and "_mac" in json.loads(sealed)
    opened, tag = unseal(sealed)
    assert opened == body and seal_holds(KEY, OID, 3, "service.domain.keys:ApiKey.ScopesChanged", opened, tag)


def test_an_empty_object_seals_and_unseals():
    opened, tag = unseal(seal(KEY, OID, 1, "t", b"{}"))
    assert opened == b"{}" and seal_holds(KEY, OID, 1, "t", b"{}", tag)


def test_a_state_without_a_seal_unseals_to_itself():
    assert unseal(b'{"a":1}') == (b'{"a":1}', None)


@pytest.mark.parametrize("change", [
    {"key": b"x" * 32}, {"originator_id": "f" * 32}, {"version": 4},
    {"topic": "service.domain.keys:ApiKey.Revoked"}, {"body": b'{"scopes":["All"]}'},
])
def test_the_seal_covers_the_key_id_version_topic_and_state(change):
    genuine = {"key": KEY, "originator_id": OID, "version": 3, "topic": "service.domain.keys:ApiKey.ScopesChanged",
               "body": b'{"scopes":["Predict"]}'}
    body, tag = unseal(seal(**genuine))
    assert body == genuine["body"] and seal_holds(**genuine, tag=tag)
    assert not seal_holds(**{**genuine, **change}, tag=tag)


@pytest.mark.parametrize("record, words", [
    ((5, OID, 1, "t", "text"), "TEXT"),
    ((5, OID, 1, "t", None), "NULL"),
    ((5, OID, "1", "t", b"{}"), "version is TEXT"),
    ((5, "not an id", 1, "t", b"{}"), "not a UUID"),
    ((5, OID, 1, None, b"{}"), "topic is NULL"),
    ((5, OID, 1, "t", b'{"a":1,"_mac":"' + b"0" * 32 + b'"}'), "seal does not verify"),
])
def test_the_rules_name_what_is_wrong_and_never_raise(record, words):
    problem, _ = RecordRules(KEY).judge(*record)
    assert problem is not None and words in problem


def test_once_a_record_is_sealed_every_later_one_must_be_unless_a_baseline_accepted_it():
    rules = RecordRules(KEY)
    assert rules.judge(1, OID, 1, "t", b'{"a":1}')[0] is None  # before sealing began
    assert rules.judge(2, OID, 2, "t", seal(KEY, OID, 2, "t", b'{"a":2}'))[0] is None
    assert "no seal" in rules.judge(3, OID, 3, "t", b'{"a":3}')[0]
    rules.accepted_through = 3
    assert rules.judge(3, OID, 3, "t", b'{"a":3}')[0] is None


def test_the_status_of_a_seal_is_checked_in_place():
    from service.domain.audit import seal_status, sealer

    keyed = sealer(KEY)
    for body in (b'{"a":1}', b"{}"):
        sealed = seal(KEY, OID, 2, "t", body)
        assert seal_status(keyed, OID, 2, "t", sealed) is True
        assert seal_status(keyed, OID, 3, "t", sealed) is False
        assert seal_status(sealer(b"x" * 32), OID, 2, "t", sealed) is False
    assert seal_status(keyed, OID, 2, "t", b'{"a":1}') is None
    assert seal_status(keyed, OID, 2, "t", b'{"a":1 "_mac":"' + b"0" * 32 + b'"}') is False


def test_the_seal_is_hmac_sha256_as_rfc_2104_defines_it():
    import hashlib
    import hmac

    from service.domain.audit import SEAL_FORMAT, seal_tag

    expected = hmac.new(KEY, SEAL_FORMAT + f"{OID}\n3\nt\n".encode() + b'{"a":1}', hashlib.sha256).hexdigest()[:32]
    assert seal_tag(KEY, OID, 3, "t", b'{"a":1}') == expected.encode()
    long_key = b"L" * 100
    expected = hmac.new(long_key, SEAL_FORMAT + f"{OID}\n3\nt\n".encode() + b"{}", hashlib.sha256).hexdigest()[:32]
    assert seal_tag(long_key, OID, 3, "t", b"{}") == expected.encode()


def _odd_rows() -> list[tuple]:
    """Stored rows of every shape the store could return, sealed and not: genuine, tampered, odd."""
    from uuid import UUID

    def sealed(oid, version, topic, body, key=KEY):
        return seal(key, oid, version, topic, body)

    topic = "service.domain.keys:ApiKey.Issued"
    good = sealed(OID, 1, topic, b'{"a":1}')
    upper = good[:-34] + good[-34:-2].upper() + b'"}'
    rows = [
        (1, OID, 1, topic, b'{"a":0}'),  # before sealing began
        (2, OID, 1, topic, good),
        (3, OID, 2, topic, sealed(OID, 2, topic, b"{}")),  # the seal of an empty object
        (4, OID, 3, topic, sealed(OID, 2, topic, b'{"a":1}')),  # another version's seal
        (5, OID, 1, topic, upper),  # the tag in upper case: not what the service writes
        (6, OID, 1, topic, sealed(OID, 1, topic, b'{"a":1}', key=b"x" * 32)),
        (7, OID, 1, topic, b'{"a":3}'),  # no seal after sealed ones
        (8, OID, 1, topic, memoryview(good)),
        (9, OID, 1, topic, good.decode()),
        (10, OID, 1, topic, None),
        (11, OID, "1", topic, good),
        (12, OID, True, topic, good),
        (13, OID, 1, None, good),
        (14, OID, 1, b"t", good),
        (15, UUID(OID), 1, topic, good),
        (16, OID.upper(), 1, topic, sealed(OID.upper(), 1, topic, b'{"a":1}')),
        (17, "0x" + OID[2:], 1, topic, sealed("0x" + OID[2:], 1, topic, b'{"a":1}')),  # int() reads it
        (18, " " + OID[1:], 1, topic, sealed(" " + OID[1:], 1, topic, b'{"a":1}')),
        (19, "1_" + OID[2:], 1, topic, sealed("1_" + OID[2:], 1, topic, b'{"a":1}')),
        (20, "g" * 32, 1, topic, sealed("g" * 32, 1, topic, b'{"a":1}')),
        (21, OID + "0", 1, topic, good),
        (22, None, 1, topic, good),
        (23, OID, 1, topic, b',"_mac":"' + b"0" * 32 + b'"}'),
        (24, OID, 1, topic, b'{"a":1 "_mac":"' + b"0" * 32 + b'"}'),
        (25, OID, 1, topic, good[:-1]),
        (26, OID, 1, topic, b""),
        (28, OID, 1, topic, sealed(OID, 1, topic, b'{"a":"\xe2\x80\xa6","b":[1,2]}')),
    ]
    return rows


@pytest.mark.parametrize("sealed_from, accepted_through", [(None, 0), (2, 0), (100, 0), (None, 6), (3, 24)])
def test_judging_rows_in_bulk_gives_every_row_the_verdict_judge_gives_it(sealed_from, accepted_through):
    from uuid import UUID

    rows = _odd_rows()
    one, bulk = RecordRules(KEY), RecordRules(KEY)
    one.sealed_from = bulk.sealed_from = sealed_from
    one.accepted_through = bulk.accepted_through = accepted_through
    expected = []
    for seq, oid, version, topic, state in rows:
        problem, body = one.judge(seq, oid, version, topic, state)
        expected.append((seq, oid.hex if isinstance(oid, UUID) else oid, version, topic, state, problem, body, oid))
    judged = bulk.judge_rows(rows)
    assert [(r[0], r[5]) for r in judged] == [(r[0], r[5]) for r in expected]
    assert judged == expected and bulk.sealed_from == one.sealed_from
    assert sum(r[5] is None for r in judged) > 5 and sum(r[5] is not None for r in judged) > 10
