"""Rows from stored JSON in bulk passes: a judged record's parsed state (``Page.state``) read the
way the mapper would decode it, so a view can make the rows of the events it handles without
building event objects. Every reader here answers only for states it reads exactly as the
decoded event reads; for anything else (``Unread``) the caller decodes the record instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from projections.timefmt import rfc3339


class Unread(Exception):
    """A stored state (or value) not read from its JSON: the caller decodes the record instead."""


def readable_class(cls: type) -> bool:
    """Whether a stored state of ``cls`` decodes to itself (no upcasting: the class's first version)."""
    return isinstance(cls, type) and getattr(cls, "class_version", 1) == 1


_an_id = re.compile("[0-9a-fA-F]{32}").fullmatch  # a record's originator id, as the mapper reads a UUID


def key_text(originator_hex: str) -> str:
    """``str(originator_id)`` of the decoded event, from the record's id (32 hex digits: a record
    ``read_stored`` reads), without building a UUID."""
    h = originator_hex.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def moment(value: Any) -> datetime | None:
    """The time the mapper decodes from a stored time (``{"_type_": "datetime_iso", "_data_": text}``):
    None for a value of any other shape (not a dict of those two keys, or its ``_data_`` not a str);
    ValueError when ``datetime.fromisoformat`` refuses the text (as the mapper does)."""
    if type(value) is dict and len(value) == 2 and value.get("_type_") == "datetime_iso":
        data = value.get("_data_")
        if type(data) is str:
            return _fromisoformat(data)
    return None


_fromisoformat = datetime.fromisoformat


def time_text(value: Any) -> str:
    """``rfc3339`` of the time the mapper decodes from a stored value (``datetime_iso``)."""
    found = moment(value)  # what the mapper decodes (or refuses: ValueError)
    if found is None:
        raise Unread
    data = value["_data_"]
    # The mapper's own times (UTC, with microseconds) are their text: rfc3339's without building it.
    if len(data) == 32 and data[26:] == "+00:00" and data[10] == "T" and data[19] == "." \
            and found.microsecond and data[11:13] != "24" and data.isascii():
        return data[:26] + "Z"
    return rfc3339(found)  # type: ignore[return-value]


def text(value: Any) -> str:
    """A value the decoded event holds as the same ``str``."""
    if type(value) is not str:
        raise Unread
    return value


def texts(value: Any) -> list[str]:
    """A list of ``str`` the decoded event holds as the same list."""
    if type(value) is not list:
        raise Unread
    for item in value:
        if type(item) is not str:
            raise Unread
    return value


def plain(value: Any) -> Any:
    """A value the decoded event holds as the same JSON (strings, integers, booleans, None, and
    lists and objects of them; no typed value, no float)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is list:
        for item in value:
            plain(item)
        return value
    if kind is dict:
        if "_type_" in value and "_data_" in value and len(value) == 2:
            raise Unread
        for item in value.values():
            plain(item)
        return value
    raise Unread


def decodes(state: Any) -> bool:
    """Whether the mapper decodes ``state`` (a parsed stored state, ``Page.state``) without failing,
    to the same plain values (a record it cannot decode is refused, and takes no effect): every
    typed value one of the mapper's times or UUIDs of the right text, no float (those the
    transcoder reads), no class version (an event of a later shape is upcast)."""
    if type(state) is not dict or "class_version" in state or (
            len(state) == 2 and "_type_" in state and "_data_" in state):
        return False
    try:
        for value in state.values():  # the common shapes inline: strings, lists of them, a time
            kind = type(value)
            if kind is str or value is None or kind is int or kind is bool:
                continue
            if kind is list:
                for item in value:
                    if type(item) is not str:
                        _revivable(item)
            elif kind is dict:
                if len(value) == 2 and "_type_" in value and "_data_" in value:
                    _revivable(value)
                else:
                    for item in value.values():
                        if type(item) is not str:
                            _revivable(item)
            else:
                return False  # a float: the transcoder's reading
    except (Unread, ValueError, TypeError):
        return False
    return True


def _revivable(value: Any) -> None:
    """Raise unless the mapper decodes ``value`` without failing, to itself but for its times and UUIDs."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return
    if kind is list:
        for item in value:
            _revivable(item)
        return
    if kind is not dict:
        raise Unread  # a float: the transcoder's reading
    if len(value) == 2 and "_type_" in value and "_data_" in value:
        name, data = value["_type_"], value["_data_"]
        if type(data) is not str:
            raise Unread
        if name == "datetime_iso":
            datetime.fromisoformat(data)
        elif name == "uuid_hex":
            UUID(data)
        else:
            raise Unread  # another type: decoded (or refused) by the mapper
        return
    for item in value.values():
        _revivable(item)


def readable(record: tuple, state: Any) -> bool:
    """Whether a judged record with its parsed state (``Page.state``) may be read from its JSON: not
    refused, its id 32 hex digits, and decoded as it is stored (``decodes``)."""
    return record[5] is None and state is not None and type(record[1]) is str and _an_id(record[1]) is not None \
        and decodes(state)


def read_stored(reader: Callable[[tuple, dict], Any], record: tuple, state: Any) -> Any:
    """What ``reader`` makes of a judged record and its parsed state (``Page.state``: None when
    refused, or not a JSON object), or None when the record is to be decoded instead: refused, not
    decoded as it is stored (``decodes``), or of a shape the reader does not read."""
    if not readable(record, state):
        return None
    return read_checked(reader, record, state)


def read_checked(reader: Callable[[tuple, dict], Any], record: tuple, state: Any) -> Any:
    """``read_stored`` of a state found ``readable`` already (``Page.readable``; None: not)."""
    if state is None:
        return None
    try:
        return reader(record, state)
    except (Unread, KeyError, ValueError, TypeError):
        return None


def record_version(record: tuple) -> int:
    """The decoded event's ``originator_version``: the record's, an integer."""
    found = record[2]
    if type(found) is not int:
        raise Unread
    return found
