"""The verifier's hot path: a hit needs no check of the credential's shape; only a miss is
classified, and a string longer than any credential is refused without an HMAC."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from projections.verification import DIGEST_BYTES, NOT_FOUND, Grant, KeyEntry, VerificationIndex
from service import credentials
from service.credentials import LONGEST_CREDENTIAL, Digester
from service.verification import MALFORMED, Verifier

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

PEPPER = b"p" * 32


class CountingDigester(Digester):
    def __init__(self) -> None:
        super().__init__(PEPPER)
        self.calls = 0

    def digest(self, secret: str) -> bytes:
        self.calls += 1
        return super().digest(secret)


@pytest.fixture
def world():
    digester = CountingDigester()
    index = VerificationIndex()
    key = credentials.generate("ak_")
    index.by_digest[Digester(PEPPER).digest(key)[:DIGEST_BYTES]] = KeyEntry(
        bytes(16), Grant("app", frozenset({"Predict"})), None, None)
    uses = SimpleNamespace(touch=lambda *_: None, count_legacy=lambda *_: None)  # LastUsed's hot-path half
    verifier = Verifier(digester, index, lambda: datetime(2026, 1, 1, tzinfo=UTC), uses,  # type: ignore[arg-type]
                        now=lambda: 1_800_000_000.0)
    return verifier, digester, key


def test_an_issued_key_is_valid_after_one_digest(world):
    verifier, digester, key = world
    assert verifier.verify(key, "Predict")[0] == "VALID"
    assert digester.calls == 1


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1],                       # one character short
    lambda k: k + "a",                      # one too many
    lambda k: k[:10] + "!" + k[11:],        # outside base62, same length
    lambda k: k[:10] + "é" + k[11:],        # outside ASCII, same length
    lambda k: k[:-1] + ("a" if k[-1] != "a" else "b"),  # wrong checksum
])
def test_a_mangled_key_is_malformed_not_unknown(world, mangle):
    verifier, _, key = world
    assert verifier.verify(mangle(key), "Predict") == (MALFORMED, None, None)


def test_a_string_longer_than_any_credential_gets_no_digest(world):
    verifier, digester, _ = world
    assert verifier.verify("ak_" + "a" * LONGEST_CREDENTIAL, "Predict") == (MALFORMED, None, None)
    assert verifier.verify("x" * (LONGEST_CREDENTIAL + 1), "Predict") == (NOT_FOUND, credentials.ACCESS_TOKEN,
                                                                         None)
    assert digester.calls == 0
    # At the bound, it is looked up like any other string.
    assert verifier.verify("x" * LONGEST_CREDENTIAL, "Predict")[0] == NOT_FOUND
    assert digester.calls == 1


NOW = 1_800_000_000.0


def _records():
    """Index records in every state ``verdict`` tells apart, for the written-out copy in ``verify``."""
    from projections.verification import KeyRecord, RestrictedGrant
    from service.domain.restrictions import compile_restriction

    read_only = Grant("app", frozenset({"Predict", "Search"}))
    everything = Grant("app", frozenset({"All"}))
    browser = RestrictedGrant(read_only, compile_restriction({"browser": ["https://www.example.com"]}),
                              '{"browser":["https://www.example.com"]}', 0)
    kid = bytes(range(16))
    return {
        "live": KeyRecord.of(kid, read_only, None, None),
        "all scopes": KeyRecord.of(kid, everything, None, None),
        "expires later": KeyRecord.of(kid, read_only, NOW + 60, None),
        "expired": KeyRecord.of(kid, read_only, NOW - 1, None),
        "expires now": KeyRecord.of(kid, read_only, NOW, None),
        "revoked": KeyRecord.of(kid, read_only, None, NOW - 1),
        "revoked now": KeyRecord.of(kid, read_only, None, NOW),
        "rolled, ends later": KeyRecord.of(kid, read_only, None, NOW + 60),
        "revoked and expired": KeyRecord.of(kid, read_only, NOW - 5, NOW - 1),
        "browser": KeyRecord.of(kid, browser, None, None),
    }


@pytest.mark.parametrize("name", list(_records()))
@pytest.mark.parametrize("scope", [None, "Predict", "Models:Add"])
@pytest.mark.parametrize("app_id", [None, "app", "other"])
@pytest.mark.parametrize("origin", [None, "https://www.example.com", "https://evil.example"])
def test_verify_answers_as_verdict_for_every_index_record(name, scope, app_id, origin):
    """``verify`` writes ``verdict``'s branch for an index record out (a call less on the hot path):
    the two must agree on every state, scope, app and client fact."""
    from projections.verification import verdict
    from service.domain.restrictions import RequestFacts

    record = _records()[name]
    index = VerificationIndex()
    key = credentials.generate("ak_")
    index.by_digest[Digester(PEPPER).digest(key)[:DIGEST_BYTES]] = record
    counted = []
    uses = SimpleNamespace(touch=lambda *_: None, count_legacy=lambda *_: None, pending={})
    usage = SimpleNamespace(valid=lambda *a: counted.append(("valid", a)),
                            refused=lambda *a: counted.append(("refused", a)))
    verifier = Verifier(Digester(PEPPER), index, lambda: datetime(2026, 1, 1, tzinfo=UTC), uses,  # type: ignore[arg-type]
                        now=lambda: NOW, usage=usage)  # type: ignore[arg-type]
    facts = RequestFacts(origin=origin)
    expected = verdict(record, scope, app_id, NOW, facts)
    code, kind, entry = verifier.verify(key, scope, app_id, facts=facts)
    assert (code, kind, entry) == (expected, "api_key", record)
    assert counted == [("valid" if expected == "VALID" else "refused",
                        (record, NOW) if expected == "VALID" else (record, expected, NOW))]
    assert uses.pending == ({record: NOW} if expected == "VALID" else {})
