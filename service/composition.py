"""The composition root: the one place a process builds its parts.

``build_system(settings)`` constructs the eventsourcing application, the view store,
the projections and the in-memory verification index, and starts following the log.
The Flask app factory, the command line and (later) the scheduler call it; nothing
else constructs these parts, and nothing happens at import time.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit import AuditLog, AuditTrail
from projections.beacon import ChangeBeacon
from projections.directory import Directory, DirectoryView
from projections.follower import Follower
from projections.last_used import LastUsed
from projections.store import ViewStore
from projections.verification import VerificationIndex, VerificationView
from service import checkpoints, credentials
from service.application import Keyledger, utc_now
from service.authentication import Authenticator
from service.settings import Settings, SettingsError
from service.verification import Verifier

log = logging.getLogger("keyledger")

VIEW_WRITE_TIMEOUT = 2.0  # seconds a command waits for the view store's lock


@dataclass
class System:
    settings: Settings
    keys_app: Keyledger
    views: ViewStore
    follower: Follower
    index: VerificationIndex
    directory: Directory
    audit: AuditLog
    authenticator: Authenticator
    last_used: LastUsed
    verifier: Verifier
    signing_key: Ed25519PrivateKey = field(repr=False)
    mirror: checkpoints.CheckpointMirror
    _closed: bool = field(default=False, repr=False)

    def sign_checkpoint(self, now: datetime | None = None) -> dict | None:
        """Sign the audit chain's head (None if nothing is new since the last checkpoint)."""
        self.follower.catch_up()
        self.follower.update_views()  # the checkpoint's own event is in the audit view at once
        checkpoint = checkpoints.sign_checkpoint(self.keys_app, self.signing_key, self.mirror, now=now)
        if checkpoint is not None:
            self.after_command()
        return checkpoint

    def check_integrity(self) -> dict:
        """Recompute the audit chain from the event store (see service.checkpoints)."""
        try:
            self.follower.update_views(timeout=VIEW_WRITE_TIMEOUT)
        except Exception:  # a view writer is busy: rows not yet written are simply not compared
            log.warning("the audit view could not be brought up to date before the integrity check")
        return checkpoints.check_integrity(self.keys_app, self.audit, self.signing_key, self.mirror)

    def after_command(self) -> None:
        """Bring this process's index and the views up to date before answering.

        The index is updated from the log in memory and cannot be held up by the view
        store, so a revoked key is refused before DELETE answers. Should the views be
        locked for longer than VIEW_WRITE_TIMEOUT (a rebuild in progress), the command
        still answers — the event is recorded — and the follower writes them later."""
        self.follower.catch_up()
        try:
            self.follower.update_views(timeout=VIEW_WRITE_TIMEOUT)
        except Exception:
            log.exception("the views could not be brought up to date now; the follower retries")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.follower.stop()
        self.last_used.stop()  # writes the last-used times not yet written
        self.views.close()
        self.keys_app.close()
        if self.follower.beacon is not None:
            self.follower.beacon.close()


def build_system(settings: Settings, *, clock: Callable[[], datetime] = utc_now,
                 follow: bool = True) -> System:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pepper = credentials.load_or_create_pepper(settings.data_dir, settings.pepper)
    try:
        signing_key = credentials.load_or_create_signing_key(settings.data_dir, settings.audit_signing_key)
    except credentials.SigningKeyError as error:
        raise SettingsError(str(error)) from None
    digester = credentials.Digester(pepper)
    keys_app = Keyledger(env=settings.eventsourcing_env(), digester=digester, clock=clock)
    views = ViewStore(settings.views_path)
    index = VerificationIndex()
    beacon = ChangeBeacon(settings.data_dir / "changes.beacon")
    follower = Follower(keys_app, views, [VerificationView(), DirectoryView(), AuditTrail(keys_app.stored_records)], [index],
                        beacon=beacon)
    follower.start()
    last_used = LastUsed(views)
    if follow:
        follower.follow(settings.follow_interval)
        last_used.run_every(settings.last_used_interval)
    system = System(
        settings=settings, keys_app=keys_app, views=views, follower=follower, index=index,
        directory=Directory(views), audit=AuditLog(views),
        authenticator=Authenticator(digester, index, clock),
        last_used=last_used, verifier=Verifier(digester, index, clock, last_used),
        signing_key=signing_key, mirror=checkpoints.CheckpointMirror(settings.data_dir / checkpoints.MIRROR_FILE),
    )
    if follow:  # a serving process: flush last-used times and close stores on a normal exit
        atexit.register(system.close)
    return system
