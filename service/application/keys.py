"""Use cases: scoped API keys (issue, read as of a time, change, roll, revoke)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.application.base import (
    COMMAND_ATTEMPTS,
    DESCRIPTION_MAX,
    LedgerApplication,
    parse_uuid,
    text_problem,
)
from service.domain.actors import Actor, RequestInfo
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
from service.domain.limits import checked_limits
from service.domain.restrictions import parse_restrictions
from service.domain.scopes import CATALOGUE, normalise, unknown_scopes

MAX_GRACE_SECONDS = 604_800
MAX_KEY_LIFETIME = timedelta(days=36_525)  # 100 years
UNCHANGED: Any = object()  # an optional argument left out (where None means "none")


class KeyUseCases(LedgerApplication):
    def issue_key(self, app_id: str, *, description: str, scopes: list[str],
                  expires_at: datetime | None = None, by: Actor, request: RequestInfo,
                  origin: str = "user", limits: list | None = None, restrictions: Any = None,
                  ) -> tuple[dict, str]:
        """Create a key for an app; the secret is returned this once. ``restrictions`` as the
        caller sent them (checked here): recorded as the key's ``Restricted`` event."""
        restrictions = parse_restrictions(restrictions)
        self._manageable_app(app_id, by)
        limits = checked_limits(limits) if limits is not None else None
        now = self.now()
        key, secret = self._new_key(app_id=app_id, description=description, scopes=scopes,
                                    expires_at=expires_at, origin=origin, by=by, request=request,
                                    now=now)
        if limits:  # its own event, saved with the key's creation (one atomic save)
            key.change_limits(limits, by=by.ref, request=request.as_dict(), at=now)
        if restrictions is not None:
            key.restrict(restrictions, by=by.ref, request=request.as_dict(), at=now)
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
                   if_match: int | None = None, limits: list | None = None,
                   restrictions: Any = UNCHANGED) -> dict:
        if restrictions is not UNCHANGED:
            restrictions = parse_restrictions(restrictions)
        if scopes is not None:
            scopes = self._checked_scopes(scopes)
        if description is not None:
            self._check_description(description)
        if limits is not None:
            limits = checked_limits(limits)

        def change(key: ApiKey, now: datetime) -> None:
            if scopes is not None:
                key.change_scopes(scopes, by=by.ref, request=request.as_dict(), at=now)
            if description is not None:
                key.change_description(description, by=by.ref, request=request.as_dict(), at=now)
            if limits is not None:
                key.change_limits(limits, by=by.ref, request=request.as_dict(), at=now)
            if restrictions is not UNCHANGED:
                key.restrict(restrictions, by=by.ref, request=request.as_dict(), at=now)

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
            "limits": [dict(limit) for limit in key.limits],
            "restrictions": key.restrictions,
            # leaks (service.application.leaks): when first reported, and the latest report
            "leaked_at": key.leaked_at,
            **({"leak": {"url": key.leaks[-1][0], "source": key.leaks[-1][1]}} if key.leaks else {}),
        }

    def scope_catalogue(self) -> dict[str, str]:
        return dict(CATALOGUE)

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
        if problem := text_problem(description, DESCRIPTION_MAX, required=False):
            raise InvalidRequest(f"The description is not acceptable: {problem}", description=[problem])

    def _update_key(self, key_id: str, by: Actor, change: Callable[[ApiKey, datetime], None],
                    if_match: int | None) -> dict:
        """Load, check, change, save; on a concurrent write reload and retry (bounded)."""
        self._require_person(by)
        for _attempt in range(COMMAND_ATTEMPTS):
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

    def _visible_key(self, key_id: str, by: Actor) -> ApiKey:
        self._require_person(by)
        key = self._find(ApiKey, parse_uuid(key_id, "key"))
        if key is None:
            raise NotFound(f"No key with id {key_id!r}.")
        try:
            self._visible_app(key.app_id, by)
        except NotFound:
            raise NotFound(f"No key with id {key_id!r}.") from None
        return key
