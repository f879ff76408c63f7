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
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit import AuditLog, AuditTrail
from projections.beacon import ChangeBeacon
from projections.campaign import CampaignProgress, CampaignView
from projections.directory import Directory, DirectoryView
from projections.follower import Follower
from projections.last_used import LastUsed
from projections.legacy_usage import LegacyUsage, LegacyUsageView
from projections.store import ViewStore
from projections.verification import VerificationIndex, VerificationView
from service import checkpoints, credentials
from service.application import Keyledger, LegacyPolicy, utc_now
from service.authentication import Authenticator
from service.domain.actors import RequestInfo
from service.domain.campaign import CampaignPlan
from service.settings import Settings, SettingsError, duration_name
from service.verification import Verifier, epoch_now

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
    legacy_usage: LegacyUsage
    signing_key: Ed25519PrivateKey = field(repr=False)
    mirror: checkpoints.CheckpointMirror
    campaign: CampaignProgress
    plan: CampaignPlan
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


def _owner_only(data_dir: Path) -> None:
    """Every file in the data directory readable by its owner only (SQLite makes its -wal and
    -shm files with the database file's mode, so they follow)."""
    for path in data_dir.iterdir():
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


def build_system(settings: Settings, *, clock: Callable[[], datetime] = utc_now,
                 follow: bool = True) -> System:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pepper = credentials.load_or_create_pepper(settings.data_dir, settings.pepper)
    try:
        signing_key = credentials.load_or_create_signing_key(settings.data_dir, settings.audit_signing_key)
    except credentials.SigningKeyError as error:
        raise SettingsError(str(error)) from None
    digester = credentials.Digester(pepper)
    legacy = LegacyPolicy(sunset_at=settings.legacy_sunset_at, token_ttl=settings.access_token_ttl,
                          use_window=settings.legacy_use_window)
    keys_app = Keyledger(env=settings.eventsourcing_env(), digester=digester, clock=clock, legacy=legacy)
    views = ViewStore(settings.views_path)
    index = VerificationIndex(legacy_sunset_at=settings.legacy_sunset_at.timestamp())
    beacon = ChangeBeacon(settings.data_dir / "changes.beacon")
    follower = Follower(keys_app, views,
                        [VerificationView(), DirectoryView(), AuditTrail(keys_app.stored_records),
                         LegacyUsageView(), CampaignView()], [index],
                        beacon=beacon)
    follower.start()
    last_used = LastUsed(views)
    _owner_only(settings.data_dir)
    if follow:
        follower.follow(settings.follow_interval)
        last_used.run_every(settings.last_used_interval)

    def record_legacy_use(client_id: bytes, token_display: str, at: float, request: RequestInfo) -> None:
        if keys_app.record_legacy_use(UUID(bytes=client_id), token_display=token_display,
                                      at=datetime.fromtimestamp(at, UTC), request=request):
            follower.catch_up()  # and tell this machine's other processes: no second record

    system = System(
        settings=settings, keys_app=keys_app, views=views, follower=follower, index=index,
        directory=Directory(views), audit=AuditLog(views),
        authenticator=Authenticator(digester, index, clock),
        last_used=last_used,
        verifier=Verifier(digester, index, clock, last_used, record_use=record_legacy_use,
                          legacy_window=settings.legacy_use_window.total_seconds(),
                          now=epoch_now if clock is utc_now else None),  # no datetime per call
        legacy_usage=LegacyUsage(views),
        signing_key=signing_key, mirror=checkpoints.CheckpointMirror(settings.data_dir / checkpoints.MIRROR_FILE),
        campaign=CampaignProgress(views), plan=campaign_plan(settings),
    )
    if follow:  # a serving process: flush last-used times and close stores on a normal exit
        atexit.register(system.close)
    return system


def campaign_plan(settings: Settings) -> CampaignPlan:
    """The deprecation campaign the settings describe: the sunset, the reminder stages, the look-back."""
    return CampaignPlan.of(settings.legacy_sunset_at,
                           {duration_name(before): before for before in settings.reminders},
                           settings.legacy_lookback)
