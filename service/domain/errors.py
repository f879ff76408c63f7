"""Errors the domain and the application raise; ``service.api`` maps ``code`` to HTTP.

Each carries a stable ``code`` from the contract and a sentence that tells the caller
what to do. None ever contains a secret.
"""

from __future__ import annotations

from typing import Any


class KeyledgerError(Exception):
    code = "INVALID_REQUEST"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(KeyledgerError):
    code = "INVALID_REQUEST"


class ScopeUnknown(KeyledgerError):
    code = "SCOPE_UNKNOWN"


class InvalidExpiry(KeyledgerError):
    code = "INVALID_EXPIRY"


class Unauthenticated(KeyledgerError):
    code = "UNAUTHENTICATED"


class CredentialRefused(KeyledgerError):
    """A credential that parsed but may not be used: code is MALFORMED, REVOKED, EXPIRED…"""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Forbidden(KeyledgerError):
    code = "FORBIDDEN"


class NotFound(KeyledgerError):
    code = "NOT_FOUND"


class Conflict(KeyledgerError):
    code = "CONFLICT"


class KeyRevoked(Conflict):
    """Changing a key that has been revoked."""


class KeyExpired(Conflict):
    """Changing a key whose expiry has passed."""


class LegacyAccessEnded(KeyledgerError):
    """Legacy OAuth2 after the sunset (or once an app's legacy access is disabled)."""

    code = "LEGACY_TOKEN_SUNSET"


class InvalidClient(KeyledgerError):
    """Unknown client id, or a client secret that does not match (OAuth2 ``invalid_client``)."""

    code = "UNAUTHENTICATED"


class PreconditionFailed(KeyledgerError):
    code = "PRECONDITION_FAILED"


class Unavailable(KeyledgerError):
    code = "UNAVAILABLE"
