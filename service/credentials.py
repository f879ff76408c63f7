"""Secrets: generation, the key format and keyed digests.

Format: ``ak_`` (API key) or ``pat_`` (personal token), 32 random base62 characters, and
6 base62 characters of the CRC32 of everything before them. A mistyped or truncated key
fails the checksum and is refused as ``MALFORMED``, whatever the index holds; secret scanners
can match ``\\b(ak|pat)_[0-9A-Za-z]{38}\\b``.

Only ``HMAC-SHA256(pepper, secret)`` is ever stored, with a display hint ``ak_…abcd``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import zlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6

API_KEY_PREFIX = "ak_"
PERSONAL_TOKEN_PREFIX = "pat_"
KIND_BY_PREFIX = {API_KEY_PREFIX: "api_key", PERSONAL_TOKEN_PREFIX: "personal_token"}

# Credential kinds
API_KEY = "api_key"
PERSONAL_TOKEN = "personal_token"
ACCESS_TOKEN = "access_token"
MALFORMED = "malformed"


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        chars.append(ALPHABET[rest])
    return "".join(reversed(chars))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def generate(prefix: str) -> str:
    """A new secret with ``prefix`` (``ak_`` or ``pat_``)."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    head = prefix + body
    return head + _checksum(head)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


CLIENT_SECRET_LENGTH = 40
ACCESS_TOKEN_LENGTH = 30


def generate_opaque(length: int) -> str:
    """A legacy OAuth2 secret (client secret or access token): ``length`` random base62
    characters and no prefix, like the 2017 originals. It never contains ``_``, so
    ``classify`` calls it an access token, never a key."""
    return _random_base62(length)


def new_client_id() -> str:
    """A legacy OAuth2 client id: an identifier, not a secret, so it is lower case and never
    mistaken for one (``redact`` leaves it alone)."""
    return "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(32))


# Every pair of base62 characters, in order of value: a CRC32 (below 62^6) as its checksum
# is three pairs, so checking a checksum is three list look-ups instead of a loop per character.
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]
_PAIR_VALUES = len(_PAIRS)  # 62^2


# No credential this service issues or imports is longer: a longer string is refused without an HMAC.
# (Keys and personal tokens are 3 or 4 + 32 + 6 characters; legacy secrets 30 to 40; imported ones
# from the 2017 system may be longer, so the bound is generous.)
LONGEST_CREDENTIAL = 512


def misshapen(credential: str) -> bool:
    """A key or personal token (by its prefix) of the wrong length or with a character outside
    base62: MALFORMED at a glance, before any digest or look-up (C-level string checks only;
    ``classify`` adds the checksum)."""
    if credential.startswith(API_KEY_PREFIX):
        prefix_length = 3
    elif credential.startswith(PERSONAL_TOKEN_PREFIX):
        prefix_length = 4
    else:
        return False
    return (len(credential) != prefix_length + BODY_LENGTH + CHECKSUM_LENGTH or not credential.isascii()
            or not credential[prefix_length:].isalnum())


