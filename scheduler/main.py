"""Wiring: the scheduler's jobs on APScheduler 3.11 (the deprecation campaign, the reminders
before keys expire — ``scheduler.expiry``, through the campaign's outbox — the record of keys
that have expired, and the audit chain's hourly signed checkpoint). The only module that imports APScheduler.

``build_scheduler(system)`` registers the reconciliations of ``scheduler.jobs`` as repeating
jobs with explicit ids, ``coalesce=True``, ``max_instances=1`` and ``misfire_grace_time=None``,
first run at once (a process that was down catches up at start), then every
``KEYLEDGER_SCHEDULER_INTERVAL`` seconds; future stage times and the sunset also get a job at
their exact moment. Nothing is lost if the process dies: the next run finds what is due.

``CampaignScheduler`` makes it one per deployment: it runs the jobs only while it holds the
file lock beside the store; a second one logs that it is standing by, and takes over when
the holder's process ends. ``keyledger scheduler`` runs one alone (``run_scheduler``);
``keyledger serve`` embeds one (``start_embedded``) in each worker, where the lock lets
exactly one of them run the jobs.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from scheduler import expiry, jobs
from scheduler.lock import PostgresSchedulerLock, SchedulerLock
from scheduler.transport import MailTransport, transport_for
from service.composition import System, build_system, store_fault
from service.settings import Settings
from service.webhooks.delivery import Deliverer

log = logging.getLogger("keyledger.scheduler")

JOB_OPTIONS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
CHECKPOINT_INTERVAL = 3600.0  # seconds between signed checkpoints of the audit chain


class CampaignRuns:
    """The jobs bound to one process's system. Runs of the same job never overlap (the interval
    job and an exact-moment job share a lock); after each, this process's views catch up."""

    def __init__(self, system: System, usage: jobs.LegacyUsageReader, mailer: jobs.Mailer) -> None:
        self.system = system
        self.usage = usage
        self.mailer = mailer
        self._locks = {name: threading.Lock() for name in ("reminders", "sunset", "mail", "checkpoint", "expiry",
                                                          "expired")}
        self._faults = dict.fromkeys(self._locks, 0)  # runs in a row a store could not be used

    def _run(self, name: str, work: Callable[[], Any]) -> Any:
        with self._locks[name]:
            try:
                result = work()
            except Exception as error:  # logged here; the next run tries again
                interval = self.system.settings.scheduler_interval
                reason = store_fault(error)
                if reason is None:
                    log.exception("campaign job %s failed; it runs again in %.1f s", name, interval)
                else:  # a full disk or an outage: said once, not every round, and without a traceback
                    self._faults[name] += 1
                    if self._faults[name] == 1:
                        log.warning("campaign job %s cannot use the store (%s); it runs again every %.1f s",
                                    name, reason, interval)
                return None
            if self._faults[name]:
                log.info("campaign job %s ran again after %d round(s) the store could not be used",
                         name, self._faults[name])
                self._faults[name] = 0
            return result

    def reminders(self) -> Any:
        def work() -> int:
            s = self.system
            count = jobs.send_due_reminders(s.keys_app, self.usage, s.campaign, s.plan, s.keys_app.now())
            s.after_command()
            if count:
                self.mail()  # deliver now rather than at the mail job's next run
            return count

        return self._run("reminders", work)

    def sunset(self) -> Any:
        def work() -> int:
            s = self.system
            disabled = jobs.execute_sunset(s.keys_app, self.usage, s.plan, s.keys_app.now())
            s.after_command()
            notices = jobs.send_final_notice(s.keys_app, self.usage, s.campaign, s.plan, s.keys_app.now())
            s.after_command()
            if notices:
                self.mail()
            return disabled + notices

        return self._run("sunset", work)

    def mail(self) -> Any:
        def work() -> int:
            s = self.system
            count = jobs.deliver_pending_mail(s.keys_app, s.campaign, self.mailer, s.keys_app.now())
            s.after_command()
            return count

        return self._run("mail", work)

    def expiry(self) -> Any:
        """Reminders before keys expire (scheduler.expiry), delivered through the campaign's outbox."""
        def work() -> int:
            s = self.system
            if s.expiring is None:
                return 0
            count = expiry.send_expiry_reminders(s.keys_app, s.expiring, s.last_used, s.expiry_plan,
                                                 s.keys_app.now())
            s.after_command()
            if count:
                self.mail()
            return count

        return self._run("expiry", work)

    def expired(self) -> Any:
        """``ApiKey.Expired`` for the keys whose expiry has passed (scheduler.expiry)."""
        def work() -> int:
            s = self.system
            if s.expiring is None:
                return 0
            count = expiry.record_expiries(s.keys_app, s.expiring, s.keys_app.now())
            s.after_command()
            return count

        return self._run("expired", work)

    def audit_checkpoint(self) -> Any:
        def work() -> dict | None:
            s = self.system
            return jobs.sign_audit_checkpoint(lambda now: s.sign_checkpoint(now=now), s.keys_app.now())

        return self._run("checkpoint", work)


