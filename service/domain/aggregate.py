"""The base every Keyledger aggregate shares: each event says who did it and from where.

``by`` is an actor reference (``account:<id>``, ``key:<id>``, ``system:<name>``) and
``request`` is ``{"id", "ip", "user_agent"}`` (empty when there was no request). The
event's ``timestamp`` is passed in by the application's clock, never taken here.
"""

from __future__ import annotations

from eventsourcing.domain import Aggregate


class LedgerAggregate(Aggregate):
    class Event(Aggregate.Event):
        by: str
        request: dict

    class Created(Event, Aggregate.Created):
        pass
