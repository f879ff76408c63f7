"""GitHub's secret-scanning partner program: the public keys to trust and the signature check.

GitHub signs each report it POSTs with ECDSA P-256 over SHA-256 of the raw body; the signature
is base64 DER in ``Github-Public-Key-Signature`` and the key's id in
``Github-Public-Key-Identifier``. The keys to trust come from a file (``KEYLEDGER_GITHUB_SCANNING_KEYS``):
GitHub's published JSON (``{"public_keys": [{"key_identifier", "key", "is_current"}]}``, as served
at https://api.github.com/meta/public_keys/secret_scanning) or a JSON object of PEM keys by
identifier (``{"<identifier>": "-----BEGIN PUBLIC KEY-----…"}``).

Replays: the SHA-256 of each accepted body is remembered for ``REPLAY_WINDOW`` seconds (in
this process); the same signed body again is refused. Its effect would be nil anyway: reports
are idempotent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPLAY_WINDOW = 24 * 3600.0
REPLAY_MEMORY = 100_000  # bodies remembered at most (the oldest are forgotten first)
MAX_SIGNATURE = 512  # characters of base64: a P-256 DER signature is ~96


class ScanningKeysError(ValueError):
    """The keys file cannot be used; the message names the setting."""


def load_keys(path: Path) -> dict[str, ec.EllipticCurvePublicKey]:
    """Identifier → P-256 public key, from GitHub's JSON or a JSON object of PEM keys."""
    name = "KEYLEDGER_GITHUB_SCANNING_KEYS"
    try:
        document = json.loads(Path(path).read_text("utf-8"))
    except OSError as error:
        raise ScanningKeysError(f"{name}={str(path)!r}: cannot read the file ({error.strerror})") from None
    except ValueError:
        raise ScanningKeysError(f"{name}={str(path)!r}: not JSON (GitHub's published keys or "
                                "an object of PEM keys by identifier)") from None
    if isinstance(document, dict) and isinstance(document.get("public_keys"), list):
        pairs = [(entry.get("key_identifier"), entry.get("key")) for entry in document["public_keys"]
                 if isinstance(entry, dict)]
    elif isinstance(document, dict):
        pairs = list(document.items())
    else:
        raise ScanningKeysError(f"{name}={str(path)!r}: expected {{\"public_keys\": [...]}} or an object "
                                "of PEM keys by identifier")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for identifier, pem in pairs:
        if not isinstance(identifier, str) or not identifier or not isinstance(pem, str):
            raise ScanningKeysError(f"{name}={str(path)!r}: each key needs an identifier and a PEM key")
        try:
            key = serialization.load_pem_public_key(pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ScanningKeysError(f"{name}={str(path)!r}: the key {identifier!r} is not a PEM public key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ScanningKeysError(f"{name}={str(path)!r}: the key {identifier!r} is not an ECDSA P-256 key")
        keys[identifier] = key
    return keys


def signature_problem(keys: dict[str, ec.EllipticCurvePublicKey], identifier: str | None,
                      signature: str | None, body: bytes) -> str | None:
    """Why the body's signature is not acceptable (None when it is)."""
    if not identifier or not signature:
        return "Send the Github-Public-Key-Identifier and Github-Public-Key-Signature headers."
    key = keys.get(identifier)
    if key is None:
        return "The public key identifier is not one this service trusts."
    if len(signature) > MAX_SIGNATURE:
        return "The signature does not verify."
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return "The signature does not verify."
    return None


def sign(private_key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    """The header value GitHub would send for ``body`` (for tests and scripts/sign_leak_report.py)."""
    return base64.b64encode(private_key.sign(body, ec.ECDSA(hashes.SHA256()))).decode("ascii")


class ReplayGuard:
    """Digests of accepted bodies, remembered for a window: the same signed body twice is a replay."""

    def __init__(self, window: float = REPLAY_WINDOW, memory: int = REPLAY_MEMORY) -> None:
        self.window = window
        self.memory = memory
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, body: bytes, now: float | None = None) -> bool:
        """True (and remembered) if this body was not accepted within the window."""
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(body).digest()
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if at > now - self.window and len(self._seen) < self.memory:
                    break
                self._seen.popitem(last=False)
            if digest in self._seen:
                return False
            self._seen[digest] = now
            return True

    def forget(self, body: bytes) -> None:
        """The body was not acted on after all (its command failed): a retry may come."""
        with self._lock:
            self._seen.pop(hashlib.sha256(body).digest(), None)


# The token formats to register with GitHub's secret-scanning partner program (README, "Leaked
# keys and GitHub's secret scanning"): a prefix, 38 base62 characters (32 random, a 6-character
# CRC32), bounded on both sides by anything that is not a letter, digit or underscore.
TOKEN_PATTERNS = {
    "keyledger_api_key": r"\bak_[0-9A-Za-z]{38}\b",
    "keyledger_personal_token": r"\bpat_[0-9A-Za-z]{38}\b",
}
