"""The ``keyledger`` command: serve, scheduler, accounts, projections, campaign."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from service.domain.actors import NO_REQUEST, Actor
from service.domain.errors import KeyledgerError
from service.settings import Settings, SettingsError


def _configure_logging() -> None:
    logging.basicConfig(level=os.environ.get("KEYLEDGER_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    from service.api import create_app
    from service.composition import build_system

    # Create the stores and views once, before the workers start, so they never race.
    build_system(settings, follow=False).close()

    class KeyledgerServer(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "sync")
            self.cfg.set("accesslog", None)
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("control_socket_disable", True)
            if not args.no_scheduler:
                # Each worker offers to run the scheduler; the scheduler lock lets exactly one
                # run its jobs, and another takes over if that worker dies.
                self.cfg.set("post_worker_init", _start_scheduler_in_worker)
                self.cfg.set("worker_exit", _stop_scheduler_in_worker)

        def load(self):
            return create_app(settings)

    print(f"Keyledger listening on http://{args.host}:{args.port} (data in {settings.data_dir})",
          file=sys.stderr, flush=True)
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
    from service.composition import build_system

    system = build_system(settings, follow=False)
    try:
        usage = getattr(system, "legacy_usage", None)
        since = system.plan.usage_since(system.keys_app.now())
        owners = usage.owners_using_tokens(since) if usage is not None else []
        status = system.campaign.status(system.plan, owners)
    finally:
        system.close()
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
    from service.composition import build_system

    system = build_system(settings, follow=False)
    try:
        account, token = system.keys_app.register_account(
            email=args.email, name=args.name, role=args.role, by=Actor.system("cli"), request=NO_REQUEST)
        system.after_command()
    finally:
        system.close()
    if args.json:
        print(json.dumps({**{k: account[k] for k in ("id", "email", "name", "role")}, "token": token}))
    else:
        print(f"Created {account['role']} {account['email']} (id {account['id']}).")
        print("Personal token (shown once; store it now):")
        print(token)
    return 0


def _accounts_token(args: argparse.Namespace, settings: Settings) -> int:
    from service.composition import build_system

    system = build_system(settings, follow=False)
    try:
        account, token = system.keys_app.replace_personal_token(
            args.email, by=Actor.system("cli"), request=NO_REQUEST)
        system.after_command()
    finally:
        system.close()
    if args.json:
        print(json.dumps({**{k: account[k] for k in ("id", "email", "name", "role")}, "token": token}))
    else:
        print(f"New personal token for {account['email']} (the previous one no longer works; shown once):")
        print(token)
    return 0


def _import_legacy(args: argparse.Namespace, settings: Settings) -> int:
    from service.composition import build_system
    from service.legacy_import import import_file

    if not os.path.isfile(args.file):
        why = "is a directory" if os.path.isdir(args.file) else "no such file"
        print(f"keyledger: import-legacy: {args.file}: {why} (give a JSON Lines file)", file=sys.stderr)
        return 2
    system = build_system(settings, follow=False)
    try:
        summary = import_file(system, args.file, progress=sys.stderr)
    finally:
        system.close()
    print(summary.sentence())
    return 1 if summary.refused else 0


def _projections_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from service.composition import build_system

    system = build_system(settings, follow=False)
    try:
        started = time.perf_counter()
        names = [args.name] if args.name else None
        count = system.follower.rebuild(names)
        elapsed = time.perf_counter() - started
    finally:
        system.close()
    print(f"Rebuilt {', '.join(names or ['all projections'])}: {count} events in {elapsed:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keyledger", description="Keyledger: API-key lifecycle service")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (with projections)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=int(os.environ.get("KEYLEDGER_WORKERS", "2")))
    serve.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler here")
    serve.set_defaults(handler=_serve)

    scheduler = commands.add_parser("scheduler", help="run the scheduler alone (one per deployment)")
    scheduler.set_defaults(handler=_scheduler)

    campaign = commands.add_parser("campaign", help="the deprecation campaign")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    status = campaign_commands.add_parser("status", help="stages, deliveries, owners still on tokens")
    status.add_argument("--json", action="store_true", help="print one JSON object (as GET /v2/campaign)")
    status.set_defaults(handler=_campaign_status)

    accounts = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts.add_subparsers(dest="account_command", required=True)
    create = account_commands.add_parser("create", help="create an account and print its token once")
    create.add_argument("--email", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["owner", "auditor", "admin"])
    create.add_argument("--json", action="store_true", help="print one JSON line")
    create.set_defaults(handler=_accounts_create)

    token = account_commands.add_parser(
        "token", help="give an account a new personal token (the old one stops) and print it once")
    token.add_argument("--email", required=True)
    token.add_argument("--json", action="store_true", help="print one JSON line")
    token.set_defaults(handler=_accounts_token)

    importer = commands.add_parser(
        "import-legacy", help="bring existing apps over from a JSON Lines file (owners, apps, legacy "
                              "clients, auto-generated All keys); running it twice creates nothing new")
    importer.add_argument("file", help='one JSON object per line: {"app_id", "app_name", "owner_email", '
                                       '"owner_name", "client_id", "client_secret"}')
    importer.set_defaults(handler=_import_legacy)

    projections = commands.add_parser("projections", help="read models")
    projection_commands = projections.add_subparsers(dest="projection_command", required=True)
    rebuild = projection_commands.add_parser("rebuild", help="drop and rebuild views from the event log")
    rebuild.add_argument("name", nargs="?",
                         choices=["verification", "directory", "audit", "legacy_usage", "campaign"])
    rebuild.set_defaults(handler=_projections_rebuild)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        settings = Settings.from_env()
        return args.handler(args, settings)
    except SettingsError as error:
        print(f"keyledger: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyledgerError as error:
        print(f"keyledger: {error.code}: {error.message}", file=sys.stderr)
        for name, problems in error.details.items():
            print(f"  {name}: {problems}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
