"""Webhook signing secrets: made, sealed for storage, opened to sign.

HMAC signing needs the secret itself, so unlike API keys it cannot be kept as a one-way digest.
It is kept *sealed*: AES-256-GCM under a key derived from the deployment's pepper
(``HMAC-SHA256(pepper, "keyledger-webhook-secrets/v1")``), with the endpoint's id as associated
data, so a sealed secret copied onto another endpoint does not open. The event store, the views,
exports and logs only ever hold the sealed form; whoever has the pepper (every serving and
scheduler process of the deployment already has it) can sign. Losing the pepper loses the secrets
(rotate them); leaking the store alone leaks none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets as random
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "whsec_"
_LABEL = b"keyledger-webhook-secrets/v1"


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64 (the Standard Webhooks form)."""
    return PREFIX + base64.b64encode(random.token_bytes(32)).decode("ascii")


class SecretBox:
    """Seals and opens webhook secrets under a key derived from the pepper."""

    def __init__(self, pepper: bytes) -> None:
        self._aead = AESGCM(hmac.new(pepper, _LABEL, hashlib.sha256).digest())

    def seal(self, secret: str, endpoint_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), endpoint_id.encode("ascii"))
        return "v1:" + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, endpoint_id: str) -> str:
        version, _, text = sealed.partition(":")
        if version != "v1":
            raise ValueError("not a sealed webhook secret")
        raw = base64.b64decode(text)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], endpoint_id.encode("ascii")).decode("ascii")
        except InvalidTag:
            raise ValueError("the sealed webhook secret does not open with this pepper") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix(PREFIX) + "==")
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_header(signing_secrets: list[str], msg_id: str, at: datetime, body: bytes) -> tuple[str, str]:
    """(webhook-timestamp, webhook-signature): one ``v1,`` signature per secret, space-separated
    (during a rotation's overlap both the new and the previous secret sign)."""
    timestamp = int(at.timestamp())
    return str(timestamp), " ".join(sign(s, msg_id, timestamp, body) for s in signing_secrets)
