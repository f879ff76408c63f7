"""Accounts: the people who manage keys (owners), read the audit (auditors), or run it (admins)."""

from __future__ import annotations

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

    @staticmethod
    def create_id(email: str, **_: object) -> UUID:
        """One account per e-mail address: the id is derived from it, so a duplicate conflicts."""
        return uuid5(NAMESPACE_URL, f"keyledger:account:{email.strip().lower()}")
