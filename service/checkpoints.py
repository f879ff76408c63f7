"""Signed checkpoints of the audit chain, and the integrity check that uses them.

Where checkpoints live, and why: each is an event of the ``AuditLedger`` stream in the event
store itself — so it is backed up, replicated and shared with the events it vouches for, and is
itself a link of the chain (deleting it breaks the chain like deleting any event) — and a copy
of each is appended to ``<data dir>/audit-checkpoints.jsonl`` (mode 0600), outside the event
store. Checkpoints are numbered and each names the signature of the one before, so one cannot be
dropped from the middle of the stream; a rewrite of the store that drops the latest ones is
caught by the copies outside it. (The security team can keep further copies anywhere: a
checkpoint is public, and checking it needs only the public key.)

``sign_checkpoint(keys_app, signing_key, mirror, now=...)`` is a plain function: ``keyledger
serve`` calls it at start, ``keyledger audit checkpoint`` on demand, the scheduler hourly.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit import AuditLog
from service.application import Keyledger
from service.domain.actors import Actor

log = logging.getLogger("keyledger.audit")

MIRROR_FILE = "audit-checkpoints.jsonl"
_MIRRORED = ("number", "seq", "hash", "previous", "signed_at", "message", "signature")


class CheckpointMirror:
    """The copies of checkpoints kept outside the event store: one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: dict) -> None:
        line = json.dumps({k: checkpoint[k] for k in _MIRRORED}, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        copies = []
        for line in text.splitlines():
            try:
                copy = json.loads(line)
            except ValueError:
                continue  # a torn last line; every other line is checked against the store
            if isinstance(copy, dict) and all(k in copy for k in _MIRRORED):
                copies.append(copy)
        return copies


def sign_checkpoint(keys_app: Keyledger, signing_key: Ed25519PrivateKey, mirror: CheckpointMirror,
                    *, now: datetime | None = None, by: Actor | None = None) -> dict | None:
    """Sign the chain's head now; None when nothing is new since the last checkpoint."""
    checkpoint = keys_app.sign_checkpoint(signing_key, now=now, by=by)
    if checkpoint is not None:
        mirror.append(checkpoint)
        log.info("audit checkpoint %d signed at seq %d", checkpoint["number"], checkpoint["seq"])
    return checkpoint


def check_integrity(keys_app: Keyledger, audit: AuditLog, signing_key: Ed25519PrivateKey,
                    mirror: CheckpointMirror) -> dict:
    """Recompute the chain from the event store's records; compare with the audit view's
    rows, the recorded checkpoints and their copies outside the store."""
    return keys_app.check_integrity(witness=audit.chain(), public_key=signing_key.public_key(),
                                     mirrored=mirror.read())
