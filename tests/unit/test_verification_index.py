"""The in-memory verification index: its verdict rules entry by entry, and the memory shape that
keeps ten million keys near 165 bytes each: an API key is one packed record
(scripts/bench_10m.py measures the whole)."""

from __future__ import annotations

import sys

import pytest

from projections.verification import (
    ACCESS_TOKEN,
    API_KEY,
    APP_MISMATCH,
    DIGEST_BYTES,
    EXPIRED,
    INSUFFICIENT_SCOPE,
    LEGACY_TOKEN_SUNSET,
    NOT_FOUND,
    PERSONAL_TOKEN,
    REVOKED,
    VALID,
    AccessTokenEntry,
    Grant,
    KeyEntry,
    KeyRecord,
    LegacyClientState,
    TokenEntry,
    VerificationIndex,
    _earliest,
    verdict,
)

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

ID = bytes(range(16))
NOW = 1_900_000_000.0


def key(scopes=("Predict", "Search"), app="app", expires_at=None, ends_at=None) -> KeyEntry:
    return KeyEntry(ID, Grant(app, frozenset(scopes)), expires_at, ends_at)


@pytest.mark.parametrize(("entry", "scope", "app_id", "expected"), [
    (key(), "Predict", None, VALID),
    (key(), None, None, VALID),
    (key(), "Predict", "app", VALID),
    (key(), "Models:Add", None, INSUFFICIENT_SCOPE),
    (key(), "Predict", "other", APP_MISMATCH),
    (key(scopes=("All",)), "Models:Add", None, VALID),
    (key(scopes=()), "Predict", None, INSUFFICIENT_SCOPE),
    (key(ends_at=NOW), "Predict", None, REVOKED),  # from its instant on
    (key(ends_at=NOW + 1), "Predict", None, VALID),
    (key(expires_at=NOW), "Predict", None, EXPIRED),
    (key(expires_at=NOW + 1), "Predict", None, VALID),
    (key(expires_at=NOW, ends_at=NOW), "Predict", None, REVOKED),  # revoked wins
    (key(expires_at=NOW - 1, ends_at=NOW + 1), None, None, EXPIRED),
    (TokenEntry(ID, "owner", None), None, None, VALID),
    (TokenEntry(ID, "owner", None), "Predict", None, INSUFFICIENT_SCOPE),
    (TokenEntry(ID, "owner", None), None, "app", INSUFFICIENT_SCOPE),
    (TokenEntry(ID, "owner", NOW), None, None, REVOKED),
])
def test_the_verdict_of_each_kind_of_entry(entry, scope, app_id, expected):
    assert verdict(entry, scope, app_id, NOW) == expected
    if type(entry) is KeyEntry:  # the same key as a packed record: the same verdict, the same reading
        record = KeyRecord.of(entry.id, entry.grant, entry.expires_at, entry.ends_at)
        assert verdict(record, scope, app_id, NOW) == expected
        assert (record.kind, record.id, record.app_id, record.scopes, record.expires_at, record.ends_at,
                record.role) == (entry.kind, entry.id, entry.app_id, entry.scopes, entry.expires_at,
                                 entry.ends_at, entry.role)


def test_the_verdict_of_a_legacy_access_token():
    client = LegacyClientState(ID, "client", "app", None)
    token = AccessTokenEntry(client, NOW + 60)
    assert verdict(token, "Models:Add", "app", NOW) == VALID  # "All" for its app
    assert verdict(token, None, "other", NOW) == APP_MISMATCH
    assert verdict(token, None, None, NOW + 60) == EXPIRED
    assert verdict(token, "Predict", None, NOW + 59) == VALID
    client.ends_at = NOW  # disabled, or the sunset
    assert verdict(token, None, None, NOW) == LEGACY_TOKEN_SUNSET
    assert (token.kind, token.id, token.app_id, token.ends_at) == (ACCESS_TOKEN, ID, "app", NOW)


