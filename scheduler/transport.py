"""Handing a message over: to an SMTP server, or as an ``.eml`` file in the outbox folder.

``send`` returns where the message went (for the delivery record: never a credential) or
raises ``DeliveryFailed`` saying whether trying again later can help.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from service.settings import Settings, SmtpServer

SMTP_TIMEOUT = 15.0  # seconds for connecting and for each SMTP reply


class DeliveryFailed(Exception):
    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class MailTransport(Protocol):
    def send(self, message: EmailMessage, name: str) -> str:
        """Hand ``message`` over; ``name`` is a file-safe name for it. Returns where it went."""


class SmtpTransport:
    """stdlib ``smtplib``: ``smtp`` (plain), ``smtps`` (TLS from the start) or ``smtp+starttls``;
    login when the server settings carry a user name."""

    def __init__(self, server: SmtpServer, *, timeout: float = SMTP_TIMEOUT) -> None:
        self.server = server
        self.timeout = timeout

    def send(self, message: EmailMessage, name: str) -> str:
        server = self.server
        try:
            if server.scheme == "smtps":
                client: smtplib.SMTP = smtplib.SMTP_SSL(server.host, server.port, timeout=self.timeout,
                                                        context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(server.host, server.port, timeout=self.timeout)
            with client:
                client.ehlo()
                if server.scheme == "smtp+starttls":
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                if server.username:
                    client.login(server.username, server.password or "")
                refused = client.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise DeliveryFailed(self._reason(f"recipient refused: {codes}"),
                                 permanent=all(500 <= c < 600 for c in codes)) from None
        except smtplib.SMTPResponseException as error:
            text = error.smtp_error.decode("utf-8", "replace") if isinstance(error.smtp_error, bytes) \
                else str(error.smtp_error)
            permanent = 500 <= error.smtp_code < 600 and not isinstance(error, smtplib.SMTPAuthenticationError)
            raise DeliveryFailed(self._reason(f"{type(error).__name__} {error.smtp_code} {text}"),
                                 permanent=permanent) from None
        except (TimeoutError, OSError, smtplib.SMTPException) as error:
            raise DeliveryFailed(self._reason(f"{type(error).__name__}: {error}"), permanent=False) from None
        if refused:
            raise DeliveryFailed(self._reason(f"recipient refused: {sorted(refused)}"), permanent=True)
        return server.display

    def _reason(self, text: str) -> str:
        """What went wrong, with the server named and no password in it, whatever the server said."""
        if self.server.password:
            text = text.replace(self.server.password, "***")
        return f"{self.server.display}: {text}"[:500]


class OutboxFolder:
    """No SMTP server configured: each message becomes ``<folder>/<name>.eml`` (mode 0600), written
    whole or not at all; writing the same message again replaces the file (no duplicate)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, message: EmailMessage, name: str) -> str:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            target = self.folder / f"{name}.eml"
            partial = self.folder / f".{name}.eml.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(message.as_bytes())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        except OSError as error:
            raise DeliveryFailed(f"outbox folder {self.folder}: {error.strerror or error}", permanent=False) from None
        return f"file:{target.name}"


def transport_for(settings: Settings) -> MailTransport:
    server = settings.smtp_server
    return OutboxFolder(settings.outbox_path) if server is None else SmtpTransport(server)
