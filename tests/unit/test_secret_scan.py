"""The suite's scan for secrets at rest (tests/conftest.py ``secrets_in``): a set look-up of every
window of the blob's word runs, which must find exactly what a search for each secret finds."""

from __future__ import annotations

import random

import pytest

from service import credentials
from tests.conftest import secrets_in

pytestmark = pytest.mark.store_independent


def naive(blob: bytes, pool: list[str]) -> list[str]:
    text = blob.decode("utf-8", "replace")
    return [s for s in pool if s in text]


def test_it_finds_what_a_search_for_each_secret_finds() -> None:
    rng = random.Random(7)
    pool = [credentials.generate("ak_") for _ in range(300)] + [credentials.generate("pat_") for _ in range(100)] \
        + [credentials.generate_opaque(40) for _ in range(100)] + [credentials.generate_opaque(30) for _ in range(100)]
    for round_ in range(20):
        blob = bytearray(rng.randbytes(20_000))
        for secret in rng.sample(pool, 5):
            at = rng.randrange(len(blob))
            left = rng.choice([b"", b"x", b"AB_", b"\x00", b"0" * 50])  # inside a longer run too
            blob[at:at] = left + secret.encode() + rng.choice([b"", b"z", b"\xff", b"9" * 40])
        blob[100:100] = pool[0][:-1].encode()  # a secret cut short is not one
        assert sorted(secrets_in(bytes(blob), pool)) == sorted(naive(bytes(blob), pool)), round_
        assert len(secrets_in(bytes(blob), pool)) >= 5 - 1  # (two draws may land inside one another)


def test_a_str_an_empty_pool_and_a_secret_at_either_end() -> None:
    a, b = credentials.generate("ak_"), credentials.generate_opaque(30)
    assert secrets_in(f"{a} and {b}", [a, b]) == [a, b]
    assert secrets_in(a + b, [a, b]) == [a, b]
    assert secrets_in("nothing here", [a, b]) == []
    assert secrets_in(a, []) == []
    assert secrets_in("x ak_shortened y", ["not a word run!", a]) == []
    assert secrets_in("x not a word run! y", ["not a word run!", a]) == ["not a word run!"]