def test_check_looks_up_the_digest_prefix():
    index = VerificationIndex()
    entry = key()
    index.by_digest[b"d" * DIGEST_BYTES] = entry
    assert index.check(b"d" * 32, "Predict", None, NOW) == (VALID, entry)
    assert index.check(b"d" * 32, "Models:Add", None, NOW) == (INSUFFICIENT_SCOPE, entry)
    assert index.check(b"d" * 32, None, "other", NOW) == (APP_MISMATCH, entry)
    assert index.check(b"e" * 32, "Predict", None, NOW) == (NOT_FOUND, None)
    assert len(index) == 1


def test_an_entry_reads_as_before_its_grant_was_shared():
    entry = key()
    assert (entry.kind, entry.role, entry.app_id, entry.scopes) == (API_KEY, None, "app",
                                                                      frozenset({"Predict", "Search"}))
    assert entry.key_id == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    token = TokenEntry(ID, "owner", None)
    assert (token.kind, token.app_id, token.scopes, token.expires_at) == (PERSONAL_TOKEN, None, frozenset(), None)


def test_keys_of_one_app_with_the_same_scopes_share_one_grant():
    index = VerificationIndex()
    first, second = index._grant("app", "Predict Search"), index._grant("app", "Predict Search")
    assert first is second and first.scopes == frozenset({"Predict", "Search"}) and not first.everything
    assert first.app_id == "app" and index._grant("other", "Predict").app_id == "other"
    assert index._grant("other", "Predict Search") is not first
    assert index._grant("other", "Predict Search").scopes is first.scopes
    assert index._grant("app", "All").everything


def test_a_key_s_record_and_its_digest_fit_the_memory_budget():
    # CPython allocates in steps of 16 bytes: a key's record (expiry, grant number, UUID: 28
    # bytes, and the GC's header) takes 80, one with an end 96; the 15-byte digest 48 (16 bytes
    # would take 64). With the dict's ~35 bytes at ten million, a key costs about 165 bytes; the
    # target is 200.
    index = VerificationIndex()
    index.apply([issued("ab", expires_at=EXPIRES)])
    record = index.by_digest[bytes.fromhex("ab" * 32)[:DIGEST_BYTES]]
    assert type(record) is KeyRecord and sys.getsizeof(record) <= 80
    index.apply([revoked("ab")])
    assert sys.getsizeof(index.by_digest[bytes.fromhex("ab" * 32)[:DIGEST_BYTES]]) <= 96
    assert DIGEST_BYTES == 15 and sys.getsizeof(b"d" * DIGEST_BYTES) <= 48
    assert len(KeyEntry.__slots__) == 4 and sys.getsizeof(key()) <= 64  # the view a verdict reads


ISSUED_AT = 1_900_000_000.0
EXPIRES = ISSUED_AT + 86_400.123456  # a fraction of a second survives the record


def issued(digest: str, scopes=("Predict",), app="app", expires_at=None):
    from datetime import UTC, datetime
    from uuid import UUID

    from service.domain.keys import ApiKey
    return ApiKey.Issued(originator_id=UUID(bytes=ID), originator_version=1, originator_topic="",
                         timestamp=datetime.fromtimestamp(ISSUED_AT, UTC), app_id=app, description="d",
                         scopes=list(scopes), digest=digest * 32, display="ak_…abcd", origin="user",
                         by="account:o", request={},
                         expires_at=None if expires_at is None else datetime.fromtimestamp(expires_at, UTC))


def revoked(*digests: str, at: float = ISSUED_AT + 10):
    from datetime import UTC, datetime
    from uuid import UUID

    from service.domain.keys import ApiKey
    return ApiKey.Revoked(originator_id=UUID(bytes=ID), originator_version=2,
                          timestamp=datetime.fromtimestamp(at, UTC), digests=[d * 32 for d in digests],
                          by="account:o", request={})


