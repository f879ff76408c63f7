"""KEYLEDGER_REDIS_URL is checked at start: a bad value names the variable and what it accepts."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError


@pytest.mark.parametrize("value", ["http://127.0.0.1:6379", "redis://", "redis://host:99999/0", "redis://host/db",
                                   "redis://host:6379/0?x=1", "redis://ho st:6379"])
def test_a_bad_redis_url_stops_the_start_naming_the_variable(value):
    with pytest.raises(SettingsError, match="KEYLEDGER_REDIS_URL"):
        Settings.from_env({"KEYLEDGER_REDIS_URL": value})


@pytest.mark.parametrize("value", ["redis://127.0.0.1:6379/0", "redis://:secret@cache:6380", "rediss://cache/2"])
def test_a_good_redis_url_is_kept_and_never_shown(value):
    settings = Settings.from_env({"KEYLEDGER_REDIS_URL": value})
    assert settings.redis_url == value
    assert "secret" not in repr(settings)
