"""The ``keyledger`` command: serve, accounts, projections."""

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

        def load(self):
            return create_app(settings)

    print(f"Keyledger listening on http://{args.host}:{args.port} (data in {settings.data_dir})",
          file=sys.stderr, flush=True)
    KeyledgerServer().run()
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
    rebuild.add_argument("name", nargs="?", choices=["verification", "directory", "audit", "legacy_usage"])
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
