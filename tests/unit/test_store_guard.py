"""The check behind ``store_independent`` (tests/conftest.py): while such a test runs, every way to the
store under test in tests/backend.py refuses, so a wrongly marked test fails instead of silently
skipping the PostgreSQL pass."""

from __future__ import annotations

import pytest

from tests import backend


@pytest.mark.parametrize("reach", [
    lambda tmp: backend.make_settings(data_dir=tmp),
    lambda tmp: backend.environment_for(tmp),
    lambda tmp: backend.connect(tmp),
    lambda tmp: backend.event_states(tmp, "Created"),
])
def test_a_guarded_test_cannot_reach_the_store(tmp_path, reach):
    backend.GUARDED = "a test marked store_independent"
    try:
        with pytest.raises(backend.StoreReached, match="remove the marker"):
            reach(tmp_path)
    finally:
        backend.GUARDED, backend.REACHED[:] = None, []
    reach_ok = backend.make_settings(data_dir=tmp_path)  # unguarded again
    assert reach_ok.data_dir == tmp_path
