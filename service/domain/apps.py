"""Apps: a customer's application, owned by one owner, holding API keys."""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from service.domain.aggregate import LedgerAggregate


class App(LedgerAggregate):
    class Registered(LedgerAggregate.Created):
        slug: str
        name: str
        owner_id: str
        origin: str

    @event(Registered)
    def __init__(self, slug: str, name: str, owner_id: str, origin: str, by: str, request: dict) -> None:
        self.slug = slug
        self.name = name
        self.owner_id = owner_id
        self.origin = origin

    @staticmethod
    def create_id(slug: str, **_: object) -> UUID:
        """An app's id is its slug; the aggregate id is derived from it, so a taken slug conflicts."""
        return uuid5(NAMESPACE_URL, f"keyledger:app:{slug}")
