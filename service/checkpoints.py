"""Signed checkpoints of the audit chain, and the integrity check that uses them.

Where checkpoints live, and why: each is an event of the ``AuditLedger`` stream in the event
store itself — so it is backed up, replicated and shared with the events it vouches for, and is
itself a link of the chain (deleting it breaks the chain like deleting any event) — and a copy
of each is appended to ``<data dir>/audit-checkpoints.jsonl`` (mode 0600), outside the event
store. Checkpoints are numbered and each names the signature of the one before, so one cannot be
dropped from the middle of the stream; a rewrite of the store that drops the latest ones is
caught by the copies outside it. (The security team can keep further copies anywhere: a
checkpoint is public, and checking it needs only the public key.)

``sign_checkpoint(keys_app, signing_key, mirror, mark, now=...)`` is a plain function: ``keyledger
serve`` calls it at start, ``keyledger audit checkpoint`` on demand, the scheduler hourly. It
verifies every record since the last checkpoint first (seals, types, the copies and the tail
mark below) and signs nothing over a tail that does not verify: the ``Alarm`` is raised instead.

The *tail mark* (``<data dir>/audit-tail.json``, 0600) is the last position — and the chain's
hash there — this instance saw the log reach: written whenever the audit view advances, never
lowered, kept outside the store. A log that ends before it was truncated, whatever the store's
own views say. An accepted baseline (``keyledger audit accept-baseline``) starts a new *epoch*:
copies and marks written before it are superseded, never deleted.
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
MARK_FILE = "audit-tail.json"
MARK_SIZE = 256  # the mark is rewritten in place, padded to this many bytes (no rename per write)
_MIRRORED = ("number", "seq", "hash", "previous", "signed_at", "message", "signature")
_BASELINE = ("kind", "seq", "hash", "accepted_at", "by", "reason", "message", "signature", "epoch")


class CheckpointMirror:
    """The copies of checkpoints kept outside the event store: one JSON line each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: dict) -> None:
        """A checkpoint (with the epoch it was signed in), or a baseline."""
        keys = _BASELINE if checkpoint.get("kind") == "baseline" else (*_MIRRORED, "epoch")
        line = json.dumps({k: checkpoint[k] for k in keys if k in checkpoint}, sort_keys=True) + "\n"
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
            if isinstance(copy, dict) and (all(k in copy for k in _MIRRORED) or all(k in copy for k in _BASELINE)):
                copies.append(copy)
        return copies


