"""The composition root: the one place a process builds its parts.

``build_system(settings)`` constructs the eventsourcing application, the view store,
the projections and the in-memory verification index, and starts following the log.
The Flask app factory, the command line and (later) the scheduler call it; nothing
else constructs these parts, and nothing happens at import time.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit import AuditLog, AuditTrail
from projections.beacon import ChangeBeacon
from projections.campaign import CampaignProgress, CampaignView
from projections.directory import Directory, DirectoryView
from projections.expiry import ExpiringKeys, ExpiryView
from projections.follower import Follower
from projections.index_snapshot import FILE_NAME as INDEX_SNAPSHOT_FILE
from projections.index_snapshot import IndexSnapshots, snapshot_key
from projections.last_used import LastUsed
from projections.legacy_usage import LegacyUsage, LegacyUsageView
from projections.limits import LimitBook, LimitsView
from projections.listener import LogListener
from projections.store import (
    TRANSIENT_ERRORS,
    SqliteViewStore,
    ViewStore,
    advisory_key,
    open_view_store,
)
from projections.usage import Usage
from projections.verification import VerificationIndex, VerificationView
from projections.webhooks import WebhookOutbox, WebhooksView
from service import checkpoints, credentials
from service.application import Keyledger, LegacyPolicy, utc_now
from service.authentication import Authenticator
from service.background_writer import BackgroundWriter, QueueFull
from service.domain.actors import Actor, RequestInfo
from service.domain.audit import chain_hash
from service.domain.campaign import CampaignPlan
from service.domain.errors import AuditChainBroken, Unavailable
from service.domain.expiry import ExpiryPlan
from service.ratelimit import Limiter
from service.ratelimit.local import FILE_NAME as COUNTERS_FILE
from service.ratelimit.local import LocalCounters
from service.settings import Settings, SettingsError, duration_name
from service.verification import Verifier, epoch_now
from service.webhooks.secrets import SecretBox

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
    usage: Usage
    verifier: Verifier
    legacy_usage: LegacyUsage
    signing_key: Ed25519PrivateKey = field(repr=False)
    mirror: checkpoints.CheckpointMirror
    campaign: CampaignProgress
    plan: CampaignPlan
    alarm: checkpoints.Alarm = field(default_factory=checkpoints.Alarm)
    mark: checkpoints.TailMark | None = None
    listener: LogListener | None = None
    use_writer: BackgroundWriter | None = None  # legacy-token uses, recorded off the request path
    limiter: Limiter | None = None  # rate limits of keys and apps (service.ratelimit)
    # Reminders before keys expire (service.domain.expiry): the stages, and the keys that may be due.
    expiry_plan: ExpiryPlan = field(default_factory=lambda: ExpiryPlan.of(()))
    expiring: ExpiringKeys | None = None
    webhooks: WebhookOutbox | None = None  # webhook endpoints and their outbox (service.webhooks)
    _closed: bool = field(default=False, repr=False)

    def sign_checkpoint(self, now: datetime | None = None) -> dict | None:
        """Verify the records since the last checkpoint, then sign the audit chain's head (None if
        nothing is new). A tail that does not verify is never signed: the alarm is raised instead."""
        self.follower.catch_up()
        self.follower.update_views()  # the checkpoint's own event is in the audit view at once
        try:
            checkpoint = checkpoints.sign_checkpoint(self.keys_app, self.signing_key, self.mirror, self.mark,
                                                     now=now)
        except AuditChainBroken as broken:
            self.alarm.raise_(broken.first_bad_seq, broken.reason, at=self.keys_app.now(),
                              action="; no checkpoint signed")
            return None
        self.alarm.clear(source="tail")
        if checkpoint is not None:
            self.after_command()
        return checkpoint

    def check_integrity(self) -> dict:
        """Recompute the audit chain from the event store (see service.checkpoints)."""
        try:
            self.follower.update_views(timeout=VIEW_WRITE_TIMEOUT)
        except Exception:  # a view writer is busy: rows not yet written are simply not compared
            log.warning("the audit view could not be brought up to date before the integrity check")
        report = checkpoints.check_integrity(self.keys_app, self.audit, self.signing_key, self.mirror, self.mark)
        if report["ok"]:
            self.alarm.clear(source="full")
        else:
            self.alarm.raise_(report["first_bad_seq"], report["reason"], at=self.keys_app.now(), source="full")
        return report

    def accept_baseline(self, reason: str, by: Actor) -> tuple[dict, dict | None]:
        """Accept the store as it stands (a restore from a backup, after an operator looked): the
        decision recorded and signed, the views rebuilt from the accepted log, a checkpoint signed."""
        baseline = checkpoints.accept_baseline(self.keys_app, self.signing_key, self.mirror, self.mark,
                                               reason=reason, by=by)
        self.follower.rebuild()  # records refused before are the accepted store's now
        self.alarm.clear(source="full")
        return baseline, self.sign_checkpoint()

    def store_unreachable(self) -> bool:
        """PostgreSQL is known to be down: the event subscription dropped and cannot reconnect.
        (A circuit breaker for requests; SQLite, a file, has no such state.)"""
        return self.listener is not None and self.listener.unreachable

    def after_command(self) -> None:
        """Bring this process's index and the views up to date before answering.

        The index is updated from the log in memory and cannot be held up by the view
        store, so a revoked key is refused before DELETE answers. Should the log not be
        readable or the views be locked for longer than VIEW_WRITE_TIMEOUT (a rebuild in
        progress), the command still answers — the event is recorded — and the follower
        catches up later. Inside a deferred command (service.api.idempotency) nothing is
        recorded yet: this runs after the commit instead."""
        if self.keys_app.deferring():
            return
        with self.keys_app.reading_own_writes():  # what this process just wrote, from memory
            try:
                self.follower.catch_up()
            except Exception:
                log.exception("the index could not catch up with the log now; the follower retries")
            try:
                self.follower.update_views(timeout=VIEW_WRITE_TIMEOUT)
            except Exception as error:
                if (reason := store_fault(error)) is None:
                    log.exception("the views could not be brought up to date now; the follower retries")
                else:  # a full disk, a lock held too long: expected, no traceback
                    log.warning("the views could not be brought up to date now (%s); the follower retries",
                                reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.use_writer is not None:
            self.use_writer.close()  # the uses still queued, if the store takes them now
        if self.listener is not None:
            self.listener.stop()
        self.follower.stop()
        self.last_used.stop()  # writes the last-used times not yet written
        self.usage.stop()  # and the usage counts
        self.views.close()
        self.keys_app.close()
        if self.mark is not None:
            self.mark.close()
        if self.follower.beacon is not None:
            self.follower.beacon.close()


def _owner_only(data_dir: Path) -> None:
    """Every file in the data directory readable by its owner only (SQLite makes its -wal and
    -shm files with the database file's mode, so they follow)."""
    for path in data_dir.iterdir():
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _ledger(settings: Settings, clock: Callable[[], datetime] = utc_now
            ) -> tuple[Keyledger, Ed25519PrivateKey, bytes, credentials.Digester]:
    """The eventsourcing application over the configured store, with its keys."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pepper = credentials.load_or_create_pepper(settings.data_dir, settings.pepper)
    try:
        signing_key = credentials.load_or_create_signing_key(settings.data_dir, settings.audit_signing_key)
    except credentials.SigningKeyError as error:
        raise SettingsError(str(error)) from None
    digester = credentials.Digester(pepper)
    legacy = LegacyPolicy(sunset_at=settings.legacy_sunset_at, token_ttl=settings.access_token_ttl,
                          use_window=settings.legacy_use_window)
    with creating_tables(settings):  # instances starting together create tables one at a time
        keys_app = Keyledger(env=settings.eventsourcing_env(), digester=digester, clock=clock, legacy=legacy,
                             seal_key=credentials.record_seal_key(signing_key))
    return keys_app, signing_key, pepper, digester


# Views a bulk pass on SQLite builds in a second process (``Follower.side_views``): the audit trail,
# a third of a first start's work, and the webhooks view, which reuses its records.
SIDE_VIEWS = ("audit", "webhooks")


def start_side_build(settings: Settings) -> Callable[[Path, list[str], int], Any]:
    """``Follower.side_start``: a Python process started afresh (no connection, lock or thread of
    this one's is copied into it, and no main module run again) that runs ``build_aside`` with this
    process's import path; its arguments travel on its standard input, never on its command line."""
    def start(path: Path, names: list[str], page_size: int, after: int | None = None) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", _SIDE_MAIN], stdin=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        assert process.stdin is not None
        with process.stdin:
            process.stdin.write(pickle.dumps((settings, str(path), names, page_size, os.getpid(), after)))
        return process
    return start


_SIDE_MAIN = ("import pickle, sys; from service.composition import side_main; "
              "sys.exit(side_main(*pickle.loads(sys.stdin.buffer.read())))")


def side_main(*args: Any) -> int:
    """The second process's main: ``build_aside``, its log lines as the service's; 0 when built."""
    from service import logs

    logs.configure_once()
    try:
        build_aside(*args)
    except Exception as error:  # noqa: BLE001 - said in one line; the main process builds them itself
        log.error("building views in a second process failed (%s: %s); the main process builds them",
                  type(error).__name__, (str(error).splitlines() or [""])[0])
        return 1
    return 0


def build_aside(settings: Settings, path: str, names: list[str], page_size: int, parent: int,
                after: int | None = None) -> None:
    """The second process of a bulk pass: the views ``names`` (of ``SIDE_VIEWS``) built from the log
    into the SQLite file ``path``, for the process ``parent`` to adopt — or, given ``after``, the
    verification view's rows of the log after that position staged there (a rebuild of that view
    in two halves: ``Follower.stage_aside``). Records are judged as the parent judges them (the
    same rules, primed from the ledger); a refused one is reported by the parent's own pass, not here."""
    keys_app, signing_key, _, _ = _ledger(settings)
    try:
        keys_app.prime_record_rules(signing_key.public_key())
        keys_app.on_refused = lambda seq, problem: None
        if os.getppid() != parent:  # gone before the side file is made (opening the store makes it)
            raise RuntimeError("the process that started this build is gone")
        if after is not None:
            if names != ["verification"]:
                raise ValueError(f"only the verification view stages rows aside, not {names}")
            projections: list[Any] = [VerificationView()]
        else:
            audit_trail = AuditTrail(keys_app.stored_records)
            views = {"audit": audit_trail, "webhooks": WebhooksView(audit_trail)}
            projections = [views[name] for name in SIDE_VIEWS if name in names]
        store = SqliteViewStore(path, scratch=True)  # thrown away unless this process ends well
        follower = Follower(keys_app, store, projections, page_size=page_size)
        try:
            if after is not None:
                follower.stage_aside(parent, after)
            else:
                follower.build_aside(parent)
        finally:
            store.close()
            if os.getppid() != parent:  # nobody will adopt the file: not left behind
                SqliteViewStore.remove_side(Path(path))
    finally:
        keys_app.close()


def build_system(settings: Settings, *, clock: Callable[[], datetime] = utc_now,
                 follow: bool = True) -> System:
    keys_app, signing_key, pepper, digester = _ledger(settings, clock)
    keys_app.leak_policy = settings.leak_policy
    keys_app.webhook_box = SecretBox(pepper)  # webhook secrets sealed under the pepper's key
    keys_app.webhooks_allow_private = settings.webhooks_allow_private
    views = view_store(settings)
    if settings.uses_postgres:
        _check_identity(views, digester, signing_key)
    alarm, mark = _tamper_evidence(settings, keys_app, signing_key)
    index = VerificationIndex(legacy_sunset_at=settings.legacy_sunset_at.timestamp())
    index.snapshots = index_snapshots(settings, keys_app, digester)
    limit_book = LimitBook()
    beacon = ChangeBeacon(settings.data_dir / "changes.beacon")
    audit_trail = AuditTrail(keys_app.stored_records, on_head=mark.note)
    follower = Follower(keys_app, views,
                        [VerificationView(), DirectoryView(), audit_trail,
                         LegacyUsageView(), CampaignView(), LimitsView(), ExpiryView(),
                         WebhooksView(audit_trail)],  # after the audit trail: reuses its records
                        [index, limit_book],
                        beacon=beacon)
    if not settings.uses_postgres and settings.bulk_second_process_from is not None:
        # two cores build a long pass's views (see Follower._build)
        follower.side_views, follower.side_start = SIDE_VIEWS, start_side_build(settings)
        follower.side_from = settings.bulk_second_process_from
    follower.start()
    if follower.views_ahead_at is not None:  # the log ends before the views: truncated, or restored
        mark.note(follower.views_ahead_at, None)
    last_used = LastUsed(views)
    usage = Usage(views)
    _owner_only(settings.data_dir)
    listener = None
    if follow:
        follower.follow(settings.follow_interval)
        last_used.run_every(settings.last_used_interval)
        usage.run_every(settings.last_used_interval)
        if settings.uses_postgres:  # other instances' events within milliseconds; polling stays as fallback
            listener = LogListener(settings.database_conninfo, keys_app.recorder.channel_name,
                                   lambda: _on_notification(follower),
                                   on_reachable=lambda: _refresh_pools(keys_app, views))
            listener.start()

    def write_legacy_use(use: tuple[bytes, str, float, RequestInfo]) -> None:
        client_id, token_display, at, request = use
        if keys_app.record_legacy_use(UUID(bytes=client_id), token_display=token_display,
                                      at=datetime.fromtimestamp(at, UTC), request=request):
            try:
                follower.catch_up()  # and tell this machine's other processes: no second record
            except Exception:  # noqa: BLE001 - recorded; the follower learns of it on its next poll
                log.debug("catching up after recording a legacy use failed", exc_info=True)

    def store_reachable() -> bool:
        return not (listener is not None and listener.unreachable) and follower.staleness() == 0

    # A legacy token's first use in a window is recorded as an event by a background writer: the
    # verdict waits for it a quarter of a second at most (in the common case it is stored before
    # the answer, as DESIGN.md wants), and not at all while the store is down; queued uses are
    # written when it is back (one per client and window, at most 10,000 waiting).
    use_writer = BackgroundWriter(write_legacy_use, name="legacy-use-writer", healthy=store_reachable)
    window = settings.legacy_use_window.total_seconds()

    def record_legacy_use(client_id: bytes, token_display: str, at: float, request: RequestInfo) -> None:
        try:
            use_writer.submit((client_id, at - at % window if window > 0 else at),
                              (client_id, token_display, at, request))
        except QueueFull as error:
            raise Unavailable(f"the use cannot be queued for recording ({error})") from None

    verifier = Verifier(digester, index, clock, last_used, record_use=record_legacy_use,
                        legacy_window=settings.legacy_use_window.total_seconds(),
                        now=epoch_now if clock is utc_now else None,  # no datetime per call
                        usage=usage)
    verifier.limiter = limiter = Limiter(limit_book, rate_limit_counters(settings))
    system = System(
        settings=settings, keys_app=keys_app, views=views, follower=follower, index=index,
        directory=Directory(views), audit=AuditLog(views),
        authenticator=Authenticator(digester, index, clock),
        last_used=last_used, usage=usage,
        verifier=verifier, limiter=limiter,
        legacy_usage=LegacyUsage(views),
        signing_key=signing_key, mirror=checkpoints.CheckpointMirror(settings.data_dir / checkpoints.MIRROR_FILE),
        campaign=CampaignProgress(views), plan=campaign_plan(settings), listener=listener,
        use_writer=use_writer, alarm=alarm, mark=mark, webhooks=WebhookOutbox(views),
        expiry_plan=ExpiryPlan.of(settings.expiry_reminders), expiring=ExpiringKeys(views),
    )
    if follow:  # a serving process: flush last-used times and close stores on a normal exit
        atexit.register(system.close)
    return system


def rate_limit_counters(settings: Settings):  # noqa: ANN201 - a service.ratelimit Counters
    """Counters shared by this instance's workers (a file in the data directory), or by every
    instance through Redis (``KEYLEDGER_REDIS_URL``), falling back to the local ones."""
    local = LocalCounters(settings.data_dir / COUNTERS_FILE)
    if settings.redis_url is None:
        return local
    from service.ratelimit.redis import RedisCounters

    return RedisCounters(settings.redis_url, local)


def _tamper_evidence(settings: Settings, keys_app: Keyledger,
                     signing_key: Ed25519PrivateKey) -> tuple[checkpoints.Alarm, checkpoints.TailMark]:
    """The alarm, told of every record the follower refuses to apply, and the tail mark (frozen
    while the alarm is raised); the application's record rules primed from the ledger."""
    alarm = checkpoints.Alarm()
    epoch = keys_app.prime_record_rules(signing_key.public_key())
    mark = checkpoints.TailMark(settings.data_dir / checkpoints.MARK_FILE, epoch)
    alarm.on_raise.append(lambda: setattr(mark, "frozen", True))
    keys_app.on_refused = lambda seq, problem: alarm.raise_(  # wherever it is: only a full check clears it
        seq, f"the stored record at seq {seq}: {problem}", at=keys_app.now(), action="; refused to apply it",
        source="full")
    return alarm, mark


def index_snapshots(settings: Settings, keys_app: Keyledger, digester: credentials.Digester) -> IndexSnapshots:
    """The verification index's sealed snapshot in the data directory (``projections.index_snapshot``):
    valid for this store's log (the record at its position), pepper, sunset and accepted baseline."""

    def fingerprint(position: int) -> str | None:
        found = keys_app.raw_records(position - 1, 1)
        if not found or found[0][0] != position:
            return None
        return chain_hash("", *found[0])

    store = f"postgresql:{settings.database_schema}" if settings.uses_postgres else "sqlite"
    pepper = digester.hexdigest("keyledger:index-snapshot")
    sunset = settings.legacy_sunset_at.timestamp()
    return IndexSnapshots(settings.data_dir / INDEX_SNAPSHOT_FILE, snapshot_key(keys_app.seal_key), fingerprint,
                          lambda: {"store": store, "pepper": pepper, "legacy_sunset_at": sunset,
                                   "accepted_through": keys_app.record_rules.accepted_through})


def _on_notification(follower: Follower) -> None:
    """Another instance (or this one) saved events: the catch-up thread brings the in-memory index
    up to date (the listener only wakes it, and goes back to listening at once). The shared views
    need nothing here: the instance that saved brings them up to date before it answers, and every
    instance's poll applies whatever a crashed writer left behind."""
    follower.wake()


def _refresh_pools(keys_app: Keyledger, views: ViewStore) -> None:
    """PostgreSQL answers again after an outage: test the pools' idle connections now and replace
    the broken ones, before the breaker lets requests through — psycopg's pool would find each
    broken connection only when a request takes it, and pause a second before trying the next."""
    for pool in (getattr(getattr(keys_app.recorder, "datastore", None), "pool", None),
                 getattr(views, "pool", None)):
        if pool is not None:
            pool.check()


def view_store(settings: Settings) -> ViewStore:
    """The view store the settings name: the SQLite file in the data directory, or PostgreSQL's schema."""
    return open_view_store(settings.views_path, schema=settings.database_schema,
                           database_url=settings.database_conninfo if settings.uses_postgres else None)


@contextmanager
def creating_tables(settings: Settings) -> Iterator[None]:
    """Around the event store's construction. On PostgreSQL: hold a session advisory lock while the
    schema and the tables are created — several instances starting at once would otherwise race in
    CREATE TABLE (and one crash). SQLite needs nothing."""
    if not settings.uses_postgres:
        yield
        return
    import psycopg
    from psycopg import sql

    try:
        connection = psycopg.connect(settings.database_conninfo, autocommit=True,
                                     application_name="keyledger-init")
    except psycopg.Error as error:
        raise SettingsError(f"KEYLEDGER_DATABASE_URL: cannot connect to PostgreSQL ({first_line(error)})") from None
    with connection:
        connection.execute("SELECT pg_advisory_lock(%s)", (advisory_key(f"keyledger:init:{settings.database_schema}"),))
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.database_schema)))
        yield  # the lock goes with the connection


