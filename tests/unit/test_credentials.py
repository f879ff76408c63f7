"""The credential format: prefix, 32 base62 characters, 6 base62 characters of CRC32."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from service import credentials

pytestmark = pytest.mark.store_independent  # never reaches the store under test (tests/conftest.py)

SCANNER = re.compile(r"\b(ak|pat)_[0-9A-Za-z]{38}\b")


@pytest.mark.parametrize("prefix, kind", [("ak_", "api_key"), ("pat_", "personal_token")])
def test_generated_credentials_have_the_documented_shape(prefix, kind):
    secret = credentials.generate(prefix)
    assert SCANNER.fullmatch(secret)
    assert credentials.classify(secret) == kind


def test_every_single_character_typo_is_malformed():
    secret = credentials.generate("ak_")
    for position in range(3, len(secret)):
        for replacement in "0aZ":
            if secret[position] == replacement:
                continue
            typo = secret[:position] + replacement + secret[position + 1:]
            assert credentials.classify(typo) == credentials.MALFORMED, (position, replacement)


@pytest.mark.parametrize("text", ["ak_", "ak_" + "a" * 37, "ak_" + "a" * 39, "pat_!!!!", "ak_" + "é" * 38])
def test_wrong_length_or_alphabet_is_malformed(text):
    assert credentials.classify(text) == credentials.MALFORMED


def test_strings_without_a_known_prefix_are_legacy_tokens():
    assert credentials.classify("2YotnFZFEjr1zCsicMWpAA") == credentials.ACCESS_TOKEN


def test_display_hint_shows_prefix_and_last_four():
    secret = credentials.generate("pat_")
    assert credentials.display_hint(secret) == "pat_…" + secret[-4:]


def test_digests_depend_on_the_pepper():
    secret = credentials.generate("ak_")
    one = credentials.Digester(b"a" * 32)
    two = credentials.Digester(b"b" * 32)
    assert one.digest(secret) == one.digest(secret)
    assert one.digest(secret) != two.digest(secret)
    assert len(one.digest(secret)) == 32 and one.hexdigest(secret) == one.digest(secret).hex()


def test_pepper_file_is_made_once_with_mode_0600(tmp_path):
    first = credentials.load_or_create_pepper(tmp_path, None)
    again = credentials.load_or_create_pepper(tmp_path, None)
    assert first == again and len(first) >= 32
    assert stat.S_IMODE((tmp_path / "pepper").stat().st_mode) == 0o600


def test_configured_pepper_wins_and_writes_no_file(tmp_path):
    assert credentials.load_or_create_pepper(tmp_path, "from-the-environment-" * 2) == b"from-the-environment-" * 2
    assert not (tmp_path / "pepper").exists()


def test_redact_hides_legacy_secrets_but_not_ids_or_slugs():
    secret = credentials.generate_opaque(credentials.CLIENT_SECRET_LENGTH)
    while not (any(c.isupper() for c in secret) and any(c.islower() for c in secret)
               and any(c.isdigit() for c in secret)):
        secret = credentials.generate_opaque(credentials.CLIENT_SECRET_LENGTH)
    assert credentials.redact(f"/v2/keys/{secret}/roll") == "/v2/keys/…[redacted]/roll"
    for harmless in ("334d0d32-fa03-5609-b79c-cb0bda8fe195", "my-app-slug-with-a-long-name-0123456789",
                     "fd6863e0905d42dbbee5372475775f08", "short1Ab"):
        assert credentials.redact(harmless) == harmless


def test_legacy_secrets_are_never_classified_as_keys():
    for _ in range(200):
        assert credentials.classify(credentials.generate_opaque(30)) == credentials.ACCESS_TOKEN


def test_a_body_outside_base62_is_malformed_even_with_a_matching_checksum():
    import zlib

    for prefix in ("ak_", "pat_"):
        head = prefix + "!" * 32
        checksum = credentials._base62(zlib.crc32(head.encode("ascii")), credentials.CHECKSUM_LENGTH)
        assert credentials.classify(head + checksum) == credentials.MALFORMED
        head = prefix + "é" + "a" * 31
        checksum = credentials._base62(zlib.crc32(head.encode("utf-8")), credentials.CHECKSUM_LENGTH)
        assert credentials.classify(head + checksum) == credentials.MALFORMED


def test_legacy_client_ids_are_32_lower_case_characters():
    client_id = credentials.new_client_id()
    assert len(client_id) == 32 and client_id == client_id.lower() and client_id.isalnum()


def test_a_signing_key_that_is_not_pem_is_refused_naming_its_source():
    with pytest.raises(credentials.SigningKeyError, match="^KEYLEDGER_AUDIT_SIGNING_KEY: not an unencrypted PEM"):
        credentials.load_or_create_signing_key(Path("/nonexistent"), "not a key")


def test_a_signing_key_of_another_kind_is_refused_naming_its_source(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / credentials.SIGNING_KEY_FILE).write_bytes(pem)
    with pytest.raises(credentials.SigningKeyError, match="audit-signing-key.pem: the audit signing key must be an Ed25519"):
        credentials.load_or_create_signing_key(tmp_path, None)


def test_the_public_key_of_a_public_key_is_itself():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    assert credentials.public_key_pem(key.public_key()) == credentials.public_key_pem(key)
    assert credentials.public_key_sha256(key.public_key()) == credentials.public_key_sha256(key)


def test_any_string_has_a_digest_even_one_with_a_lone_surrogate():
    # The verifier digests whatever it is handed before anything else (the index first).
    digester = credentials.Digester(b"p" * 32)
    assert len(digester.digest("ak_\ud800")) == 32
    assert digester.digest("ak_\ud800") != digester.digest("ak_\udfff") != digester.digest("ak_")
    assert digester.digest("\ud800") == digester.digest("\ud800")
