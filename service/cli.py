"""The ``keyledger`` command: serve, scheduler, accounts, projections, audit, campaign."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from service.domain.actors import NO_REQUEST, ROLES, Actor
from service.domain.errors import KeyledgerError
from service.settings import Settings, SettingsError

log = logging.getLogger("keyledger.serve")


@contextmanager
def _store(settings: Settings) -> Iterator[Any]:
    """The composition root for a one-off command: built, used, closed."""
    from service.composition import build_system

    system = build_system(settings, follow=False)
    try:
        yield system
    finally:
        system.close()


def _configure_logging() -> None:
    from service import logs

    logs.configure_once()  # as logging.basicConfig: a process that set up its logging keeps it


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    from service import serving

    args.host, args.port = serving.listen_address(os.environ, getattr(args, "host", None),
                                                  getattr(args, "port", None))
    taken = serving.port_taken(args.host, args.port)
    if taken:  # one line now, not gunicorn's five attempts over five seconds
        print(f"keyledger: cannot listen on {serving.bind_text(args.host, args.port)}: {taken}",
              file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    serving.prepare_metrics_dir(settings)
    from service.api import create_app

    # The stores and views are created once, before the workers start (gunicorn.conf.py too).
    checkpoint = serving.prepare_store(settings)
    if checkpoint:  # a JSON line like every other of the server's (README, "Logs")
        log.info("audit checkpoint %s signed at seq %s", checkpoint["number"], checkpoint["seq"])

    class KeyledgerServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", serving.bind_text(args.host, args.port))
            self.cfg.set("workers", args.workers)
            # Each request buffered whole before the app runs on it, malformed HTTP answered in
            # the contract's envelope (service.buffering); the access log is the app's
            # (service.api.gateway), gunicorn's own lines are JSON too.
            # (gunicorn.conf.py at the repository's root sets the same for plain gunicorn.)
            from service.buffering import BufferingWorker

            self.cfg.set("worker_class", BufferingWorker)
            self.cfg.set("logger_class", serving.JsonLogger)
            self.cfg.set("accesslog", None)
            self.cfg.set("timeout", serving.TIMEOUT)
            self.cfg.set("graceful_timeout", serving.GRACEFUL_TIMEOUT)
            self.cfg.set("limit_request_line", serving.LIMIT_REQUEST_LINE)
            self.cfg.set("limit_request_fields", serving.LIMIT_REQUEST_FIELDS)
            self.cfg.set("limit_request_field_size", serving.LIMIT_REQUEST_FIELD_SIZE)
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("when_ready", _say_listening)  # only once the port is bound
            if not args.no_scheduler:
                # Each worker offers to run the scheduler; the scheduler lock lets exactly one
                # run its jobs, and another takes over if that worker dies.
                self.cfg.set("post_worker_init", _start_scheduler_in_worker)
                self.cfg.set("worker_exit", _stop_scheduler_in_worker)

        def load(self):
            return create_app(settings)

    def _say_listening(server) -> None:
        where = f"[{args.host}]" if ":" in args.host else args.host
        log.info("Keyledger listening on http://%s:%s (data in %s)", where, args.port,
                 settings.data_dir.resolve())

    KeyledgerServer().run()
    return 0


def _start_scheduler_in_worker(worker) -> None:  # type: ignore[no-untyped-def]
    from scheduler.main import start_embedded

    worker.keyledger_scheduler = start_embedded(worker.wsgi.extensions["keyledger"])


def _stop_scheduler_in_worker(server, worker) -> None:  # type: ignore[no-untyped-def]
    campaign = getattr(worker, "keyledger_scheduler", None)
    if campaign is not None:
        campaign.stop()


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.main import run_scheduler

    return run_scheduler(settings)


def _campaign_status(args: argparse.Namespace, settings: Settings) -> int:
    from projections.timefmt import rfc3339

    with _store(settings) as system:
        usage = getattr(system, "legacy_usage", None)
        since = system.plan.usage_since(system.keys_app.now())
        owners = usage.owners_using_tokens(since) if usage is not None else []
        status = system.campaign.status(system.plan, owners)
    if args.json:
        print(json.dumps(status, default=lambda value: rfc3339(value)))
        return 0
    executed = status["sunset_executed_at"]
    print(f"Sunset {rfc3339(status['sunset_at'])}: "
          f"{'executed ' + rfc3339(executed) if executed else 'not executed yet'}")
    print(f"{'stage':<8} {'due':<21} {'ran':<21} {'mailed':>6} {'pending':>7} {'failed':>6} {'failed attempts':>15}")
    for stage in status["stages"]:
        print(f"{stage['name']:<8} {rfc3339(stage['due_at']):<21} {rfc3339(stage['ran_at']) or '-':<21} "
              f"{stage['owners_mailed']:>6} {stage['deliveries_pending']:>7} {stage['deliveries_failed']:>6} "
              f"{stage['delivery_attempts_failed']:>15}")
    print(f"Owners on access tokens (used one since {rfc3339(since)}): {len(status['owners_on_tokens'])}")
    for owner in status["owners_on_tokens"]:
        apps = ", ".join(f"{a['app_id']} (last use {rfc3339(a['last_used_at'])}, {a['uses']} uses)"
                         for a in owner["apps"])
        print(f"  {owner['owner_email']}: {apps}; reminders recorded: "
              f"{', '.join(owner['stages_recorded']) or 'none'}")
    if status["undelivered"]:
        print("Not delivered yet:")
        for item in status["undelivered"]:
            print(f"  {item['stage']} to {item['owner_email']}: {item['state']}, {item['attempts']} attempt(s), "
                  f"next {item['next_attempt_at'] or '-'}; last error: {item['last_error'] or '-'}")
    return 0


def _accounts_create(args: argparse.Namespace, settings: Settings) -> int:

    with _store(settings) as system:
        account, token = system.keys_app.register_account(
            email=args.email, name=args.name, role=args.role, by=Actor.system("cli"), request=NO_REQUEST)
        system.after_command()
    if args.json:
        print(json.dumps({**{k: account[k] for k in ("id", "email", "name", "role")}, "token": token}))
    else:
        print(f"Created {account['role']} {account['email']} (id {account['id']}).")
        print("Personal token (shown once; store it now):")
        print(token)
    return 0


def _accounts_token(args: argparse.Namespace, settings: Settings) -> int:

    with _store(settings) as system:
        account, token = system.keys_app.replace_personal_token(
            args.email, by=Actor.system("cli"), request=NO_REQUEST)
        system.after_command()
    if args.json:
        print(json.dumps({**{k: account[k] for k in ("id", "email", "name", "role")}, "token": token}))
    else:
        print(f"New personal token for {account['email']} (the previous one no longer works; shown once):")
        print(token)
    return 0


def _import_legacy(args: argparse.Namespace, settings: Settings) -> int:
    from service.legacy_import import import_file

    if not os.path.isfile(args.file):
        why = "is a directory" if os.path.isdir(args.file) else "no such file"
        print(f"keyledger: import-legacy: {args.file}: {why} (give a JSON Lines file)", file=sys.stderr)
        return 2
    with _store(settings) as system:
        summary = import_file(system, args.file, progress=sys.stderr)
    print(summary.sentence())
    return 1 if summary.refused else 0


def _projections_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    import time


    with _store(settings) as system:
        started = time.perf_counter()
        names = [args.name] if args.name else None
        count = system.follower.rebuild(names)
        elapsed = time.perf_counter() - started
    print(f"Rebuilt {', '.join(names or ['all projections'])}: {count} events in {elapsed:.2f} s")
    return 0


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:

    with _store(settings) as system:
        report = system.check_integrity()
    if args.json:
        print(json.dumps(report))
    elif report["ok"]:
        print(f"ok: {report['checked']} events, chain intact; {report['checkpoints']} signed "
              f"checkpoint(s) verified, the last vouching for seq {report['signed_through']}")
    else:
        print(f"BROKEN at seq {report['first_bad_seq']} ({report['checked']} events checked): "
              f"{report['reason']}")
    return 0 if report["ok"] else 1


def _audit_checkpoint(args: argparse.Namespace, settings: Settings) -> int:

    with _store(settings) as system:
        checkpoint = system.sign_checkpoint()
        alarm = system.alarm.detail()
    if not alarm["ok"]:
        print(f"NOT SIGNED: the audit chain is broken at seq {alarm['first_bad_seq']}: {alarm['reason']}")
        return 1
    if checkpoint is None:
        print("Nothing new since the last checkpoint; none signed.")
    else:
        print(json.dumps(checkpoint))
    return 0


def _audit_accept_baseline(args: argparse.Namespace, settings: Settings) -> int:
    by = Actor.system(f"cli:{args.by}" if args.by else "cli")
    with _store(settings) as system:
        before = system.check_integrity()
        baseline, checkpoint = system.accept_baseline(args.reason, by)
        after = system.check_integrity()
    was = ("the chain verified already" if before["ok"] else
           f"it was broken at seq {before['first_bad_seq']}: {before['reason']}")
    print(f"Baseline accepted at seq {baseline['seq']} ({baseline['checked']} events, hash {baseline['hash'][:16]}…) "
          f"by {by.ref}; {was}.")
    if checkpoint is not None:
        print(f"Audit checkpoint {checkpoint['number']} signed at seq {checkpoint['seq']}.")
    if not after["ok"]:
        print(f"BROKEN at seq {after['first_bad_seq']} even so: {after['reason']}")
        return 1
    print(f"ok: {after['checked']} events, chain intact from the baseline on.")
    return 0


def _audit_export(args: argparse.Namespace, settings: Settings) -> int:
    from projections.audit import AuditFilter
    from service import exports

    if args.follow and args.format != "jsonl":
        print("keyledger: --follow writes JSON Lines only; leave out --format csv", file=sys.stderr)
        return 2
    with _store(settings) as system:
        actor_kind, _, actor_id = (args.actor or "").partition(":")
        filters = AuditFilter(app_id=args.app_id, key_id=args.key_id, type=args.type,
                              actor_kind=actor_kind or None, actor_id=actor_id or None,
                              since_us=args.since, until_us=args.until)
        if args.follow:
            return _audit_follow(system, filters, args)
        total = system.audit.count(filters)
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
        progress = sys.stderr.isatty()
        written = 0
        try:
            def counted():
                nonlocal written
                if args.since_seq:
                    from service.audit_feed import events_after

                    events = events_after(system.audit, filters, after=args.since_seq)
                else:
                    events = system.audit.stream(filters)
                for event in events:
                    written += 1
                    if progress and written % 1000 == 0:
                        print(f"\rexporting audit events: {written:,}/{total:,} "
                              f"({written / max(total, 1):.0%})", end="", file=sys.stderr, flush=True)
                    yield event

            for chunk in exports.lines(counted(), args.format):
                out.write(chunk)
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
        if progress:
            print(f"\rexported {written:,} audit events{' to ' + args.output if args.output else ''}"
                  + " " * 20, file=sys.stderr)
    return 0


def _audit_follow(system: Any, filters: Any, args: argparse.Namespace) -> int:
    """``audit export --follow``: every matching event after ``--since-seq``, then each new one as
    it is committed, one JSON line each, flushed batch by batch, until interrupted. SIGTERM and
    Ctrl-C end it between batches (exit 0), so the output ends with a whole line; resume with
    ``--since-seq`` set to the last line's ``seq``."""
    import signal
    import threading

    from service import exports
    from service.audit_feed import follow

    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    keys_app, audit, follower = system.keys_app, system.audit, system.follower

    def refresh() -> None:  # no server need run: this process brings the audit view up to date
        if keys_app.last_position() > audit.last_seq():
            follower.update_views(timeout=2.0)

    out = open(args.output, "a", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    try:
        for batch in follow(audit, filters, after=args.since_seq or 0, poll=system.settings.follow_interval,
                            refresh=refresh, stopping=stopping):
            if batch:
                for chunk in exports.jsonl_lines(batch):
                    out.write(chunk)
                out.flush()
    except BrokenPipeError:  # the reader went away (a shipper restarting): nothing more to say
        sys.stderr.close()  # and no second complaint from the interpreter at exit
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.output:
            out.close()
    return 0


def _time(text: str) -> int:
    """An RFC 3339 time as microseconds since 1970 (the audit view's filter form)."""
    from projections.audit import microseconds
    from service.settings import parse_time

    try:
        return microseconds(parse_time(text, "time"))
    except (SettingsError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time such as 2017-06-01T00:00:00Z") from None


def _seq(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position in the log (a whole number, 0 or more)")
    return int(text)


def _actor(text: str) -> str:
    kind, _, ident = text.partition(":")
    if kind not in ("account", "key", "system") or (kind != "system" and not ident):
        raise argparse.ArgumentTypeError(f"{text!r}: use account:<id>, key:<id> or system")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyledger", description="Keyledger: API-key lifecycle service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (with projections)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--host", default=argparse.SUPPRESS,
                       help="address to listen on (default: KEYLEDGER_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=argparse.SUPPRESS,
                       help="port to listen on, 1-65535 (default: KEYLEDGER_PORT, else 8080)")
    serve.add_argument("--workers", type=_workers, default=argparse.SUPPRESS,
                       help="HTTP worker processes (default: KEYLEDGER_WORKERS, else 2)")
    serve.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler here")
    serve.set_defaults(handler=_serve)

    scheduler = commands.add_parser("scheduler", help="run the scheduler alone (one per deployment)")
    scheduler.set_defaults(handler=_scheduler)

    db = commands.add_parser("db", help="the store itself")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_init = db_commands.add_parser(
        "init", help="create the store's tables and views, and bring the views up to date (a deploy step; "
                     "safe to repeat, and safe when instances start at the same time)")
    db_init.set_defaults(handler=_db_init)

    existing = argparse.ArgumentParser(add_help=False)  # commands that work on an existing store
    existing.add_argument("--init", action="store_true",
                          help="create a new store in the data directory if there is none (otherwise refused)")

    campaign = commands.add_parser("campaign", help="the deprecation campaign")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    status = campaign_commands.add_parser("status", parents=[existing], help="stages, deliveries, owners still on tokens")
    status.add_argument("--json", action="store_true", help="print one JSON object (as GET /v2/campaign)")
    status.set_defaults(handler=_campaign_status)

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser("create", parents=[existing], help="create an account and print its token once")
    create.add_argument("--email", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=list(ROLES))
    create.add_argument("--json", action="store_true", help="print one JSON line")
    create.set_defaults(handler=_accounts_create)

    token = account_commands.add_parser(
        "token", parents=[existing], help="give an account a new personal token (the old one stops) and print it once")
    token.add_argument("--email", required=True)
    token.add_argument("--json", action="store_true", help="print one JSON line")
    token.set_defaults(handler=_accounts_token)

    importer = commands.add_parser(
        "import-legacy", parents=[existing], help="bring existing apps over from a JSON Lines file (owners, apps, legacy "
                              "clients, auto-generated All keys); running it twice creates nothing new")
    importer.add_argument("file", help='one JSON object per line: {"app_id", "app_name", "owner_email", '
                                       '"owner_name", "client_id", "client_secret"}')
    importer.set_defaults(handler=_import_legacy)

    projections = commands.add_parser("projections", help="read models")
    projection_commands = projections.add_subparsers(dest="projection_command", required=True)
    rebuild = projection_commands.add_parser("rebuild", parents=[existing], help="drop and rebuild views from the event log")
    rebuild.add_argument("name", nargs="?",
                         choices=["verification", "directory", "audit", "legacy_usage", "campaign", "webhooks"])
    rebuild.set_defaults(handler=_projections_rebuild)

    audit = commands.add_parser("audit", help="the audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify", parents=[existing], help="recompute the chain from the event store and check the signed checkpoints "
                       "(exit status 1 if anything was changed)")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON line")
    verify.set_defaults(handler=_audit_verify)
    checkpoint = audit_commands.add_parser("checkpoint", parents=[existing], help="sign the chain's head now")
    checkpoint.set_defaults(handler=_audit_checkpoint)
    # Existing stores only: no --init (a baseline of a store made for it would accept nothing).
    baseline = audit_commands.add_parser(
        "accept-baseline",
        help="accept the store as it stands as the audit trail's new baseline (a store restored from a backup): "
             "the decision is recorded as a signed event, the views are rebuilt and a checkpoint is signed")
    baseline.add_argument("--reason", required=True, help="why (kept in the event, e.g. the incident or backup)")
    baseline.add_argument("--by", help="who decided (a name or e-mail address, kept in the event)")
    baseline.set_defaults(handler=_audit_accept_baseline, init=None)
    # Reads an existing store only: no --init (an export of a store made for it would be empty).
    export = audit_commands.add_parser("export", help="every audit event, oldest first")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("--output", "-o", help="write to this file (default: standard output)")
    export.add_argument("--app-id", help="only this app's events")
    export.add_argument("--key-id", help="only this key's events")
    export.add_argument("--type", help="only events of this type, e.g. ApiKey.Revoked")
    export.add_argument("--actor", type=_actor, help="only events by account:<id>, key:<id> or system")
    export.add_argument("--since", type=_time, help="only events at or after this RFC 3339 time")
    export.add_argument("--until", type=_time, help="only events before this RFC 3339 time")
    export.add_argument("--since-seq", type=_seq, default=0, metavar="N",
                        help="only events after position N (the seq of the last event you have)")
    export.add_argument("--follow", "-f", action="store_true",
                        help="keep writing new events as they are committed (JSON Lines), until interrupted")
    export.set_defaults(handler=_audit_export, init=None)
    return parser


def _existing_store(args: argparse.Namespace, settings: Settings) -> bool:
    """A command that works on an existing store: never make one by accident (``--init`` asks to)."""
    from service.composition import store_exists

    where = settings.data_dir.resolve()
    if settings.uses_postgres:
        store = f"PostgreSQL schema {settings.database_schema!r} (KEYLEDGER_DATABASE_URL, KEYLEDGER_DATABASE_SCHEMA)"
    else:
        store = f"{where} (KEYLEDGER_DATA_DIR)"
    if not store_exists(settings) and not args.init:
        offer = ", or add --init to create a new one" if args.init is not None else ""
        print(f"keyledger: no Keyledger store in {store}; point the settings at the service's store{offer}",
              file=sys.stderr)
        return False
    print(f"keyledger: data directory {where}" + (f", store {store}" if settings.uses_postgres else ""),
          file=sys.stderr)
    return True


def _db_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the store's tables and views (once; safe when several instances start together)."""
    with _store(settings) as system:
        position = system.keys_app.last_position()
    where = (f"PostgreSQL schema {settings.database_schema!r}" if settings.uses_postgres
             else f"{settings.data_dir.resolve()}")
    print(f"keyledger: store ready in {where}: {position} events, views up to date")
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1-64)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"keyledger: configuration error: {error}", file=sys.stderr)
        return 2
    _configure_logging()  # JSON lines at KEYLEDGER_LOG_LEVEL (validated above)
    if args.command == "serve" and "workers" not in args:
        args.workers = settings.workers
    try:
        if hasattr(args, "init") and not _existing_store(args, settings):
            return 2
        settings.prepare_data_dir()  # one line naming KEYLEDGER_DATA_DIR if it cannot be used
        return args.handler(args, settings)
    except SettingsError as error:
        print(f"keyledger: configuration error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the data directory cannot be made or written
        print(f"keyledger: KEYLEDGER_DATA_DIR={str(settings.data_dir)!r}: cannot use the data directory "
              f"({error.strerror or type(error).__name__})", file=sys.stderr)
        return 2
    except KeyledgerError as error:
        print(f"keyledger: {error.code}: {error.message}", file=sys.stderr)
        for name, problems in error.details.items():
            print(f"  {name}: {problems}", file=sys.stderr)
        return 1
    except Exception as error:
        from service.composition import store_fault

        if (reason := store_fault(error)) is None:
            raise
        # e.g. a full disk: SQLite cannot even open its store without room for its -wal and -shm files
        where = ("KEYLEDGER_DATABASE_URL: PostgreSQL" if settings.uses_postgres
                 else f"KEYLEDGER_DATA_DIR={str(settings.data_dir)!r}: the SQLite store")
        print(f"keyledger: {where} cannot be used now ({reason}); is its disk full? Retry when it has room",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
