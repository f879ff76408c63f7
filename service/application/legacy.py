"""Use cases: legacy OAuth2 until the sunset (client credentials, access tokens, their use).

Existing customers keep working, unchanged, until ``LegacyPolicy.sunset_at``: an admin gives
an app client credentials (or ``import-legacy`` brings them over), clients exchange them for
access tokens at ``POST /v2/token``, and each use of a token is recorded, at most once per
client per window, before the request that used it is answered. At the sunset (or once an
app's legacy access is disabled) no token is issued and none is honoured.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from eventsourcing.persistence import IntegrityError, PersistenceError

from service import credentials
from service.application.apps import SLUG
from service.application.base import COMMAND_ATTEMPTS, NAME_MAX, LedgerApplication, text_problem
from service.domain.accounts import Account
from service.domain.actors import Actor, RequestInfo
from service.domain.apps import App
from service.domain.errors import (
    Conflict,
    Forbidden,
    InvalidClient,
    InvalidRequest,
    LegacyAccessEnded,
    NotFound,
    Unavailable,
)
from service.domain.legacy import LegacyClient, LegacyUseWindow

CLIENT_ID_MAX = 128
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SECRET_MAX = 256
TOKEN_ATTEMPTS = 20  # clients of one app ask for tokens at once; each retry is a reload and a save
OAUTH2 = "system:oauth2"  # who issues and uses access tokens: the client, through OAuth2


@dataclass(frozen=True)
class LegacyPolicy:
    sunset_at: datetime = datetime(2018, 1, 1, tzinfo=UTC)
    token_ttl: timedelta = timedelta(hours=48)
    use_window: timedelta = timedelta(hours=1)

    def window_of(self, at: datetime) -> tuple[datetime, datetime]:
        """The use window (start, end) that ``at`` falls in; windows are aligned to the epoch."""
        size = self.use_window.total_seconds()
        start = datetime.fromtimestamp((at.timestamp() // size) * size, UTC)
        return start, start + self.use_window


class LegacyUseCases(LedgerApplication):
    legacy: LegacyPolicy

    def legacy_open(self, now: datetime | None = None) -> bool:
        """Whether legacy OAuth2 still works (the sunset has not come)."""
        return (now or self.now()) < self.legacy.sunset_at

    def issue_legacy_credentials(self, app_id: str, *, by: Actor, request: RequestInfo
                                 ) -> tuple[dict, str]:
        """Give an app OAuth2 client credentials (admins, before the sunset). The client secret
        is returned this once; only its digest is kept."""
        if not by.is_admin:
            raise Forbidden("Only an admin can issue legacy client credentials.")
        app = self._visible_app(app_id, by)
        now = self.now()
        if not self.legacy_open(now):
            raise Conflict("Legacy OAuth2 ended at the sunset: no more client credentials are issued; "
                           "give the app an API key instead.")
        secret = credentials.generate_opaque(credentials.CLIENT_SECRET_LENGTH)
        client = self._new_client(app, credentials.new_client_id(), secret, origin="admin", by=by,
                                  request=request, now=now)
        self._save_new(app, client, conflict=f"App {app_id!r} changed meanwhile; retry.")
        return self.legacy_client_view(client), secret

    def issue_access_token(self, client_id: str, client_secret: str, *, request: RequestInfo
                           ) -> tuple[str, datetime, int]:
        """Exchange client credentials for an access token: (token, expires_at, seconds it lives).
        No token outlives the sunset."""
        if (not isinstance(client_id, str) or not isinstance(client_secret, str)
                or not _CLIENT_ID.fullmatch(client_id) or not 0 < len(client_secret) <= SECRET_MAX):
            raise InvalidClient("Unknown client or wrong client secret.")
        digest = self.digester.hexdigest(client_secret)
        token = credentials.generate_opaque(credentials.ACCESS_TOKEN_LENGTH)
        token_digest = self.digester.hexdigest(token)
        for _attempt in range(TOKEN_ATTEMPTS):
            client = self._find(LegacyClient, LegacyClient.create_id(client_id))
            if client is None or client.client_id != client_id or not hmac.compare_digest(
                    client.secret_digest, digest):
                raise InvalidClient("Unknown client or wrong client secret.")
            now = self.now()
            if not self.legacy_open(now):
                raise LegacyAccessEnded("Access tokens ended at the sunset; use an API key "
                                        "('Authorization: Key …') instead.")
            expires_at = min(now + self.legacy.token_ttl, self.legacy.sunset_at)  # nothing outlives the sunset
            client.issue_access_token(digest=token_digest, display=credentials.display_hint(token),
                                      expires_at=expires_at, by=OAUTH2, request=request.as_dict(),
                                      at=now)
            try:
                self.save(client)
            except IntegrityError:  # another token for this client was issued meanwhile
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return token, expires_at, round((expires_at - now).total_seconds())
        raise Unavailable("Too many token requests for this client at once; retry shortly.")

    def record_legacy_use(self, client_aggregate_id: UUID, *, token_display: str, at: datetime,
                          request: RequestInfo) -> bool:
        """Record that a client's access token was used in the window of ``at``, once per window:
        False if the window was already recorded (by this process or another)."""
        client = self._find(LegacyClient, client_aggregate_id)
        if client is None:
            return False
        start, end = self.legacy.window_of(at)
        use = LegacyUseWindow._create(
            LegacyUseWindow.LegacyTokenUsed,
            id=LegacyUseWindow.create_id(client.client_id, start), app_id=client.app_id,
            client_id=client.client_id, token_display=token_display, window_start=start,
            window_end=end, by=OAUTH2, request=request.as_dict(), timestamp=at)
        try:
            self.save(use)
        except IntegrityError:
            return False
        except PersistenceError as error:
            raise Unavailable("The event store cannot be written right now; retry shortly.") from error
        return True

    def disable_legacy_access(self, app_id: str, *, by: Actor, request: RequestInfo,
                              reason: str = "sunset") -> bool:
        """Disable an app's legacy access (the sunset does this for every app). False if it was
        already disabled; NotFound if the app has no legacy client."""
        if not by.is_admin:
            raise Forbidden("Only an admin or the scheduler can disable legacy access.")
        app = self._visible_app(app_id, by)
        if app.legacy_client_id is None:
            raise NotFound(f"App {app_id!r} has no legacy client credentials.")
        for _attempt in range(COMMAND_ATTEMPTS):
            client = self._get(LegacyClient, LegacyClient.create_id(app.legacy_client_id), "legacy client")
            changed = client.disable(reason=reason, by=by.ref, request=request.as_dict(), at=self.now())
            if not changed:
                return False
            try:
                self.save(client)
            except IntegrityError:
                continue
            except PersistenceError as error:
                raise Unavailable("The event store cannot be written right now; retry shortly.") from error
            return True
        raise Conflict("The legacy client is being changed by someone else right now; retry.")

    def import_legacy_app(self, record: dict, *, by: Actor) -> str:
        """Bring one existing app over: its owner (an account, if new), the app, its
        auto-generated ``All`` key (origin ``migration``) and its legacy client, whose secret is
        kept as a digest. All of it is saved at once or not at all. Returns ``"created"`` or
        ``"present"`` (the same app with the same credentials is already here); raises
        InvalidRequest or Conflict for a record that cannot be imported."""
        if not by.is_admin:
            raise Forbidden("Only an admin can import apps.")
        problems = self._import_problems(record)
        if problems:
            raise InvalidRequest("; ".join(f"{name}: {' '.join(why)}" for name, why in problems.items()),
                                 **problems)
        email = record["owner_email"].strip()
        client_id, secret = record["client_id"], record["client_secret"]
        secret_digest = self.digester.hexdigest(secret)
        now = self.now()
        no_request = RequestInfo()
        new: list = []
        owner = self._find(Account, Account.create_id(email))
        if owner is None:
            # The owner's personal token is never shown: an admin gives them one with
            # `keyledger accounts token --email …` when they are ready to move to API keys.
            owner, _token = self._new_account(email=email, name=record["owner_name"], role="owner",
                                              by=by, request=no_request, now=now)
            new.append(owner)
        elif owner.role != "owner":
            raise Conflict(f"{email} belongs to an account with the {owner.role} role, not an owner.")
        app = self._find(App, App.create_id(record["app_id"]))
        if app is None:
            app, key, _secret = self._new_app(slug=record["app_id"], name=record["app_name"],
                                              owner_id=str(owner.id), origin="migration", by=by,
                                              request=no_request, now=now)
            new += [app, key]
        elif app.owner_id != str(owner.id):
            raise Conflict(f"App {app.slug!r} already exists with another owner.")
        elif app.legacy_client_id is not None:
            client = self._find(LegacyClient, LegacyClient.create_id(app.legacy_client_id))
            if (app.legacy_client_id == client_id and client is not None
                    and hmac.compare_digest(client.secret_digest, secret_digest)):
                return "present"
            raise Conflict(f"App {app.slug!r} already has other legacy client credentials.")
        app.attach_legacy_client(client_id, by=by.ref, request=no_request.as_dict(), at=now)
        new.append(app)
        new.append(LegacyClient._create(
            LegacyClient.CredentialsIssued, id=LegacyClient.create_id(client_id), app_id=app.slug,
            client_id=client_id, secret_digest=secret_digest,
            secret_display=credentials.display_hint(secret), origin="migration", by=by.ref,
            request=no_request.as_dict(), timestamp=now))
        self._save_new(*{id(a): a for a in new}.values(), conflict=(
            f"Client id {client_id!r} belongs to another app, or the app changed meanwhile."))
        return "created"

    _IMPORT_FIELDS = ("app_id", "app_name", "owner_email", "owner_name", "client_id", "client_secret")

    def _import_problems(self, record: dict) -> dict[str, list[str]]:
        problems: dict[str, list[str]] = {}
        for name in self._IMPORT_FIELDS:
            if not isinstance(record.get(name), str) or not record[name]:
                problems[name] = ["Required: a non-empty string."]
        unknown = set(record) - set(self._IMPORT_FIELDS)
        if unknown:  # not named: a pasted secret could be a field's name
            problems["fields"] = [f"{len(unknown)} unknown field(s); expected only: {', '.join(self._IMPORT_FIELDS)}."]
        if problems:
            return problems
        if not SLUG.fullmatch(record["app_id"]):
            problems["app_id"] = ["Use 1 to 63 lower-case letters, digits and inner hyphens."]
        if problem := text_problem(record["app_name"], NAME_MAX):
            problems["app_name"] = [problem]
        account = self._account_problems(record["owner_email"].strip(), record["owner_name"], "owner")
        if "email" in account:
            problems["owner_email"] = account["email"]
        if "name" in account:
            problems["owner_name"] = account["name"]
        if not _CLIENT_ID.fullmatch(record["client_id"]):
            problems["client_id"] = [f"1 to {CLIENT_ID_MAX} letters, digits, '-', '_' or '.'."]
        if not 8 <= len(record["client_secret"]) <= SECRET_MAX or text_problem(
                record["client_secret"], SECRET_MAX, secret=True):
            problems["client_secret"] = [f"8 to {SECRET_MAX} printable characters."]
        return problems

    @staticmethod
    def legacy_client_view(client: LegacyClient) -> dict:
        return {"app_id": client.app_id, "client_id": client.client_id, "created_at": client.created_on,
                "disabled_at": client.disabled_at}

    def _new_client(self, app: App, client_id: str, secret: str, *, origin: str, by: Actor,
                    request: RequestInfo, now: datetime) -> LegacyClient:
        app.attach_legacy_client(client_id, by=by.ref, request=request.as_dict(), at=now)
        return LegacyClient._create(
            LegacyClient.CredentialsIssued, id=LegacyClient.create_id(client_id), app_id=app.slug,
            client_id=client_id, secret_digest=self.digester.hexdigest(secret),
            secret_display=credentials.display_hint(secret), origin=origin, by=by.ref,
            request=request.as_dict(), timestamp=now)
