"""The console's signed session cookie, on its own."""

from __future__ import annotations

from service.console.session import LIFETIME_SECONDS, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_reads_back_as_it_was_written():
    sessions = Sessions(b"k" * 32, clock=Clock())
    session = sessions.new(digest=b"\x01" * 32)
    assert sessions.load(sessions.dump(session)) == session


def test_an_expired_session_is_no_session():
    clock = Clock()
    sessions = Sessions(b"k" * 32, clock=clock)
    cookie = sessions.dump(sessions.new(digest=b"\x01" * 32))
    clock.now += LIFETIME_SECONDS
    assert sessions.load(cookie) is None


def test_a_cookie_signed_with_another_key_or_altered_is_no_session():
    ours, theirs = Sessions(b"k" * 32, clock=Clock()), Sessions(b"x" * 32, clock=Clock())
    cookie = theirs.dump(theirs.new(digest=b"\x01" * 32))
    assert ours.load(cookie) is None
    mine = ours.dump(ours.new())
    body, signature = mine.split(".")
    for bad in (body + "x." + signature, "." + signature, mine + ".", "", "a" * 600, "%%%.%%%"):
        assert ours.load(bad) is None


def test_csrf_tokens_belong_to_one_session():
    sessions = Sessions(b"k" * 32, clock=Clock())
    one, two = sessions.new(), sessions.new()
    assert sessions.csrf_ok(one, sessions.csrf_token(one))
    assert not sessions.csrf_ok(one, sessions.csrf_token(two))
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(one, "") and not sessions.csrf_ok(one, "é")
