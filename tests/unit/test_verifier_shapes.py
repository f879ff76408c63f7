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