def campaign_runs(system: System, *, usage: jobs.LegacyUsageReader | None = None,
                  transport: MailTransport | None = None) -> CampaignRuns:
    usage = usage if usage is not None else getattr(system, "legacy_usage", None)
    if usage is None:
        raise RuntimeError("the legacy-usage projection is missing: the campaign cannot know whom to warn")
    settings = system.settings
    mailer = jobs.Mailer(transport=transport or transport_for(settings), mail_from=settings.mail_from,
                         lookback=settings.legacy_lookback, first_retry=settings.mail_retry)
    return CampaignRuns(system, usage, mailer)


def build_scheduler(system: System, *, usage: jobs.LegacyUsageReader | None = None,
                    transport: MailTransport | None = None) -> BackgroundScheduler:
    """A scheduler (not started) with the campaign's jobs registered."""
    runs = campaign_runs(system, usage=usage, transport=transport)
    scheduler = BackgroundScheduler(timezone=UTC, job_defaults=JOB_OPTIONS,
                                    executors={"default": ThreadPoolExecutor(4)})
    now = system.keys_app.now()
    every = IntervalTrigger(seconds=system.settings.scheduler_interval, timezone=UTC)
    for job_id, func, what in (("campaign-reminders", runs.reminders, "record the due stage's reminders"),
                               ("campaign-sunset", runs.sunset, "execute the sunset, then the final notice"),
                               ("campaign-mail", runs.mail, "deliver recorded campaign mail"),
                               ("expiry-reminders", runs.expiry, "record reminders of keys that expire soon"),
                               ("key-expiries", runs.expired, "record the expiry of keys that have expired")):
        scheduler.add_job(func, every, id=job_id, name=what, next_run_time=now, **JOB_OPTIONS)
    scheduler.add_job(runs.audit_checkpoint, IntervalTrigger(seconds=CHECKPOINT_INTERVAL, timezone=UTC),
                      id="audit-checkpoint", name="sign the audit chain's head", next_run_time=now,
                      **JOB_OPTIONS)
    for stage in system.plan.stages:  # the exact moments, so nothing waits for the next interval
        if stage.due_at > now:
            scheduler.add_job(runs.reminders, DateTrigger(run_date=stage.due_at, timezone=UTC),
                              id=f"campaign-reminders-at-{stage.name}", name=f"stage {stage.name}",
                              **JOB_OPTIONS)
    if system.plan.sunset_at > now:
        scheduler.add_job(runs.sunset, DateTrigger(run_date=system.plan.sunset_at, timezone=UTC),
                          id="campaign-sunset-at", name="the sunset", **JOB_OPTIONS)
    return scheduler


