"""Use cases: apps, each born with an auto-generated ``All`` key."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from service.application.base import COMMAND_ATTEMPTS, NAME_MAX, LedgerApplication, text_problem
from service.domain.accounts import Account
from service.domain.actors import Actor, RequestInfo
from service.domain.apps import App
from service.domain.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from service.domain.leaks import POLICIES
from service.domain.limits import checked_limits

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")



def _slugify(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "app"
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
    return f"{base}-{suffix}"


class AppUseCases(LedgerApplication):
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
        if problem := text_problem(name, NAME_MAX):
            errors["name"] = [problem]
        if slug is not None and not SLUG.fullmatch(slug):
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
        app, key, secret = self._new_app(slug=slug, name=name, owner_id=owner_id, origin=origin, by=by,
                                         request=request, now=now)
        self._save_new(app, key, conflict=f"An app with id {slug!r} already exists; choose another id.")
        return self._app_view(app), self.key_view(key, now), secret

    def _new_app(self, *, slug: str, name: str, owner_id: str, origin: str, by: Actor,
                 request: RequestInfo, now: datetime) -> tuple[App, Any, str]:
        """An app and its auto-generated ``All`` key (origin ``migration`` for imported apps)."""
        app = App._create(App.Registered, id=App.create_id(slug), slug=slug, name=name.strip(),
                          owner_id=owner_id, origin=origin, by=by.ref, request=request.as_dict(),
                          timestamp=now)
        key, secret = self._new_key(
            app_id=slug, description="Default key (auto-generated)", scopes=["All"], expires_at=None,
            origin="migration" if origin == "migration" else "auto", by=by, request=request, now=now,
        )
        return app, key, secret

    def get_app(self, app_id: str, *, by: Actor) -> dict:
        return self._app_view(self._visible_app(app_id, by))

    @staticmethod
    def _app_view(app: App) -> dict:
        return {"id": app.slug, "name": app.name, "owner_id": app.owner_id, "created_at": app.created_on,
                "limits": [dict(limit) for limit in app.limits],
                "leak_policy": app.leak_policy}  # None: the deployment's (service.application.leaks)

    def change_app(self, app_id: str, *, by: Actor, request: RequestInfo, limits: list | None = None,
                   leak_policy: str | None = None) -> dict:
        """Change an app, in one save: the rate limits every key of the app shares (``[]``: none), what a
        leaked key of the app gets (revoke or report), or both. What is given as it was changes nothing."""
        if limits is not None:
            limits = checked_limits(limits)
        if leak_policy is not None and leak_policy not in POLICIES:
            raise InvalidRequest("leak_policy must be revoke or report.", leak_policy=["Must be revoke or report."])
        for _attempt in range(COMMAND_ATTEMPTS):
            app = self._manageable_app(app_id, by)
            now, recorded, changed = self.now(), request.as_dict(), False
            if limits is not None:
                changed |= app.change_limits(limits, by=by.ref, request=recorded, at=now)
            if leak_policy is not None:
                changed |= app.change_leak_policy(leak_policy, by=by.ref, request=recorded, at=now)
            if not changed:
                return self._app_view(app)
            try:
                self.save(app)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return self._app_view(app)
        raise Conflict("The app is being changed by someone else right now; retry.")

    def listing_owner(self, *, by: Actor) -> str | None:
        """Whose apps the caller may list: their own (owners), or everyone's (None)."""
        self._require_person(by)
        return None if by.reads_everything else by.id

    @staticmethod
    @staticmethod
    def _require_person(by: Actor) -> None:
        if by.kind == "key":
            raise Forbidden("API keys cannot manage apps or keys; use a personal token (pat_…).")
        if by.is_introspector:
            raise Forbidden("An introspector account only asks POST /v2/introspect; it manages nothing.")

    def _visible_app(self, slug: str, by: Actor) -> App:
        self._require_person(by)
        missing = NotFound(f"No app with id {slug!r}.")
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
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
