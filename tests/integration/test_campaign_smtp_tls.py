"""SMTP over TLS: ``smtps://`` (TLS from the start) and ``smtp+starttls://``, with a login, against
aiosmtpd on 127.0.0.1 with a self-signed certificate; the server's certificate is verified."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from scheduler.transport import DeliveryFailed, SmtpTransport
from service.settings import parse_smtp_url
from tests.campaign_support import Mailbox, free_port
from tests.conftest import require

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)


@pytest.fixture
def certificate(tmp_path):
    require("openssl", shutil.which("openssl") is not None, "the TLS tests make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def tls_server(scheme: str, certificate) -> tuple[Controller, Mailbox, int, list[str]]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox, port, logins = Mailbox(), free_port(), []

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"mailer", b"tls-pw-not-shown")
        if ok:
            logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    options = {"authenticator": authenticate, "auth_required": True}
    if scheme == "smtps":
        options.update(ssl_context=context, auth_require_tls=False)  # the whole session is TLS
    else:
        options.update(tls_context=context, require_starttls=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    return controller, mailbox, port, logins


def message() -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "k@example.com", "olga@example.com", "test"
    mail.set_content("hello")
    return mail


@pytest.mark.parametrize("scheme", ["smtps", "smtp+starttls"])
def test_mail_goes_over_tls_with_a_login_to_a_verified_server(scheme, certificate, monkeypatch):
    controller, mailbox, port, logins = tls_server(scheme, certificate)
    try:
        server = parse_smtp_url(f"{scheme}://mailer:tls-pw-not-shown@127.0.0.1:{port}", "KEYLEDGER_SMTP_URL")
        with pytest.raises(DeliveryFailed) as untrusted:  # a certificate nobody vouches for is refused
            SmtpTransport(server, timeout=5).send(message(), "m")
        assert not untrusted.value.permanent and "CERTIFICATE_VERIFY_FAILED" in untrusted.value.reason
        assert "tls-pw-not-shown" not in untrusted.value.reason and mailbox.received == []

        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust the test's certificate
        assert SmtpTransport(server, timeout=5).send(message(), "m") == f"{scheme}://mailer@127.0.0.1:{port}"
    finally:
        controller.stop()
    assert logins == ["mailer"] and len(mailbox.received) == 1
