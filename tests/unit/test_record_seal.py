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