def classify(credential: str) -> str:
    """``api_key``, ``personal_token``, ``malformed`` (known prefix, wrong length or
    checksum) or ``access_token`` (no known prefix: a legacy token). No I/O."""
    if credential.startswith(API_KEY_PREFIX):
        prefix_length = 3
        kind = API_KEY
    elif credential.startswith(PERSONAL_TOKEN_PREFIX):
        prefix_length = 4
        kind = PERSONAL_TOKEN
    else:
        return ACCESS_TOKEN
    if len(credential) != prefix_length + BODY_LENGTH + CHECKSUM_LENGTH or not credential.isascii():
        return MALFORMED
    if not credential[prefix_length:].isalnum():  # base62 only, whatever the checksum says
        return MALFORMED
    crc = zlib.crc32(credential[:-CHECKSUM_LENGTH].encode("ascii"))
    pairs = _PAIRS
    checksum = (pairs[crc // (_PAIR_VALUES * _PAIR_VALUES)] + pairs[crc // _PAIR_VALUES % _PAIR_VALUES]
                + pairs[crc % _PAIR_VALUES])
    if checksum != credential[-CHECKSUM_LENGTH:]:
        return MALFORMED
    return kind


_LOOKS_LIKE_A_SECRET = re.compile(r"(ak|pat)_[0-9A-Za-z]{8,}")
# A legacy client secret or access token has no prefix: 30 or more base62 characters mixing upper
# and lower case. Slugs and client ids (lower case), UUIDs and request ids (hex) never look so.
_LOOKS_LIKE_A_LEGACY_SECRET = re.compile(
    r"(?<![0-9A-Za-z])(?=[0-9a-z]*[A-Z])(?=[0-9A-Z]*[a-z])[0-9A-Za-z]{30,}(?![0-9A-Za-z])")


def looks_like_a_secret(text: str) -> bool:
    """Whether ``text`` contains something shaped like a key, token or client secret."""
    return bool(_LOOKS_LIKE_A_SECRET.search(text) or _LOOKS_LIKE_A_LEGACY_SECRET.search(text))


def redact(text: str) -> str:
    """``text`` with anything shaped like a key or token replaced by ``ak_…[redacted]`` (or
    ``…[redacted]`` for a legacy secret): for log lines and error messages that echo what a
    caller sent (a key pasted into a URL)."""
    text = _LOOKS_LIKE_A_SECRET.sub(lambda m: f"{m.group(1)}_…[redacted]", text)
    return _LOOKS_LIKE_A_LEGACY_SECRET.sub("…[redacted]", text)


def display_hint(secret: str) -> str:
    """What may be shown of a secret: its prefix (if any) and last four characters."""
    prefix = next((p for p in KIND_BY_PREFIX if secret.startswith(p)), "")
    return f"{prefix}…{secret[-4:]}"


class Digester:
    """HMAC-SHA256 under the server's pepper. ``digest`` returns raw bytes for the hot
    path; ``hexdigest`` is what events and views store."""

    __slots__ = ("_keyed",)

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 32:
            raise ValueError("the pepper must be at least 32 bytes")
        self._keyed = hmac.new(pepper, digestmod=hashlib.sha256)

    def digest(self, secret: str) -> bytes:
        mac = self._keyed.copy()
        mac.update(secret.encode("utf-8", "surrogatepass"))  # any str, even a lone surrogate
        return mac.digest()

    def hexdigest(self, secret: str) -> str:
        return self.digest(secret).hex()


def load_or_create_pepper(data_dir: Path, configured: str | None) -> bytes:
    """The pepper from ``KEYLEDGER_PEPPER`` if set, else from ``<data_dir>/pepper``,
    created on first start with mode 0600. Losing it invalidates every credential."""
    if configured:
        return configured.encode("utf-8")
    path = data_dir / "pepper"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    pepper = secrets.token_hex(32).encode("ascii")
    # Write a private temporary file, then link it into place: the pepper file appears
    # complete or not at all, and of processes starting together exactly one pepper wins.
    temporary = data_dir / f".pepper-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pepper + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_bytes().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return pepper


# -- the audit signing key (Ed25519) ------------------------------------------------------

SIGNING_KEY_FILE = "audit-signing-key.pem"


class SigningKeyError(ValueError):
    """The configured audit signing key cannot be used."""


def load_or_create_signing_key(data_dir: Path, configured_pem: str | None) -> Ed25519PrivateKey:
    """The Ed25519 key that signs audit checkpoints: from ``KEYLEDGER_AUDIT_SIGNING_KEY`` (PEM)
    if set, else from ``<data_dir>/audit-signing-key.pem``, created on first start with mode
    0600 (written privately, then linked into place, like the pepper)."""
    if configured_pem:
        return _private_key(configured_pem.encode("utf-8"), "KEYLEDGER_AUDIT_SIGNING_KEY")
    path = data_dir / SIGNING_KEY_FILE
    try:
        return _private_key(path.read_bytes(), str(path))
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = data_dir / f".signing-key-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made it first: use theirs
            return _private_key(path.read_bytes(), str(path))
    finally:
        temporary.unlink(missing_ok=True)
    return key


def _private_key(pem: bytes, source: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{source}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{source}: the audit signing key must be an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def public_key_sha256(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A fingerprint of the public key: SHA-256 of its DER (SubjectPublicKeyInfo) bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# -- the record seal's key ------------------------------------------------------------------

# The seal key of an application given none (tests on the in-memory store): seals made with a
# key everyone knows prove nothing, so every composition root derives the real one below.
UNSEALED = b"keyledger: no seal key was given; these seals prove nothing"


def record_seal_key(signing_key: Ed25519PrivateKey) -> bytes:
    """The key that seals every stored record (HMAC-SHA256), derived from the audit signing key:
    whoever may sign checkpoints may seal records, instances sharing a store share it already,
    and the store never holds it. (HMAC as HKDF's extract step, with a fixed label.)"""
    raw = signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    return hmac.new(b"keyledger-record-seal-key/v1", raw, hashlib.sha256).digest()
