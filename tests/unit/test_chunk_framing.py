"""The buffering worker frames a chunked body as its bytes arrive: where it ends, that it needs
more, or that it is not chunked encoding (or too large) — before any of it reaches the app."""

from __future__ import annotations

import pytest

from service.buffering import MAX_BODY, BodyRefused, chunked_end

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


def frame(data: bytes) -> int | None:
    return chunked_end(bytearray(data), 0, 0)[0]


@pytest.mark.parametrize(("body", "end"), [
    (b"0\r\n\r\n", 5),
    (b"5\r\nhello\r\n0\r\n\r\n", 15),
    (b"5;ext=1\r\nhello\r\n0\r\n\r\n", 21),
    (b"A\r\n0123456789\r\n0\r\n\r\nnext", 20),  # bytes after the end are not the body's
    (b"5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n", 27),
])
def test_a_whole_chunked_body_ends_where_its_last_chunk_and_trailers_end(body: bytes, end: int) -> None:
    assert frame(body) == end


@pytest.mark.parametrize("body", [b"", b"5", b"5\r\nhel", b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\n",
                                  b"0\r\nTrailer: x\r\n"])
def test_a_body_cut_short_needs_more(body: bytes) -> None:
    assert frame(body) is None


def test_framing_resumes_where_it_stopped() -> None:
    buf = bytearray(b"5\r\nhello\r\n3\r\nab")
    end, pos, total = chunked_end(buf, 0, 0)
    assert end is None and pos == 10 and total == 5
    buf += b"c\r\n0\r\n\r\n"
    assert chunked_end(buf, pos, total)[0] == len(buf)


@pytest.mark.parametrize("body", [b"zz\r\nhello\r\n0\r\n\r\n", b"\r\nhello", b"5\r\nhelloXX0\r\n\r\n",
                                  b"-5\r\nhello\r\n", b"0x5\r\nhello\r\n", b"1" * 2000])
def test_a_body_that_is_not_chunked_encoding_is_refused_at_once(body: bytes) -> None:
    with pytest.raises(BodyRefused) as refused:
        frame(body)
    assert refused.value.status == 400


def test_a_chunk_larger_than_the_buffer_is_refused_before_its_bytes_arrive() -> None:
    with pytest.raises(BodyRefused) as refused:
        frame(b"ffffffffff\r\n{")
    assert refused.value.status == 413
    with pytest.raises(BodyRefused):
        frame(b"%x\r\n" % (MAX_BODY // 2) + b"a" * (MAX_BODY // 2) + b"\r\n" + b"%x\r\n" % (MAX_BODY // 2 + 1))
