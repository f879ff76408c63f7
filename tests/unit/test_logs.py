"""The JSON log formatter: one line per record, control characters escaped, secrets redacted."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import JsonFormatter

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

KEY = "ak_" + "Zq9" * 12 + "Q7"
LEGACY = "AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("keyledger.test", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_line_with_control_characters_escaped() -> None:
    line = JsonFormatter().format(record("path %s", "/a\nb\rc\x00d\x1b[31m\x7f", path="/x\n{\"forged\": 1}"))
    assert "\n" not in line and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert "\x7f" not in line
    entry = json.loads(line)
    assert entry["msg"] == "path /a\nb\rc\x00d\x1b[31m\x7f" and entry["path"] == '/x\n{"forged": 1}'
    assert entry["level"] == "WARNING" and entry["logger"] == "keyledger.test" and entry["ts"].endswith("Z")


def test_keys_and_legacy_secrets_are_redacted_in_the_message_fields_and_tracebacks() -> None:
    try:
        raise ValueError(f"bad {KEY}")
    except ValueError:
        import sys

        failing = record("saw %s and %s", KEY, LEGACY, path=f"/v2/keys/{KEY}", actor=LEGACY)
        failing.exc_info = sys.exc_info()
    line = JsonFormatter().format(failing)
    assert KEY not in line and LEGACY not in line and "Zq9Zq9" not in line
    entry = json.loads(line)
    assert entry["path"] == "/v2/keys/ak_…[redacted]" and "ValueError" in entry["exc"]
