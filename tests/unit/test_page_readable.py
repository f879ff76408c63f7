"""A bulk page judges once, for every view, whether a record may be read from its stored JSON
(``Page.readable``): a record whose seal held (the source vouches for it) is taken as decodable;
any other is checked value by value (``projections.stored.readable``), and a refused one never is."""

from __future__ import annotations

import orjson

from projections.follower import Page

ODD = {"timestamp": {"_type_": "datetime_iso", "_data_": "2030-01-01T00:00:00+00:00"},
       "price": {"_type_": "decimal_str", "_data_": "1.10"}}  # a value the checks do not read
PLAIN = {"timestamp": {"_type_": "datetime_iso", "_data_": "2030-01-01T00:00:00+00:00"}, "note": "x"}


def judged(seq: int, state: dict, refused: str | None = None) -> tuple:
    body = orjson.dumps(state)
    return (seq, "ab" * 16, 1, "t:T", body, refused, body, "ab" * 16)


def test_a_vouched_record_is_readable_and_any_other_is_checked():
    records = [judged(1, ODD), judged(2, PLAIN), judged(3, PLAIN, refused="its seal does not verify")]
    checked = Page(judged=records)
    assert checked.readable(0) is None  # a typed value the checks do not read: decoded instead
    assert checked.readable(1) == PLAIN
    assert checked.readable(2) is None
    vouched = Page(judged=records, vouched=lambda record: record[5] is None)
    assert vouched.readable(0) == ODD and vouched.readable(1) == PLAIN
    assert vouched.readable(2) is None  # refused: no state at all
    later = vouched.after(1)  # a view part-way through the page keeps the same judgement
    assert later.readable(0) == PLAIN and later.readable(1) is None
