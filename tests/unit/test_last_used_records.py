"""Uses noted by a key's index record (the hot path) are written under the key's UUID."""

from __future__ import annotations

import pytest

from projections.last_used import _by_key_id
from projections.verification import KeyRecord, grant_of

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

ID = bytes(range(16))
OTHER = bytes(range(16, 32))


def test_uses_noted_by_record_or_by_uuid_come_out_by_uuid_latest_first():
    grant = grant_of("app", "Predict")
    record = KeyRecord.of(ID, grant, None, None)
    revoked = KeyRecord.of(ID, grant, None, 5.0)  # the same key after a change: a new record
    assert _by_key_id({record: 3.0, revoked: 2.0, OTHER: 1.0}) == {ID: 3.0, OTHER: 1.0}
    assert _by_key_id({record: 3.0, revoked: 4.0}) == {ID: 4.0}
    assert _by_key_id({ID: 7.0, record: 3.0}) == {ID: 7.0}
    assert all(type(k) is bytes for k in _by_key_id({record: 1.0}))
