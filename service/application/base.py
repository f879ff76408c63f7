"""The base of the Keyledger application: time, persistence, and the rules every use case shares.

Use cases are grouped by subject, one module each (accounts, apps, keys, legacy OAuth2, the
deprecation campaign); ``service.application.Keyledger`` combines them into the one
eventsourcing application. Library errors are translated here into ``service.domain.errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.domain.actors import Actor
from service.domain.errors import Conflict, Forbidden, NotFound, Unavailable

Clock = Callable[[], datetime]

DESCRIPTION_MAX = 200
NAME_MAX = 100
COMMAND_ATTEMPTS = 5  # a command that meets a concurrent write is re-run this many times at most


def utc_now() -> datetime:
    return datetime.now(UTC)


def text_problem(value: str, maximum: int, *, required: bool = True, secret: bool = False) -> str | None:
    """Why ``value`` is not acceptable text (None if it is): length, control characters,
    lone surrogates (which cannot be stored as UTF-8), or — unless it is a ``secret`` itself —
    something shaped like a credential: a pasted secret must never become an event."""
    if required and not value.strip():
        return f"Give 1 to {maximum} characters."
    if len(value) > maximum:
        return f"At most {maximum} characters."
    for char in value:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            return "Contains a control character or an invalid (surrogate) code point."
    if not secret and credentials.looks_like_a_secret(value):
        return ("Looks like a credential (an API key, token or client secret): never paste a secret "
                "here; if one was exposed, revoke or roll it.")
    return None


def parse_uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"No {what} with id {text!r}.") from None


class LedgerApplication(Application):
    """The eventsourcing application with Keyledger's clock, digester and error translation."""

    def __init__(self, env: dict[str, str] | None = None, *, digester: credentials.Digester,
                 clock: Clock = utc_now) -> None:
        super().__init__(env=env)
        self.digester = digester
        self.clock = clock

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now

    # -- the notification log, for projections ------------------------------------

    def read_events(self, after: int, limit: int) -> list[tuple[int, DomainEventProtocol]]:
        """Up to ``limit`` events recorded after position ``after``, oldest first."""
        try:
            notifications = self.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False)
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        to_event = self.mapper.to_domain_event
        return [(n.id, to_event(n)) for n in notifications]

    def last_position(self) -> int:
        try:
            return self.recorder.max_notification_id() or 0
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error

    # -- internals -----------------------------------------------------------------

    def _save_new(self, *aggregates: Any, conflict: str) -> None:
        try:
            self.save(*aggregates)
        except IntegrityError:
            raise Conflict(conflict) from None
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error

    def _find(self, cls: type, aggregate_id: UUID) -> Any:
        try:
            aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        return aggregate if isinstance(aggregate, cls) else None

    def _get(self, cls: type, aggregate_id: UUID, what: str) -> Any:
        aggregate = self._find(cls, aggregate_id)
        if aggregate is None:
            raise NotFound(f"No {what} with id {aggregate_id}.")
        return aggregate

    @staticmethod
    def _require_person(by: Actor) -> None:
        if by.kind == "key":
            raise Forbidden("API keys cannot manage apps or keys; use a personal token (pat_…).")

