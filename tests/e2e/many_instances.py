"""A cluster of Keyledger instances on one PostgreSQL schema, for the multi-instance tests:
each instance its own data directory and process, sharing the pepper, the audit signing key
and the store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests import backend
from tests.e2e.conftest import ServerProcess, StartServer, base_environment, run_cli

# Not derived from events: written by serving processes (last use, usage counts: no event per
# verification, so a rebuild cannot recreate them and leaves them alone) or once (identity).
NOT_REBUILT = {"key_last_used", "key_use_days", "legacy_use_counts", "key_usage", "store_identity",
               "projection_tracking"}


def cluster_env(schema: str, database_url: str | None = None) -> dict[str, str]:
    """Settings for instances sharing ``schema`` of the suite's database (or of ``database_url``)."""
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return {"KEYLEDGER_DATABASE_URL": database_url or backend.DATABASE_URL or "", "KEYLEDGER_DATABASE_SCHEMA": schema,
            "KEYLEDGER_AUDIT_SIGNING_KEY": pem}


@dataclass
class Cluster:
    env: dict[str, str]
    tmp_path: Path
    start_server: StartServer
    servers: list[ServerProcess] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.env["KEYLEDGER_DATABASE_SCHEMA"]

    def cli(self, *args: str) -> str:
        env = self.servers[0].env if self.servers else base_environment(self.tmp_path / "cli" / "var", self.env)
        done = run_cli(list(args), env)
        assert done.returncode == 0, f"keyledger {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def start(self, count: int, *, extra_env: dict[str, str] | None = None,
              args: list[str] | None = None, workers: int = 1) -> list[ServerProcess]:
        for _ in range(count):
            n = len(self.servers) + 1
            self.servers.append(self.start_server(self.tmp_path / f"instance{n}" / "var", name=f"instance{n}",
                                                  env={**self.env, **(extra_env or {})}, workers=workers,
                                                  args=["--no-scheduler", *(args or [])]))
        return self.servers

    def connect(self) -> psycopg.Connection:
        assert self.env["KEYLEDGER_DATABASE_URL"]
        from service.settings import parse_database_url

        url = parse_database_url(self.env["KEYLEDGER_DATABASE_URL"])
        return psycopg.connect(host=url["host"], port=url["port"], dbname=url["dbname"], user=url["user"],
                               autocommit=True, options=f"-c search_path={self.schema}")

    def views(self) -> dict[str, list[tuple]]:
        """Every row of every view derived from events, sorted."""
        with self.connect() as db:
            tables = [r[0] for r in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name NOT LIKE %s", (self.schema, "keyledger%")).fetchall()]
            return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                    for t in tables if t not in NOT_REBUILT}

    def events(self) -> list[tuple[str, int, str]]:
        """(originator id, version, topic) of every stored event."""
        with self.connect() as db:
            return [(str(r[0]), r[1], r[2]) for r in db.execute(
                "SELECT originator_id, originator_version, topic FROM keyledger_events "
                "ORDER BY notification_id").fetchall()]

    def wait_views_caught_up(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.connect() as db:
            while True:
                last = db.execute("SELECT COALESCE(MAX(notification_id), 0) FROM keyledger_events").fetchone()[0]
                behind = db.execute("SELECT COUNT(*) FROM projection_tracking WHERE position < %s",
                                    (last,)).fetchone()[0]
                if not behind:
                    return
                assert time.monotonic() < deadline, f"{behind} views still behind position {last}"
                time.sleep(0.05)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
