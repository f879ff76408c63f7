"""Accounts: the people who manage keys (owners), read the audit (auditors), or run it (admins)."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate


class Account(LedgerAggregate):
    class Registered(LedgerAggregate.Created):
        email: str
        name: str
        role: str
        token_digest: str
        token_display: str

    class TokenReplaced(LedgerAggregate.Event):
        token_digest: str
        token_display: str
        previous_digest: str

    @event(Registered)
    def __init__(
        self, email: str, name: str, role: str, token_digest: str, token_display: str,
        by: str, request: dict,
    ) -> None:
        self.email = email
        self.name = name
        self.role = role
        self.token_digest = token_digest
        self.token_display = token_display

    def replace_token(self, *, digest: str, display: str, by: str, request: dict, at: datetime) -> None:
        """A new personal token; the previous one stops working at once."""
        self._replace_token(token_digest=digest, token_display=display, previous_digest=self.token_digest,
                            by=by, request=request, timestamp=at)

    @event(TokenReplaced)
    def _replace_token(self, token_digest: str, token_display: str, previous_digest: str, by: str,
                       request: dict, timestamp: datetime) -> None:
        self.token_digest = token_digest
        self.token_display = token_display

    @staticmethod
    def create_id(email: str, **_: object) -> UUID:
        """One account per e-mail address: the id is derived from it, so a duplicate conflicts."""
        return uuid5(NAMESPACE_URL, f"keyledger:account:{email.strip().lower()}")

    # -- leaks ----------------------------------------------------------------

    class TokenLeaked(LedgerAggregate.Event):
        url: str
        source: str
        reporter: str
        action: str  # "revoked" (the current token: replaced by one nobody holds) or "reported"

    leaks: tuple = ()

    def record_leak(self, *, url: str, source: str, reporter: str, current: bool, new_digest: str,
                    new_display: str, by: str, request: dict, at: datetime) -> str | None:
        """A personal token found in public. The current one is always revoked: replaced by a
        token nobody holds (an admin issues the owner a new one, as for a lost token). The same
        (url, source) twice is recorded once. Returns the action taken, or None if nothing new."""
        if [url, source] in [list(leak) for leak in self.leaks]:
            return None
        action = "revoked" if current else "reported"
        self._token_leaked(url=url, source=source, reporter=reporter, action=action, by=by, request=request,
                           timestamp=at)
        if current:
            self.replace_token(digest=new_digest, display=new_display, by=by, request=request, at=at)
        return action

    @event(TokenLeaked)
    def _token_leaked(self, url: str, source: str, reporter: str, action: str, by: str, request: dict,
                      timestamp: datetime) -> None:
        self.leaks = [*self.leaks, [url, source]]
