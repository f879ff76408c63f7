"""Who did something, and the request they did it in."""

from __future__ import annotations

from dataclasses import dataclass

# ``introspector``: a resource server (a gateway, an API behind Kong or mod_auth_openidc) that asks
# ``POST /v2/introspect`` whether a token is active; it may do nothing else.
ROLES = ("owner", "auditor", "admin", "introspector")


@dataclass(frozen=True, slots=True)
class Actor:
    """An authenticated caller: a person's account, an API key, or the system itself."""

    kind: str  # "account" | "key" | "system"
    id: str
    role: str | None = None  # accounts: owner, auditor, admin or introspector
    app_id: str | None = None  # keys: the app the key belongs to

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def is_admin(self) -> bool:
        """Admin accounts, and the system itself (the command line, the scheduler)."""
        return self.kind in ("account", "system") and self.role == "admin"

    @property
    def is_auditor(self) -> bool:
        return self.kind == "account" and self.role == "auditor"

    @property
    def is_owner(self) -> bool:
        return self.kind == "account" and self.role == "owner"

    @property
    def is_introspector(self) -> bool:
        return self.kind == "account" and self.role == "introspector"

    @property
    def may_introspect(self) -> bool:
        """May ask ``POST /v2/introspect`` about any token: introspectors and admins."""
        return self.kind == "account" and self.role in ("introspector", "admin")

    @property
    def reads_everything(self) -> bool:
        return self.is_admin or self.is_auditor or self.kind == "system"

    @classmethod
    def system(cls, name: str = "cli") -> Actor:
        return cls(kind="system", id=name, role="admin")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The request an event came from; empty for the command line and the scheduler."""

    id: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    def as_dict(self) -> dict:
        return {"id": self.id, "ip": self.ip, "user_agent": self.user_agent}


NO_REQUEST = RequestInfo()
