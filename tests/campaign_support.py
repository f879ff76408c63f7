"""What the campaign's tests share: a real SMTP server (aiosmtpd on 127.0.0.1), owners whose
apps use legacy access tokens (through the real legacy use cases), and one pass of the jobs."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from service.domain.actors import NO_REQUEST, Actor
from service.domain.legacy import LegacyClient

# freezegun leaves the SMTP server's event loop on real time.
FROZEN = {"ignore": ["asyncio", "aiosmtpd"]}


def at(text: str) -> datetime:
    """An ISO time, in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


ADMIN = Actor.system("test")


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


class LegacyWorld:
    """Owners, apps with legacy client credentials, and their token use, made with the real
    use cases (``issue_legacy_credentials``, ``record_legacy_use``) on a test's system."""

    def __init__(self, system: Any) -> None:
        self.system = system
        self.clients: dict[str, str] = {}  # app id → client id
        self.secrets: dict[str, str] = {}  # app id → client secret
        self.api_keys: dict[str, str] = {}  # app id → its default key's secret

    def owner(self, name: str) -> dict:
        account, token = self.system.keys_app.register_account(
            email=f"{name}@example.com", name=name.title(), role="owner", by=ADMIN, request=NO_REQUEST)
        self.system.after_command()
        return account

    def app(self, owner: dict, app_id: str, name: str | None = None) -> str:
        """An app of ``owner``'s with client credentials; returns the client id."""
        keys_app = self.system.keys_app
        _, _, key_secret = keys_app.create_app(name=name or app_id.title(), slug=app_id, owner_id=owner["id"],
                                               by=ADMIN, request=NO_REQUEST)
        client, secret = keys_app.issue_legacy_credentials(app_id, by=ADMIN, request=NO_REQUEST)
        self.system.after_command()
        self.clients[app_id], self.secrets[app_id], self.api_keys[app_id] = client["client_id"], secret, key_secret
        return client["client_id"]

    def use(self, app_id: str, at: datetime) -> None:
        """The app's access token was used at ``at`` (recorded for that time's window)."""
        self.system.keys_app.record_legacy_use(LegacyClient.create_id(self.clients[app_id]),
                                               token_display="…test", at=at, request=NO_REQUEST)
        self.system.after_command()

    def use_api_key(self, app_id: str) -> None:
        """The app's default API key was used (now, by the application's clock)."""
        code, _, _ = self.system.verifier.verify(self.api_keys[app_id])
        assert code == "VALID", code
        self.system.last_used.flush()


def run_campaign(system: Any, mailer: Any) -> None:
    """One pass of every job, as the scheduler makes it, at the application's ``now``."""
    from scheduler import jobs

    keys_app, usage, progress, plan = system.keys_app, system.legacy_usage, system.campaign, system.plan
    jobs.send_due_reminders(keys_app, usage, progress, plan, keys_app.now())
    system.after_command()
    jobs.execute_sunset(keys_app, usage, plan, keys_app.now())
    system.after_command()
    jobs.send_final_notice(keys_app, usage, progress, plan, keys_app.now())
    system.after_command()
    jobs.deliver_pending_mail(keys_app, progress, mailer, keys_app.now())
    system.after_command()
