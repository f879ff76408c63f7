"""The Keyledger application: its public methods are the use cases.

Endpoints, the command line, scheduler jobs and scripts call these methods and nothing
deeper. Time comes from ``clock`` and secrets from ``service.credentials``; the aggregates
receive them as arguments. Library errors are translated here into ``service.domain.errors``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.domain.accounts import Account
from service.domain.actors import ROLES, Actor, RequestInfo
from service.domain.apps import App
from service.domain.errors import (
    Conflict,
    Forbidden,
    InvalidExpiry,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    ScopeUnknown,
    Unavailable,
)
from service.domain.keys import ApiKey
from service.domain.scopes import CATALOGUE, normalise, unknown_scopes

Clock = Callable[[], datetime]

DESCRIPTION_MAX = 200
NAME_MAX = 100
MAX_GRACE_SECONDS = 604_800
MAX_KEY_LIFETIME = timedelta(days=36_525)  # 100 years
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_COMMAND_ATTEMPTS = 5


def utc_now() -> datetime:
    return datetime.now(UTC)



def _slugify(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "app"
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    return f"{base}-{suffix}"


def _text_problem(value: str, maximum: int, *, required: bool = True) -> str | None:
    """Why ``value`` is not acceptable text (None if it is): length, control characters,
    or lone surrogates (which cannot be stored as UTF-8)."""
    if required and not value.strip():
        return f"Give 1 to {maximum} characters."
    if len(value) > maximum:
        return f"At most {maximum} characters."
    for char in value:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            return "Contains a control character or an invalid (surrogate) code point."
    return None


def _parse_uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"No {what} with id {text!r}.") from None


class Keyledger(Application):
    """Accounts, apps and their scoped API keys, as immutable events."""

    name = "keyledger"
    # A key changed many times still loads in a fraction of a millisecond.
    snapshotting_intervals = {ApiKey: 50}

    def __init__(self, env: dict[str, str] | None = None, *, digester: credentials.Digester,
                 clock: Clock = utc_now) -> None:
        super().__init__(env=env)
        self.digester = digester
        self.clock = clock

    # -- time ----------------------------------------------------------------------

    def now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        return now

    # -- accounts ------------------------------------------------------------------

    def register_account(self, *, email: str, name: str, role: str, by: Actor,
                         request: RequestInfo) -> tuple[dict, str]:
        """Create an account and its personal token; the token is returned this once."""
        if not by.is_admin:
            raise Forbidden("Only an admin can create accounts.")
        email = email.strip()
        errors = {}
        if not _EMAIL.fullmatch(email) or _text_problem(email, 254):
            errors["email"] = ["Not a valid e-mail address."]
        if problem := _text_problem(name, NAME_MAX):
            errors["name"] = [problem]
        if role not in ROLES:
            errors["role"] = [f"Must be one of: {', '.join(ROLES)}."]
        if errors:
            raise InvalidRequest("The account could not be created; see details.", **errors)
        token = credentials.generate(credentials.PERSONAL_TOKEN_PREFIX)
        account = Account._create(
            Account.Registered, id=Account.create_id(email), email=email, name=name.strip(), role=role,
            token_digest=self.digester.hexdigest(token), token_display=credentials.display_hint(token),
            by=by.ref, request=request.as_dict(), timestamp=self.now(),
        )
        self._save_new(account, conflict=f"An account with e-mail {email!r} already exists.")
        return self._account_view(account), token

    def get_account(self, account_id: str) -> dict:
        account = self._get(Account, _parse_uuid(account_id, "account"), "account")
        return self._account_view(account)

    @staticmethod
    def _account_view(account: Account) -> dict:
        return {"id": str(account.id), "email": account.email, "name": account.name,
                "role": account.role, "created_at": account.created_on}

    # -- apps ----------------------------------------------------------------------

    def create_app(self, *, name: str, by: Actor, request: RequestInfo, slug: str | None = None,
                   owner_id: str | None = None, origin: str = "user") -> tuple[dict, dict, str]:
        """Register an app with its auto-generated ``All`` key; returns (app, key, secret)."""
        self._require_person(by)
        if by.is_auditor:
            raise Forbidden("Auditors read; they cannot create apps.")
        if owner_id is not None and owner_id != by.id and not by.is_admin:
            raise Forbidden("Only an admin can create an app for another owner; leave out owner_id.")
        owner_id = owner_id or by.id
        errors = {}
        if problem := _text_problem(name, NAME_MAX):
            errors["name"] = [problem]
        if slug is not None and not _SLUG.fullmatch(slug):
            errors["id"] = ["Use 1 to 63 lower-case letters, digits and inner hyphens."]
        try:
            owner_uuid = UUID(owner_id)
        except (ValueError, TypeError, AttributeError):
            errors["owner_id"] = ["Not an account id."]
        if errors:
            raise InvalidRequest("The app could not be created; see details.", **errors)
        owner_id = str(owner_uuid)  # canonical form, whatever spelling was sent
        owner = self._find(Account, owner_uuid)
        if owner is None or owner.role != "owner":
            if by.is_admin and owner_id != by.id:
                raise InvalidRequest("owner_id must name an existing account with the owner role.",
                                     owner_id=["No owner account with this id."])
            if owner is None or owner.role not in ("owner", "admin"):
                raise Forbidden("Only owners and admins can create apps.")
        now = self.now()
        slug = slug or _slugify(name)
        app = App._create(App.Registered, id=App.create_id(slug), slug=slug, name=name.strip(),
                          owner_id=owner_id, origin=origin, by=by.ref, request=request.as_dict(),
                          timestamp=now)
        key, secret = self._new_key(
            app_id=slug, description="Default key (auto-generated)", scopes=["All"], expires_at=None,
            origin="migration" if origin == "migration" else "auto", by=by, request=request, now=now,
        )
        self._save_new(app, key, conflict=f"An app with id {slug!r} already exists; choose another id.")
        return self._app_view(app), self.key_view(key, now), secret

    def get_app(self, app_id: str, *, by: Actor) -> dict:
        return self._app_view(self._visible_app(app_id, by))

    @staticmethod
    def _app_view(app: App) -> dict:
        return {"id": app.slug, "name": app.name, "owner_id": app.owner_id, "created_at": app.created_on}

    # -- keys ----------------------------------------------------------------------

    def issue_key(self, app_id: str, *, description: str, scopes: list[str],
                  expires_at: datetime | None = None, by: Actor, request: RequestInfo,
                  origin: str = "user") -> tuple[dict, str]:
        """Create a key for an app; the secret is returned this once."""
        self._manageable_app(app_id, by)
        now = self.now()
        key, secret = self._new_key(app_id=app_id, description=description, scopes=scopes,
                                    expires_at=expires_at, origin=origin, by=by, request=request,
                                    now=now)
        self._save_new(key, conflict="The key could not be created; try again.")
        return self.key_view(key, now), secret

    def get_key(self, key_id: str, *, by: Actor, as_of: datetime | None = None) -> dict:
        """The key now, or as it stood at ``as_of`` (NotFound if it did not exist yet)."""
        key = self._visible_key(key_id, by)
        if as_of is None:
            return self.key_view(key, self.now())
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        try:
            as_of.astimezone(UTC)
        except OverflowError:  # before year 1 or after 9999 in UTC: no key existed then
            raise NotFound(f"Key {key_id} did not exist at {as_of.isoformat()}.") from None
        version = None
        try:
            for domain_event in self.events.get(key.id):
                if domain_event.timestamp <= as_of:
                    version = domain_event.originator_version
                else:
                    break
            if version is None:
                raise NotFound(f"Key {key_id} did not exist at {as_of.isoformat()}.")
            past = self.repository.get(key.id, version=version)
        except PersistenceError as error:
            raise Unavailable("The event store cannot be read right now; retry shortly.") from error
        return self.key_view(past, as_of)

    def change_key(self, key_id: str, *, by: Actor, request: RequestInfo,
                   scopes: list[str] | None = None, description: str | None = None,
                   if_match: int | None = None) -> dict:
        if scopes is not None:
            scopes = self._checked_scopes(scopes)
        if description is not None:
            self._check_description(description)

        def change(key: ApiKey, now: datetime) -> None:
            if scopes is not None:
                key.change_scopes(scopes, by=by.ref, request=request.as_dict(), at=now)
            if description is not None:
                key.change_description(description, by=by.ref, request=request.as_dict(), at=now)

        return self._update_key(key_id, by, change, if_match)

    def revoke_key(self, key_id: str, *, by: Actor, request: RequestInfo,
                   if_match: int | None = None) -> dict:
        """Revoke a key at once; revoking a revoked key changes nothing."""

        def revoke(key: ApiKey, now: datetime) -> None:
            key.revoke(by=by.ref, request=request.as_dict(), at=now)

        return self._update_key(key_id, by, revoke, if_match)

    def roll_key(self, key_id: str, *, by: Actor, request: RequestInfo, grace_seconds: int = 0,
                 if_match: int | None = None) -> tuple[dict, str]:
        """Give the key a new secret; the old one verifies for ``grace_seconds`` more."""
        if not isinstance(grace_seconds, int) or not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidRequest("grace_seconds must be a whole number from 0 to 604800 (7 days).",
                                 grace_seconds=["Must be between 0 and 604800."])
        new_secret = credentials.generate(credentials.API_KEY_PREFIX)

        def roll(key: ApiKey, now: datetime) -> None:
            key.roll(digest=self.digester.hexdigest(new_secret),
                     display=credentials.display_hint(new_secret),
                     grace_until=now + timedelta(seconds=grace_seconds), by=by.ref,
                     request=request.as_dict(), at=now)

        return self._update_key(key_id, by, roll, if_match), new_secret

    def visible_key_id(self, key_id: str, *, by: Actor) -> str:
        """The canonical id of a key the caller may see (NotFound otherwise): for reads of
        its history from the audit trail."""
        return str(self._visible_key(key_id, by).id)

    def listing_owner(self, *, by: Actor) -> str | None:
        """Whose apps the caller may list: their own (owners), or everyone's (None)."""
        self._require_person(by)
        return None if by.reads_everything else by.id

    @staticmethod
    def key_view(key: ApiKey, now: datetime) -> dict:
        return {
            "id": str(key.id), "app_id": key.app_id, "description": key.description,
            "scopes": list(key.scopes), "status": key.status_at(now), "created_at": key.created_on,
            "expires_at": key.expires_at, "revoked_at": key.revoked_at, "last_used_at": None,
            "display": key.display, "origin": key.origin, "version": key.version,
        }

    def scope_catalogue(self) -> dict[str, str]:
        return dict(CATALOGUE)

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

    def _new_key(self, *, app_id: str, description: str, scopes: list[str],
                 expires_at: datetime | None, origin: str, by: Actor, request: RequestInfo,
                 now: datetime) -> tuple[ApiKey, str]:
        scopes = self._checked_scopes(scopes)
        self._check_description(description)
        if expires_at is not None:
            expires_at = self._checked_expiry(expires_at, now)
        secret = credentials.generate(credentials.API_KEY_PREFIX)
        key = ApiKey._create(
            ApiKey.Issued, id=uuid4(), app_id=app_id, description=description, scopes=scopes,
            expires_at=expires_at, digest=self.digester.hexdigest(secret),
            display=credentials.display_hint(secret), origin=origin, by=by.ref,
            request=request.as_dict(), timestamp=now,
        )
        return key, secret

    @staticmethod
    def _checked_expiry(expires_at: datetime, now: datetime) -> datetime:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        try:
            expires_at = expires_at.astimezone(UTC)
        except OverflowError:  # outside years 1 to 9999 once in UTC
            raise InvalidExpiry("expires_at must be a time in the next 100 years.",
                                expires_at=["Out of range."]) from None
        if expires_at > now + MAX_KEY_LIFETIME:
            raise InvalidExpiry("expires_at must be at most 100 years from now.",
                                expires_at=["Too far in the future."])
        if expires_at <= now:
            raise InvalidExpiry("expires_at must be in the future.", expires_at=["Must be later than now."])
        return expires_at

    @staticmethod
    def _checked_scopes(scopes: Iterable[Any]) -> list[str]:
        scopes = list(scopes)
        if not scopes:
            raise InvalidRequest("Give at least one scope.", scopes=["Must not be empty."])
        if not all(isinstance(s, str) for s in scopes):
            raise InvalidRequest("Scopes are strings.", scopes=["Each scope is a string."])
        unknown = unknown_scopes(scopes)
        if unknown:
            raise ScopeUnknown(
                f"Unknown scope(s): {', '.join(unknown)}. Use scopes from GET /v2/scopes.",
                unknown=unknown, valid_scopes=list(CATALOGUE),
            )
        return normalise(scopes)

    @staticmethod
    def _check_description(description: str) -> None:
        if problem := _text_problem(description, DESCRIPTION_MAX, required=False):
            raise InvalidRequest(f"The description is not acceptable: {problem}", description=[problem])

    def _update_key(self, key_id: str, by: Actor, change: Callable[[ApiKey, datetime], None],
                    if_match: int | None) -> dict:
        """Load, check, change, save; on a concurrent write reload and retry (bounded)."""
        self._require_person(by)
        for _attempt in range(_COMMAND_ATTEMPTS):
            key = self._visible_key(key_id, by)
            if by.is_auditor:
                raise Forbidden("Auditors read; they cannot change keys.")
            if if_match is not None and key.version != if_match:
                raise PreconditionFailed(
                    f"The key is at version {key.version}, not {if_match}; read it again and retry.",
                    current_version=key.version)
            now = self.now()
            change(key, now)
            try:
                self.save(key)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return self.key_view(key, now)
        raise Conflict("The key is being changed by someone else right now; retry.")

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

    def _visible_app(self, slug: str, by: Actor) -> App:
        self._require_person(by)
        missing = NotFound(f"No app with id {slug!r}.")
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            raise missing
        app = self._find(App, App.create_id(slug))
        if app is None:
            raise missing
        if by.reads_everything or (by.is_owner and app.owner_id == by.id):
            return app
        raise missing

    def _manageable_app(self, slug: str, by: Actor) -> App:
        app = self._visible_app(slug, by)
        if by.is_auditor:
            raise Forbidden("Auditors read; they cannot change apps or keys.")
        return app

    def _visible_key(self, key_id: str, by: Actor) -> ApiKey:
        self._require_person(by)
        key = self._find(ApiKey, _parse_uuid(key_id, "key"))
        if key is None:
            raise NotFound(f"No key with id {key_id!r}.")
        try:
            self._visible_app(key.app_id, by)
        except NotFound:
            raise NotFound(f"No key with id {key_id!r}.") from None
        return key
