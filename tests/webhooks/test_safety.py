"""Where webhooks may go: https only, no loopback, private, link-local or metadata address —
checked on the URL at registration and on the resolved address at delivery — unless allowed."""

from __future__ import annotations

import socket

import pytest

from service.webhooks import safety
from service.webhooks.delivery import Deliverer, post
from tests.conftest import wait_until
from tests.webhooks.receiver import Receiver

REFUSED = ["https://127.0.0.1/hook", "https://10.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
           "https://[::1]/hook", "https://localhost/hook", "https://[::ffff:127.0.0.1]/hook",
           "https://192.168.1.10/hook", "https://[fe80::1]/hook", "https://0.0.0.0/hook"]


def loopback_name() -> str:
    """A name other than ``localhost`` that resolves to a loopback address here (this machine's name)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 443)}
    except socket.gaierror:
        addresses = set()
    if not addresses or any(safety.address_problem(a) is None for a in addresses):
        pytest.skip(f"this machine's name {name!r} does not resolve to a loopback or private address only")
    return name


@pytest.mark.parametrize("url", REFUSED)
def test_an_internal_target_is_refused_at_registration(admin, url):
    response = admin.post("/v2/webhooks", json={"url": url, "event_types": ["key.revoked"]})
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "INVALID_WEBHOOK_URL"
    assert "url" in response.json["error"]["details"]


@pytest.mark.parametrize("url", ["http://hooks.example.com/x", "ftp://hooks.example.com/x", "hooks.example.com",
                                 "https://user:pw@hooks.example.com/x", "https:///nohost", "https://a b.example/"])
def test_a_url_that_is_not_plain_https_is_refused(admin, url):
    response = admin.post("/v2/webhooks", json={"url": url, "event_types": ["key.revoked"]})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "INVALID_WEBHOOK_URL"


@pytest.mark.store_independent
@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "localhost"])
def test_a_delivery_to_an_internal_address_is_refused_before_connecting(host):
    with Receiver() as receiver:  # listening on 127.0.0.1: a refused delivery never reaches it
        port = receiver.server.server_address[1]
        literal = f"[{host}]" if ":" in host else host
        attempt = post(f"https://{literal}:{port}/hook", b"{}", {}, allow_private=False, timeout=2)
        assert attempt.status_code is None and "refused target" in attempt.error, attempt.error
        assert receiver.requests == []


@pytest.mark.store_independent
def test_a_name_resolving_to_loopback_is_refused_at_delivery_time():
    name = loopback_name()
    assert safety.check_url(f"https://{name}/hook", allow_private=False)  # the name alone says nothing
    attempt = post(f"https://{name}:9/hook", b"{}", {}, allow_private=False, timeout=2)
    assert attempt.status_code is None and "refused target" in attempt.error
    assert name in attempt.error and "loopback" in attempt.error


@pytest.mark.store_independent
def test_a_redirect_is_not_followed():
    with Receiver(answer=lambda n: 302) as receiver:
        attempt = post(receiver.url, b"{}", {}, allow_private=True, timeout=2)
    assert attempt.status_code == 302 and not attempt.ok
    assert "not followed" in attempt.error
    assert len(receiver.requests) == 1


def test_a_registered_name_that_resolves_inside_is_logged_refused_and_never_reached(system, admin, owner):
    name = loopback_name()
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        hook = admin.post("/v2/webhooks", json={"url": f"https://{name}:{port}/hook", "event_types": ["app.created"]})
        assert hook.status_code == 201, hook.json
        owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
        Deliverer(system.keys_app, system.webhooks, allow_private=False, timeout=2).deliver_due()
        assert receiver.requests == []
    log = admin.get(f"/v2/webhooks/{hook.json['id']}/deliveries").json["deliveries"]
    assert log[0]["status"] == "pending" and log[0]["attempts"] == 1
    assert "refused target" in log[0]["last_error"]


def test_internal_targets_are_delivered_to_when_allowed(data_dir):
    from service.api import create_app
    from service.composition import build_system
    from tests.backend import make_settings
    from tests.conftest import TEST_PEPPER, Caller, make_account

    system = build_system(make_settings(data_dir=data_dir, pepper=TEST_PEPPER, webhooks_allow_private=True))
    try:
        client = create_app(system=system).test_client()
        a = make_account(system, "admin", "admin@example.com")
        admin = Caller(client, a["token"])
        with Receiver() as receiver:
            port = receiver.server.server_address[1]
            for host in ("127.0.0.1", "localhost"):
                hook = admin.post("/v2/webhooks", json={"url": f"http://{host}:{port}/{host}",
                                                        "event_types": ["app.created"]})
                assert hook.status_code == 201, hook.json
            admin.post("/v2/apps", json={"id": "vision", "name": "Vision"})
            worker = Deliverer(system.keys_app, system.webhooks, allow_private=True, timeout=2).start()
            try:
                assert wait_until(lambda: len(receiver.requests) == 2, timeout=60)
            finally:
                worker.stop()
    finally:
        system.close()


@pytest.mark.store_independent
def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: the name is resolved once, checked, and that address connected to — a second
    answer (here: a closed port's address) is never asked for."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host, port, *args, **kwargs):  # noqa: ANN001, ANN202
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        address = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(address)
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        attempt = post(f"http://rebind.example:{port}/hook", b"{}", {}, allow_private=True, timeout=2)
        assert attempt.ok, attempt.error
        assert answers == ["127.0.0.1"] and len(receiver.requests) == 1
        assert receiver.requests[0]["headers"]["host"] == f"rebind.example:{port}"
        refused = post(f"https://rebind.example:{port}/hook", b"{}", {}, allow_private=False, timeout=2)
        assert "refused target" in refused.error and len(receiver.requests) == 1
