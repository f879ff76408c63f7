"""KEYLEDGER_BULK_SECOND_PROCESS_FROM: a number of events, or off; anything else names the variable."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError


@pytest.mark.parametrize(("value", "kept"), [("0", 0), ("250000", 250_000), ("off", None), (" OFF ", None)])
def test_a_good_value_is_kept(value, kept):
    assert Settings.from_env({"KEYLEDGER_BULK_SECOND_PROCESS_FROM": value}).bulk_second_process_from == kept


def test_the_default_is_a_hundred_thousand_events():
    assert Settings.from_env({}).bulk_second_process_from == 100_000


@pytest.mark.parametrize("value", ["-1", "1e5", "never", "10000000000000", "١٠", "1 000"])
def test_a_bad_value_stops_the_start_naming_the_variable(value):
    with pytest.raises(SettingsError, match="KEYLEDGER_BULK_SECOND_PROCESS_FROM"):
        Settings.from_env({"KEYLEDGER_BULK_SECOND_PROCESS_FROM": value})
