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


class AuditChainBroken(KeyledgerError):
    """The audit chain does not verify: a stored record was altered, forged, removed or is of
    the wrong type. Nothing is signed over it; ``first_bad_seq`` says where."""

    code = "AUDIT_CHAIN_BROKEN"

    def __init__(self, first_bad_seq: int, reason: str) -> None:
        super().__init__(f"The audit chain is broken at seq {first_bad_seq}: {reason}. No checkpoint was "
                         "signed; see `keyledger audit verify`.", first_bad_seq=first_bad_seq)
        self.first_bad_seq = first_bad_seq
        self.reason = reason


class TamperedRecord(ValueError):
    """A stored record the service did not write as it stands (no valid seal, wrong types)."""
