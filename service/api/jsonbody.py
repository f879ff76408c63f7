"""The one rule every endpoint decodes a JSON body by.

UTF-8 only: no byte-order mark, no UTF-16 or UTF-32, which ``json.loads`` on bytes would
otherwise guess. ``POST /v2/verify`` (on both of its paths) and the check that runs before
every other JSON endpoint use it, so a body is acceptable everywhere or nowhere. A string with
a lone surrogate (``"\\ud800"``) is well-formed JSON; each endpoint refuses it in the field
that holds it (``has_lone_surrogate``), so the error names that field.
"""

from __future__ import annotations

import json
from typing import Any


class BodyError(ValueError):
    """Why a body is not acceptable JSON; the message is a sentence for the caller."""


def load_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("Not valid JSON: the body must be UTF-8.") from None
    try:
        value = json.loads(text)  # a leading byte-order mark is refused here too
    except RecursionError:
        raise BodyError("Nested too deeply.") from None
    except ValueError:
        raise BodyError("Not valid JSON.") from None
    return value


def has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
