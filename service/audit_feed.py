"""The live audit feed: new audit events as they are committed, resumable by position.

``follow`` reads the audit view after a position (``after``: the ``seq`` of the last event a
consumer has) and keeps reading as the view grows, yielding each batch of new events in ``seq``
order — and ``None`` when ``heartbeat`` seconds passed with nothing to say (the HTTP feed writes
a blank line then, so proxies keep the connection). A consumer that stops and comes back with the
``seq`` of the last event it wrote gets every later event exactly once: the view's rows are
written in log order, each batch in one transaction (``projections.audit``), so once ``MAX(seq)``
reads N, no event at or below N can still appear.

Used by ``keyledger audit export --follow`` (which keeps the views up to date itself through
``refresh``: no server need run) and by ``GET /v2/audit/events.jsonl?follow=1`` (whose process's
follower keeps them up to date). No Flask here, no gunicorn: plain iteration over the view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from projections.audit import AuditFilter, AuditLog

log = logging.getLogger("keyledger.audit_feed")

CHUNK = 1000  # events read at a time
MAX_STREAMS = 16  # follow streams served at once by one process (more: 503, retry later)


class Streams:
    """How many follow streams a process serves at once (``MAX_STREAMS``): a slot is taken when a
    stream starts and given back when it ends, however it ends."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    def take(self) -> bool:
        return self._slots.acquire(blocking=False)

    def give_back(self) -> None:
        self._slots.release()


def follow(audit: AuditLog, filters: AuditFilter, *, after: int = 0, owner_id: str | None = None,
           poll: float = 0.2, heartbeat: float | None = None, until: float | None = None,
           refresh: Callable[[], None] | None = None, stopping: threading.Event | None = None,
           ) -> Iterator[list[dict] | None]:
    """New matching events after position ``after``, batch by batch, as they are committed;
    ``None`` after each ``heartbeat`` seconds without any. Ends at ``until`` (a ``time.monotonic()``
    value) or when ``stopping`` is set, always between batches; never otherwise.

    ``refresh`` brings the view up to date before each read (a process that does not follow the log
    itself); its failures (a busy or unreachable store) are logged once and retried at the next poll."""
    stopping = stopping or threading.Event()
    scanned = after  # every event up to here has been looked at (matching or not)
    beat_due = time.monotonic() + heartbeat if heartbeat else None
    failing = False
    while not stopping.is_set():
        events: list[dict] = []
        behind = False  # more events already waiting after this batch
        try:
            if refresh is not None:
                refresh()
            head = audit.last_seq()
            while scanned < head and len(events) < CHUNK:
                page = audit.page(filters, owner_id=owner_id, after=scanned, limit=CHUNK, upto=head)
                events.extend(page)
                scanned = page[-1]["seq"] if len(page) == CHUNK else head
            behind = scanned < head
            if failing:
                log.info("the audit feed reads the audit view again")
            failing = False
        except Exception as error:  # noqa: BLE001 - the store is busy or down: say so once, keep polling
            if not failing:
                log.warning("the audit feed could not read the audit view (%s); retrying every %s s",
                            type(error).__name__, poll)
            failing = True
        if events:
            yield events
            if heartbeat:
                beat_due = time.monotonic() + heartbeat
        if behind:
            continue  # no pause while there is a backlog
        now = time.monotonic()
        if not events and beat_due is not None and now >= beat_due:
            yield None
            beat_due = now + heartbeat  # type: ignore[operator]
        if until is not None and now >= until:
            return
        wait = poll
        if beat_due is not None:
            wait = min(wait, max(beat_due - now, 0.0))
        if until is not None:
            wait = min(wait, max(until - now, 0.0))
        stopping.wait(wait)


def events_after(audit: AuditLog, filters: AuditFilter, *, after: int = 0,
                 owner_id: str | None = None) -> Iterator[dict]:
    """Every matching event after position ``after`` up to the log's end as it is now (one pass
    of ``follow``)."""
    for batch in follow(audit, filters, after=after, owner_id=owner_id, until=0.0):
        if batch:
            yield from batch
