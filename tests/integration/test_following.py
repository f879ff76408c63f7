"""Processes that share a store follow each other's events: by the beacon, else by polling."""

from __future__ import annotations

from service.composition import build_system
from service.domain.actors import NO_REQUEST, Actor
from tests.backend import make_settings
from tests.conftest import TEST_PEPPER, wait_until


def two_systems(data_dir, interval=0.05):
    settings = make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=interval)
    return build_system(settings), build_system(settings)


def issue(system):
    admin = Actor.system("test")
    owner, _ = system.keys_app.register_account(email="o@example.com", name="O", role="owner", by=admin,
                                                request=NO_REQUEST)
    _, key, secret = system.keys_app.create_app(name="A", slug="a", owner_id=owner["id"], by=admin,
                                                request=NO_REQUEST)
    system.after_command()
    return key, secret


def test_polling_alone_delivers_another_process_s_revocation_within_a_second(tmp_path):
    writer, reader = two_systems(tmp_path / "var")
    try:
        reader.follower.beacon = None  # as if on another machine: no shared memory
        key, secret = issue(writer)
        assert wait_until(lambda: reader.verifier.verify(secret)[0] == "VALID", 1.0)
        writer.keys_app.revoke_key(key["id"], by=Actor.system("test"), request=NO_REQUEST)
        writer.after_command()
        assert writer.verifier.verify(secret)[0] == "REVOKED"
        assert wait_until(lambda: reader.verifier.verify(secret)[0] == "REVOKED", 1.0)
    finally:
        writer.close()
        reader.close()


def test_the_beacon_lets_a_process_catch_up_on_its_next_request(tmp_path):
    writer, reader = two_systems(tmp_path / "var", interval=60)  # polling would take a minute
    try:
        key, secret = issue(writer)
        reader.follower.sync()
        assert reader.verifier.verify(secret)[0] == "VALID"
        writer.keys_app.revoke_key(key["id"], by=Actor.system("test"), request=NO_REQUEST)
        writer.after_command()
        reader.follower.sync()
        assert reader.verifier.verify(secret)[0] == "REVOKED"
    finally:
        writer.close()
        reader.close()
