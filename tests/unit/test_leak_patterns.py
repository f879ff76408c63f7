"""The regular expressions registered with GitHub's secret scanning find every generated key and
token, and none of the near-misses."""

from __future__ import annotations

import re
from pathlib import Path

from service import credentials
from service.github_scanning import TOKEN_PATTERNS

README = Path(__file__).resolve().parents[2] / "README.md"
API_KEY = re.compile(TOKEN_PATTERNS["keyledger_api_key"])
PERSONAL = re.compile(TOKEN_PATTERNS["keyledger_personal_token"])


def test_generated_keys_and_tokens_are_found_in_text():
    for _ in range(200):
        key = credentials.generate(credentials.API_KEY_PREFIX)
        token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
        for text in (key, f'API_KEY="{key}"', f"Authorization: Key {key}\n", f"k={key};", f"`{key}`"):
            assert API_KEY.findall(text) == [key]
            assert PERSONAL.findall(text) == []
        assert PERSONAL.findall(f"token: {token}\n") == [token]
        assert API_KEY.findall(token) == []


def test_near_misses_are_not_found():
    key = credentials.generate(credentials.API_KEY_PREFIX)
    token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
    misses = [key[:-1], key + "x", key + "_", "x" + key, "my_" + key, "AK_" + key[3:], "ak-" + key[3:],
              key[:10] + "-" + key[11:], key[:20] + "é" + key[21:], "sk_" + key[3:]]
    for miss in misses:
        assert API_KEY.findall(miss) == [], miss
    for miss in (token[:-1], token + "0", "xpat_" + token[4:], "PAT_" + token[4:], "pat_" + token[5:]):
        assert PERSONAL.findall(miss) == [], miss


def test_the_readme_registers_these_patterns():
    text = README.read_text("utf-8")
    for pattern in TOKEN_PATTERNS.values():
        assert f"`{pattern}`" in text


def test_a_keys_file_that_cannot_be_used_is_a_settings_error(tmp_path):
    import pytest

    from service.settings import Settings, SettingsError

    for content in ("not json", "[1]", '{"public_keys": [{"key_identifier": "x", "key": "nope"}]}'):
        path = tmp_path / "keys.json"
        path.write_text(content)
        with pytest.raises(SettingsError, match="KEYLEDGER_GITHUB_SCANNING_KEYS"):
            Settings.from_env({"KEYLEDGER_GITHUB_SCANNING_KEYS": str(path)})
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.from_env({"KEYLEDGER_GITHUB_SCANNING_KEYS": str(tmp_path / "missing.json")})
