"""Legacy OAuth2: an app's client credentials, the access tokens issued from them, and their use.

Before API keys, each app had a client id and client secret and exchanged them for access
tokens that lived 48 hours, carried no scopes and could not be revoked. ``LegacyClient``
is that pair (the secret as a digest only) and every token issued from it (digest and
expiry), until legacy access is disabled at the sunset.

``LegacyUseWindow`` records that a client's tokens were used in a window of time (default
one hour). Its id is derived from the client and the window, so of several processes
racing to record the same window exactly one succeeds and the rest find it recorded:
at most one ``LegacyTokenUsed`` event per client per window.
"""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate
from service.domain.errors import LegacyAccessEnded


class LegacyClient(LedgerAggregate):
    class CredentialsIssued(LedgerAggregate.Created):
        app_id: str
        client_id: str
        secret_digest: str
        secret_display: str
        origin: str  # "admin" (POST .../legacy-credentials) or "migration" (import-legacy)

    class AccessTokenIssued(LedgerAggregate.Event):
        app_id: str
        token_digest: str
        token_display: str
        expires_at: datetime

    class AccessDisabled(LedgerAggregate.Event):
        app_id: str
        reason: str

    @event(CredentialsIssued)
    def __init__(self, app_id: str, client_id: str, secret_digest: str, secret_display: str,
                 origin: str, by: str, request: dict) -> None:
        self.app_id = app_id
        self.client_id = client_id
        self.secret_digest = secret_digest
        self.secret_display = secret_display
        self.origin = origin
        self.tokens_issued = 0
        self.disabled_at: datetime | None = None

    @staticmethod
    def create_id(client_id: str, **_: object) -> UUID:
        """A client's id derives from its client id: the token endpoint loads it directly,
        and a client id taken by another app conflicts."""
        return uuid5(NAMESPACE_URL, f"keyledger:legacy-client:{client_id}")

    def issue_access_token(self, *, digest: str, display: str, expires_at: datetime, by: str,
                           request: dict, at: datetime) -> None:
        if self.disabled_at is not None:
            raise LegacyAccessEnded("Legacy access for this app has been disabled; use an API key.")
        self._issue_access_token(app_id=self.app_id, token_digest=digest, token_display=display,
                                 expires_at=expires_at, by=by, request=request, timestamp=at)

    @event(AccessTokenIssued)
    def _issue_access_token(self, app_id: str, token_digest: str, token_display: str,
                            expires_at: datetime, by: str, request: dict, timestamp: datetime) -> None:
        self.tokens_issued += 1

    def disable(self, *, reason: str, by: str, request: dict, at: datetime) -> bool:
        """Disable legacy access; disabling twice is a no-op."""
        if self.disabled_at is not None:
            return False
        self._disable(app_id=self.app_id, reason=reason, by=by, request=request, timestamp=at)
        return True

    @event(AccessDisabled)
    def _disable(self, app_id: str, reason: str, by: str, request: dict, timestamp: datetime) -> None:
        self.disabled_at = timestamp


class LegacyUseWindow(LedgerAggregate):
    class LegacyTokenUsed(LedgerAggregate.Created):
        app_id: str
        client_id: str
        token_display: str
        window_start: datetime
        window_end: datetime

    @event(LegacyTokenUsed)
    def __init__(self, app_id: str, client_id: str, token_display: str, window_start: datetime,
                 window_end: datetime, by: str, request: dict) -> None:
        self.app_id = app_id
        self.client_id = client_id
        self.window_start = window_start
        self.window_end = window_end

    @staticmethod
    def create_id(client_id: str, window_start: datetime, **_: object) -> UUID:
        return uuid5(NAMESPACE_URL, f"keyledger:legacy-use:{client_id}:{window_start.isoformat()}")