def scopes_changed(*digests: str, scopes=("Search",)):
    from datetime import UTC, datetime
    from uuid import UUID

    from service.domain.keys import ApiKey
    return ApiKey.ScopesChanged(originator_id=UUID(bytes=ID), originator_version=3,
                                timestamp=datetime.fromtimestamp(ISSUED_AT + 20, UTC),
                                digests=[d * 32 for d in digests], scopes=list(scopes), previous_scopes=[], by="account:o",
                                request={})


def test_a_key_s_record_reads_back_as_the_key_it_was_issued():
    index = VerificationIndex()
    index.apply([issued("ab", scopes=("Predict", "Search"), app="vision", expires_at=EXPIRES),
                 issued("cd", app="other")])
    entry = index.by_digest[bytes.fromhex("ab" * 32)[:DIGEST_BYTES]]
    assert type(entry) is KeyRecord
    assert (entry.kind, entry.id, entry.app_id, entry.scopes, entry.expires_at, entry.ends_at) == (
        API_KEY, ID, "vision", frozenset({"Predict", "Search"}), EXPIRES, None)
    assert index.by_digest[bytes.fromhex("cd" * 32)[:DIGEST_BYTES]].expires_at is None  # never expires
    assert entry.key_id == "00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert index.check(bytes.fromhex("ab" * 32), "Search", "vision", EXPIRES - 1e-6)[0] == VALID
    assert index.check(bytes.fromhex("ab" * 32), "Search", "vision", EXPIRES)[0] == EXPIRED
    assert index.check(bytes.fromhex("cd" * 32), "Search", None, EXPIRES)[0] == INSUFFICIENT_SCOPE
    assert index.check(bytes.fromhex("cd" * 32), "Predict", "vision", NOW)[0] == APP_MISMATCH
    assert index.check(bytes.fromhex("ef" * 32), None, None, NOW) == (NOT_FOUND, None)
    assert index.by_digest.keys() == {bytes.fromhex(d * 32)[:DIGEST_BYTES] for d in ("ab", "cd")}


def test_a_revocation_writes_a_new_record_that_ends_the_key_and_no_later_one_postpones_it():
    index = VerificationIndex()
    index.apply([issued("ab", expires_at=EXPIRES)])
    digest = bytes.fromhex("ab" * 32)[:DIGEST_BYTES]
    before = index.by_digest[digest]
    index.apply([revoked("ab", at=ISSUED_AT + 10)])
    assert index.by_digest[digest] is not before and before == index.by_digest[digest][:len(before)]
    assert index.check(digest, "Predict", None, ISSUED_AT + 10 - 1e-6)[0] == VALID
    assert index.check(digest, "Predict", None, ISSUED_AT + 10)[0] == REVOKED
    index.apply([revoked("ab", at=ISSUED_AT + 99)])  # a second end never postpones the first
    assert index.by_digest[digest].ends_at == ISSUED_AT + 10
    index.apply([scopes_changed("ab", scopes=("All",))])  # new scopes keep the end and the expiry
    entry = index.by_digest[digest]
    assert (entry.ends_at, entry.expires_at, entry.scopes) == (ISSUED_AT + 10, EXPIRES, frozenset({"All"}))
    assert index.check(digest, "Models:Add", None, ISSUED_AT)[0] == VALID
    assert index.check(digest, "Models:Add", None, ISSUED_AT + 10)[0] == REVOKED
    index.apply([revoked("ef")])  # an unknown digest: nothing
    assert len(index) == 1


def test_an_entry_held_as_an_object_follows_events_too():
    index = VerificationIndex()
    digest = bytes.fromhex("ab" * 32)[:DIGEST_BYTES]
    index.by_digest[digest] = key(scopes=("Predict",))
    index.apply([scopes_changed("ab", scopes=("Search",))])
    assert index.check(digest, "Search", "app", NOW)[0] == VALID
    assert index.check(digest, "Predict", "app", NOW)[0] == INSUFFICIENT_SCOPE
    index.apply([revoked("ab", at=NOW)])
    assert index.check(digest, "Search", "app", NOW)[0] == REVOKED
    assert index.by_digest[digest].id == ID