class TailMark:
    """The last position (and the chain's hash there) this instance saw the log reach, in a file
    outside the store: ``{"seq", "hash", "epoch"}``. ``note`` only ever raises it; while the
    alarm is raised it does not move at all (the evidence stays as found)."""

    def __init__(self, path: Path, epoch: str = "-") -> None:
        self.path = path
        self.epoch = epoch
        self.frozen = False
        found = self.read()
        self._seq = found["seq"] if found and found.get("epoch", "-") == epoch else 0
        self._failed = False
        self._fd: int | None = None

    def read(self) -> dict | None:
        try:
            mark = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if (not isinstance(mark, dict) or type(mark.get("seq")) is not int
                or not isinstance(mark.get("hash"), (str, type(None))) or not isinstance(mark.get("epoch", "-"), str)):
            return None
        return mark

    def note(self, seq: int, head_hash: str | None) -> None:
        """The audit view reached ``seq`` with ``head_hash`` (None: the hash is not known)."""
        if self.frozen or seq <= self._seq:
            return
        self._write({"seq": seq, "hash": head_hash, "epoch": self.epoch})

    def reset(self, seq: int, head_hash: str, epoch: str) -> None:
        """A new baseline: the mark starts again from it."""
        self.epoch, self._seq, self.frozen = epoch, 0, False
        self._write({"seq": seq, "hash": head_hash, "epoch": epoch})

    def _write(self, mark: dict) -> None:
        """In place: one write of a padded record at offset 0 of a file kept open (a rename per
        write cost a millisecond here; this, microseconds). JSON ignores the trailing spaces."""
        data = json.dumps(mark).encode("ascii").ljust(MARK_SIZE)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
                os.ftruncate(self._fd, MARK_SIZE)
            os.pwrite(self._fd, data, 0)
        except OSError as error:  # a full or read-only disk costs the mark, never the command
            if not self._failed:
                log.warning("the audit tail mark could not be written: %s", error.strerror or error)
            self._failed = True
            return
        self._failed = False
        self._seq = mark["seq"]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Alarm:
    """Tampering found: the first bad seq and why, for ``/readyz``, the metrics and the log (one
    ERROR line each time it is raised with something new). Cleared by a verification that passes."""

    def __init__(self) -> None:
        self.first_bad_seq: int | None = None
        self.reason: str | None = None
        self.raised_at: datetime | None = None
        self.source = ""  # "tail" (a tail that did not verify) or "full" (audit verify, a refused record)
        self.on_raise: list = []  # called with no arguments each time it is raised anew

    @property
    def raised(self) -> bool:
        return self.first_bad_seq is not None

    def raise_(self, first_bad_seq: int, reason: str, *, at: datetime | None = None, action: str = "",
               source: str = "tail") -> None:
        if self.first_bad_seq is not None and self.first_bad_seq <= first_bad_seq:
            if source == "full":
                self.source = "full"
            return  # already raised for this record or an earlier one
        self.first_bad_seq, self.reason, self.raised_at = first_bad_seq, reason, at
        self.source = source
        log.error("audit chain broken at seq %d: %s%s", first_bad_seq, reason, action,
                  extra={"first_bad_seq": first_bad_seq})
        for hook in list(self.on_raise):
            hook()

    def clear(self, *, source: str = "full") -> None:
        """A verification passed: a full one clears any alarm; one of the tail only what the tail
        raised (a full check may have found something before the last checkpoint)."""
        if source == "full" or self.source != "full":
            self.first_bad_seq = self.reason = self.raised_at = None
            self.source = ""

    def detail(self) -> dict:
        return {"ok": not self.raised, "first_bad_seq": self.first_bad_seq, "reason": self.reason}


def sign_checkpoint(keys_app: Keyledger, signing_key: Ed25519PrivateKey, mirror: CheckpointMirror,
                    mark: TailMark | None = None, *, now: datetime | None = None,
                    by: Actor | None = None) -> dict | None:
    """Verify the tail, then sign the chain's head now; None when nothing is new since the last
    checkpoint. Raises ``AuditChainBroken`` (nothing signed) when the tail does not verify."""
    checkpoint = keys_app.sign_checkpoint(signing_key, now=now, by=by, mirrored=mirror.read(),
                                          mark=mark.read() if mark is not None else None)
    if checkpoint is not None:
        mirror.append(checkpoint)
        log.info("audit checkpoint %d signed at seq %d", checkpoint["number"], checkpoint["seq"])
    return checkpoint


def check_integrity(keys_app: Keyledger, audit: AuditLog, signing_key: Ed25519PrivateKey,
                    mirror: CheckpointMirror, mark: TailMark | None = None) -> dict:
    """Recompute the chain from the event store's records and judge each; compare with the
    audit view's rows, the recorded checkpoints, their copies and the tail mark outside the store."""
    return keys_app.check_integrity(witness=audit.chain(), public_key=signing_key.public_key(),
                                    mirrored=mirror.read(), mark=mark.read() if mark is not None else None)


def accept_baseline(keys_app: Keyledger, signing_key: Ed25519PrivateKey, mirror: CheckpointMirror,
                    mark: TailMark, *, reason: str, by: Actor, now: datetime | None = None) -> dict:
    """Record the operator's decision (signed) and start a new epoch outside the store too."""
    baseline = keys_app.accept_baseline(signing_key, reason=reason, by=by, now=now)
    mirror.append(baseline)
    mark.reset(baseline["seq"], baseline["hash"], baseline["epoch"])
    log.warning("audit baseline accepted at seq %d by %s", baseline["seq"], by.ref)
    return baseline
