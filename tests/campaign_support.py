"""What the campaign's tests share: a real SMTP server (aiosmtpd on 127.0.0.1) and a stand-in
for the legacy half.

``LegacyStandIn`` stands in for what the legacy issue adds and the campaign consumes —
``LegacyUsage.owners_using_tokens(since)``, ``LegacyUsage.clients()`` and
``keys_app.disable_legacy_access(app_id, by=, request=)`` — with the same signatures and
shapes, kept in a JSON file so that separate scheduler processes see the same usage.
Once the legacy half is merged, tests switch to the real projection and aggregate.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepted. ``hang`` makes it stop answering
    after RCPT (the message is never accepted) until released."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.hang = False
        self.hanging = threading.Event()  # set when a client is waiting on a hung server
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        envelope.rcpt_tos.append(address)
        if self.hang:
            self.hanging.set()
            await asyncio.sleep(3600)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        with self._lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [message_from_bytes(raw, policy=policy.default) for _, _, raw in self.received]

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in m["To"]]


class SmtpServer:
    """A real SMTP server on 127.0.0.1 that can be stopped (connection refused) and started
    again on the same port."""

    def __init__(self, *, auth: tuple[str, str] | None = None) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.auth = auth
        self.logins: list[str] = []
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        user = f"{self.auth[0]}:{self.auth[1]}@" if self.auth else ""
        return f"smtp://{user}127.0.0.1:{self.port}"

    def _authenticator(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        from aiosmtpd.smtp import AuthResult

        ok = self.auth is not None and (auth_data.login.decode(), auth_data.password.decode()) == self.auth
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self.auth:
            kwargs = {"authenticator": self._authenticator, "auth_require_tls": False, "auth_required": True}
        for _attempt in range(50):
            try:
                self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, **kwargs)
                self._controller.start()
                return self
            except (OSError, RuntimeError):  # the port is still in TIME_WAIT / being released
                time.sleep(0.1)
        raise RuntimeError(f"could not start the SMTP server on port {self.port}")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.mailbox.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.mailbox.messages


class LegacyStandIn:
    """The legacy half's interface to the campaign, over a JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self._save({})

    # -- arranging usage (tests) ------------------------------------------------------------

    def use(self, *, owner: dict, app_id: str, at: datetime, uses: int = 1, app_name: str | None = None,
            uses_api_keys: bool = False) -> None:
        """``owner``'s app ``app_id`` used an access token at ``at`` (``uses`` times)."""
        apps = self._load()
        app = apps.setdefault(app_id, {
            "app_id": app_id, "app_name": app_name or app_id.title(), "client_id": f"client-{app_id}",
            "owner_id": owner["id"], "owner_email": owner["email"], "owner_name": owner["name"],
            "last_used_at": None, "uses": 0, "windows": 0, "uses_api_keys": False, "disabled_at": None,
        })
        app["last_used_at"] = max(filter(None, [app["last_used_at"], at.isoformat()]))
        app["uses"] += uses
        app["windows"] += 1
        app["uses_api_keys"] = uses_api_keys
        self._save(apps)

    # -- LegacyUsage ------------------------------------------------------------------------

    def owners_using_tokens(self, since: datetime) -> list[dict]:
        owners: dict[str, dict] = {}
        for app in self._load().values():
            if app["last_used_at"] is None or datetime.fromisoformat(app["last_used_at"]) < since:
                continue
            owner = owners.setdefault(app["owner_id"], {
                "owner_id": app["owner_id"], "owner_email": app["owner_email"],
                "owner_name": app["owner_name"], "apps": []})
            owner["apps"].append({
                "app_id": app["app_id"], "app_name": app["app_name"], "client_id": app["client_id"],
                "last_used_at": datetime.fromisoformat(app["last_used_at"]), "uses": app["uses"],
                "windows": app["windows"], "uses_api_keys": app["uses_api_keys"]})
        return sorted(owners.values(), key=lambda o: o["owner_email"])

    def clients(self) -> list[dict]:
        return [{"app_id": a["app_id"], "client_id": a["client_id"],
                 "disabled_at": datetime.fromisoformat(a["disabled_at"]) if a["disabled_at"] else None}
                for a in self._load().values()]

    # -- keys_app.disable_legacy_access ---------------------------------------------------------

    def disable_legacy_access(self, app_id: str, *, by: Any, request: Any, at: datetime) -> bool:
        apps = self._load()
        if apps[app_id]["disabled_at"] is not None:
            return False
        apps[app_id]["disabled_at"] = at.isoformat()
        self._save(apps)
        return True

    # -- the file ----------------------------------------------------------------------------

    def _load(self) -> dict:
        return json.loads(self.path.read_text())

    def _save(self, apps: dict) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(apps))
        os.replace(partial, self.path)


class KeysAppWithLegacy:
    """The real application, plus the stand-in's ``disable_legacy_access`` (timed by the
    application's clock, as the real use case will be)."""

    def __init__(self, keys_app: Any, legacy: LegacyStandIn) -> None:
        self._keys_app = keys_app
        self._legacy = legacy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keys_app, name)

    def disable_legacy_access(self, app_id: str, *, by: Any, request: Any) -> bool:
        return self._legacy.disable_legacy_access(app_id, by=by, request=request, at=self._keys_app.now())
