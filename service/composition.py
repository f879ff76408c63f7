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

from projections.audit import AuditLog, AuditTrail
from projections.beacon import ChangeBeacon
from projections.directory import Directory, DirectoryView
from projections.follower import Follower
from projections.last_used import LastUsed
from projections.store import ViewStore
from projections.verification import VerificationIndex, VerificationView
from service import credentials
from service.application import Keyledger, utc_now
from service.authentication import Authenticator
from service.settings import Settings
from service.verification import Verifier

log = logging.getLogger("keyledger")


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
    _closed: bool = field(default=False, repr=False)

    def after_command(self) -> None:
        """Apply this process's new events to its views and index before answering.

        The command has been recorded by now; should a view fail to apply it, the answer
        stays a success (the event is the truth), the failure is logged, and /readyz
        reports the lag until the view catches up."""
        try:
            self.follower.catch_up()
        except Exception:
            log.exception("a projection could not apply a new event; /readyz reports the lag")

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
    digester = credentials.Digester(pepper)
    keys_app = Keyledger(env=settings.eventsourcing_env(), digester=digester, clock=clock)
    views = ViewStore(settings.views_path)
    index = VerificationIndex()
    beacon = ChangeBeacon(settings.data_dir / "changes.beacon")
    follower = Follower(keys_app, views, [VerificationView(), DirectoryView(), AuditTrail()], [index],
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
    )
    if follow:  # a serving process: flush last-used times and close stores on a normal exit
        atexit.register(system.close)
    return system