class CampaignScheduler:
    """The scheduler of one deployment: runs the jobs while holding the scheduler lock, stands by
    (checking every ``standby_interval`` seconds) while another process holds it."""

    def __init__(self, system: System, *, usage: jobs.LegacyUsageReader | None = None,
                 transport: MailTransport | None = None, standby_interval: float | None = None) -> None:
        self.system = system
        self.usage = usage
        self.transport = transport
        self.lock = scheduler_lock(system.settings)
        self.standby_interval = standby_interval or max(1.0, system.settings.scheduler_interval)
        self.scheduler: BackgroundScheduler | None = None
        self.active = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.deliverer: Deliverer | None = None  # webhooks, sent while this scheduler runs the jobs

    def _start_deliverer(self) -> None:
        if self.system.webhooks is not None:
            self.deliverer = webhook_deliverer(self.system).start()

    def _stop_deliverer(self) -> None:
        if self.deliverer is not None:
            self.deliverer.stop()
            self.deliverer = None

    def start(self) -> CampaignScheduler:
        self._thread = threading.Thread(target=self._take_lock, name="keyledger-scheduler", daemon=True)
        self._thread.start()
        return self

    def _take_lock(self) -> None:
        standing_by = False
        while not self._stopping.is_set():
            if self.lock.try_acquire():
                try:
                    self.scheduler = build_scheduler(self.system, usage=self.usage, transport=self.transport)
                    self.scheduler.start()
                    self._start_deliverer()
                except Exception:
                    log.exception("the scheduler could not start; releasing %s", self.lock.path)
                    self.lock.release()
                    return
                log.info("scheduler %s: running the campaign's jobs every %.1f s (lock %s)",
                         "took over" if standing_by else "started", self.system.settings.scheduler_interval,
                         self.lock.path)
                self.active.set()
                while not self._stopping.wait(self.standby_interval):
                    if not self.lock.alive():  # PostgreSQL's session ended: another may hold it now
                        log.warning("the scheduler lost %s; stopping its jobs and standing by", self.lock.path)
                        self.active.clear()
                        self._stop_deliverer()
                        self.scheduler.shutdown(wait=True)
                        standing_by = True
                        break
                else:
                    return
                continue
            if not standing_by:
                # As intended (one scheduler per deployment; every worker of `serve` offers): not a warning.
                log.info("another scheduler holds %s (held by %s); this one is standing by and runs no jobs",
                         self.lock.path, self.lock.holder())
                standing_by = True
            self._stopping.wait(self.standby_interval)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_deliverer()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.active.clear()
        self.lock.release()


def webhook_deliverer(system: System) -> Deliverer:
    """The deployment's webhook deliverer (service.webhooks.delivery): run by the process that
    holds the scheduler lock, beside the campaign's jobs (not an APScheduler job: it is a pool of
    per-endpoint workers that runs all the time)."""
    settings = system.settings
    assert system.webhooks is not None
    return Deliverer(system.keys_app, system.webhooks, allow_private=settings.webhooks_allow_private,
                     timeout=settings.webhooks_timeout,
                     **({"backoff": settings.webhooks_backoff} if settings.webhooks_backoff else {}))


def scheduler_lock(settings: Settings) -> SchedulerLock | PostgresSchedulerLock:
    """The deployment's scheduler lock: a file beside the SQLite store, or PostgreSQL's."""
    if settings.uses_postgres:
        from projections.store import advisory_key

        schema = settings.database_schema
        return PostgresSchedulerLock(settings.database_conninfo, advisory_key(f"keyledger:scheduler:{schema}"),
                                     f"schema {schema}")
    return SchedulerLock(settings.scheduler_lock_path)


def start_embedded(system: System) -> CampaignScheduler:
    """For ``keyledger serve``: called in each worker; the lock lets exactly one run the jobs."""
    _quiet_apscheduler()
    return CampaignScheduler(system).start()


def run_scheduler(settings: Settings, *, usage: jobs.LegacyUsageReader | None = None,
                  transport: MailTransport | None = None) -> int:
    """``keyledger scheduler``: the scheduler alone, until SIGTERM or SIGINT."""
    _quiet_apscheduler()
    system = build_system(settings)
    if usage is None and getattr(system, "legacy_usage", None) is None:
        log.error("the legacy-usage projection is missing from this build: the campaign cannot run")
        system.close()
        return 1
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    campaign = CampaignScheduler(system, usage=usage, transport=transport).start()
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        log.info("scheduler stopping")
        campaign.stop()
        system.close()
    return 0


def _quiet_apscheduler() -> None:
    # "Running job …" every few seconds says nothing; failures are logged by CampaignRuns.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)