def test_an_end_only_ever_comes_sooner():
    # A second end (a revocation during a roll's grace period, a client disabled after the
    # sunset) never postpones the first.
    assert _earliest(None, 5.0) == 5.0
    assert _earliest(5.0, None) == 5.0
    assert _earliest(5.0, 7.0) == 5.0
    assert _earliest(7.0, 5.0) == 5.0


def test_a_rolled_key_s_new_secret_keeps_its_expiry_and_its_old_one_ends_with_the_grace():
    from datetime import UTC, datetime, timedelta

    from service.domain.keys import ApiKey

    issued_at = datetime(2030, 1, 1, tzinfo=UTC)
    expires_at, grace_until = issued_at + timedelta(days=30), issued_at + timedelta(minutes=10)
    api_key = ApiKey(app_id="vision", description="d", scopes=["Predict"], expires_at=expires_at,
                     digest="ab" * 32, display="ak_…abcd", origin="user", by="account:o", request={})
    api_key.roll(digest="cd" * 32, display="ak_…cdef", grace_until=grace_until, by="account:o", request={},
                 at=issued_at)
    index = VerificationIndex()
    index.apply(api_key.collect_events())
    old, new = bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32)
    at = issued_at.timestamp()
    assert index.check(old, "Predict", "vision", at)[0] == VALID
    assert index.check(old, "Predict", "vision", grace_until.timestamp())[0] == REVOKED
    assert index.check(new, "Predict", "vision", grace_until.timestamp())[0] == VALID
    assert index.check(new, "Predict", "vision", expires_at.timestamp())[0] == EXPIRED


def test_grants_made_by_threads_at_once_keep_their_numbers():
    import threading

    from projections.verification import GRANTS, grant_of
    barrier = threading.Barrier(4)
    made: list = []

    def make(worker: int) -> None:
        barrier.wait()
        made.extend(grant_of(f"threads-{worker}-{i}", "Predict") for i in range(300))

    threads = [threading.Thread(target=make, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1200 and all(GRANTS[g.number] is g for g in made)


@pytest.mark.parametrize("originator_hex, key_id", [
    ("0123456789abcdef0123456789abcdef", "01234567-89ab-cdef-0123-456789abcdef"),
    ("0123456789ABCDEF0123456789ABCDEF", "01234567-89ab-cdef-0123-456789abcdef"),
    ("0x23456789abcdef0123456789abcdef", None),
    (" 123456789abcdef0123456789abcdef", None),
    ("1_23456789abcdef0123456789abcdef", None),
    ("g123456789abcdef0123456789abcdef", None),
    ("\u0663" + "123456789abcdef0123456789abcdef", None),  # a digit, but not an ASCII one
    ("0123456789abcdef0123456789abcde", None),
    (None, None),
])
def test_a_new_key_s_row_read_from_its_stored_json_names_its_key_as_the_decoded_event_would(originator_hex, key_id):
    import json

    from projections.verification import _issued_row as issued_row

    def _issued_row(originator_hex, state):
        return issued_row(originator_hex, json.dumps(state).encode())

    state = {"expires_at": {"_type_": "datetime_iso", "_data_": "2027-01-02T03:04:05.5+00:00"}, "scopes": ["A", "B"],
             "app_id": "app", "digest": "ab" * 32}
    row = _issued_row(originator_hex, state)
    if key_id is None:
        assert row is None
    else:
        assert row == (b"\xab" * 32, key_id, "app", "A B", 1798859045.5)
    assert _issued_row("0" * 32, {**state, "class_version": 2}) is None
    assert _issued_row("0" * 32, None) is None and _issued_row("0" * 32, ["a"]) is None
    assert issued_row("0" * 32, b"{") is None
    assert _issued_row("0" * 32, {**state, "expires_at": "2027-01-02"}) is None
    assert _issued_row("0" * 32, {**state, "expires_at": None})[4] is None