IDENTITY_DDL = "CREATE TABLE IF NOT EXISTS store_identity (name TEXT PRIMARY KEY, value TEXT NOT NULL)"


def _check_identity(views: ViewStore, digester: credentials.Digester, signing_key: Ed25519PrivateKey) -> None:
    """Instances sharing a PostgreSQL store must share the pepper (or no key made on one verifies
    on another) and the audit signing key (or checkpoints contradict each other). The first
    instance records a fingerprint of each; every later one must match, or it refuses to start."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    mine = {
        "pepper": digester.hexdigest("keyledger:store-identity"),
        "audit_signing_key": signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
    }
    with views.write() as db:
        db.execute(IDENTITY_DDL)
        for name, value in mine.items():
            db.execute("INSERT INTO store_identity (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                       (name, value))
        recorded = dict(db.execute("SELECT name, value FROM store_identity").fetchall())
    if recorded["pepper"] != mine["pepper"]:
        raise SettingsError("KEYLEDGER_PEPPER differs from the pepper this PostgreSQL store was created with: "
                            "give every instance the same KEYLEDGER_PEPPER")
    if recorded["audit_signing_key"] != mine["audit_signing_key"]:
        raise SettingsError("KEYLEDGER_AUDIT_SIGNING_KEY differs from the key this PostgreSQL store was created "
                            "with: give every instance the same KEYLEDGER_AUDIT_SIGNING_KEY")


def store_exists(settings: Settings) -> bool:
    """Whether the configured store has been created (SQLite: its file; PostgreSQL: its tables)."""
    if not settings.uses_postgres:
        return settings.events_path.exists()
    import psycopg

    try:
        with psycopg.connect(settings.database_conninfo, autocommit=True) as connection:
            row = connection.execute("SELECT to_regclass(%s)", (f"{settings.database_schema}.projection_tracking",)
                                     ).fetchone()
    except psycopg.Error as error:
        raise SettingsError(f"KEYLEDGER_DATABASE_URL: cannot connect to PostgreSQL ({first_line(error)})") from None
    return row is not None and row[0] is not None


def first_line(error: BaseException) -> str:
    """An error's first line (driver errors run to several, with hints): for one-line messages."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def store_fault(error: BaseException) -> str | None:
    """The one-line reason when ``error`` says a store cannot be used right now (a full disk, a
    lock, an outage: expected and retried, so logged without a traceback), else None (a bug:
    log it in full)."""
    from eventsourcing.persistence import InterfaceError, OperationalError

    if isinstance(error, Unavailable):
        return first_line(error.__cause__) if error.__cause__ is not None else error.message
    if isinstance(error, (*TRANSIENT_ERRORS, OperationalError, InterfaceError)):
        return first_line(error)
    return None


def campaign_plan(settings: Settings) -> CampaignPlan:
    """The deprecation campaign the settings describe: the sunset, the reminder stages, the look-back."""
    return CampaignPlan.of(settings.legacy_sunset_at,
                           {duration_name(before): before for before in settings.reminders},
                           settings.legacy_lookback)
