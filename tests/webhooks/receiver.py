"""A real webhook receiver for the tests: an HTTP server in a thread that verifies every delivery
with the ``standardwebhooks`` library's own ``Webhook.verify`` and records what it got."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.composition import build_system
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER


class Receiver:
    def __init__(self, secret: str | None = None, *, answer: Callable[[int], int] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.answer = answer or (lambda n: 200)  # n: this request's number (1, 2, …) -> HTTP status
        self.requests: list[dict] = []  # every request: headers, body, verified
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, payload, problem = False, None, None
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except (WebhookVerificationError, Exception) as error:  # noqa: BLE001
                    problem = f"{type(error).__name__}: {error}"
                with receiver.lock:
                    receiver.requests.append({"headers": headers, "body": body, "verified": verified,
                                              "payload": payload, "problem": problem})
                    number = len(receiver.requests)
                status = receiver.answer(number)
                reply = json.dumps({"ok": status < 300, "n": number}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a sender killed mid-request: not news
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict]:
        """The verified deliveries answered with a 2xx, in arrival order."""
        with self.lock:
            return [r for n, r in enumerate(self.requests, 1) if r["verified"] and self.answer(n) < 300]

    def types(self) -> list[str]:
        return [r["payload"]["type"] for r in self.delivered()]


@pytest.fixture(name="system")
def webhook_system(data_dir):
    """An in-process system that delivers to receivers on this machine (imported by the test modules
    that use it)."""
    built = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05,
                                       webhooks_allow_private=True))
    yield built
    built.close()
