"""Every setting is an environment variable, read once by the composition root."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting that cannot be understood; the message names the variable."""


def parse_duration(text: str, name: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(f"{name}={text!r}: expected a number and a unit (s, m, h, d), e.g. 30d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected an RFC 3339 time such as 2018-01-01T00:00:00Z") from None
    if value.tzinfo is None:
        raise SettingsError(f"{name}={text!r}: the time needs a zone, e.g. a trailing Z")
    return value


_MAILBOX = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def parse_mail_from(text: str, name: str) -> str:
    """A sender for the reminders' From header: ``user@host`` or ``Display Name <user@host>``,
    on one line (a newline would let the value add headers to every message)."""
    shape = "expected an address such as keyledger@example.com or Keyledger <keyledger@example.com>"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise SettingsError(f"{name}: a control character or line break in the value; {shape}")
    value = text.strip()
    match = re.fullmatch(r'([^<>@",;:]*?)\s*<([^<>]+)>', value)
    address = match.group(2) if match else value
    if not _MAILBOX.fullmatch(address):
        raise SettingsError(f"{name}={value!r}: not an e-mail address; {shape}")
    return value


def parse_cidrs(text: str, name: str) -> tuple[str, ...]:
    """Comma-separated IPv4/IPv6 addresses or CIDR blocks, each in its canonical form."""
    import ipaddress

    cidrs = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(part.strip(), strict=True)))
        except ValueError:
            raise SettingsError(f"{name}={text!r}: {part.strip()!r} is not an address or CIDR block; "
                                "expected e.g. 127.0.0.1/32,10.0.0.0/8,::1") from None
    if not cidrs:
        raise SettingsError(f"{name}={text!r}: expected addresses or CIDR blocks, e.g. 127.0.0.1/32,10.0.0.0/8")
    return tuple(cidrs)


SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")


@dataclass(frozen=True)
class SmtpServer:
    """Where reminder mail goes: ``KEYLEDGER_SMTP_URL`` taken apart (the password never shown)."""

    scheme: str  # smtp (plain), smtps (TLS from the start) or smtp+starttls
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def display(self) -> str:
        """The server without credentials, for logs and the campaign status."""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_smtp_url(text: str, name: str, password: str | None = None) -> SmtpServer:
    """``smtp://[user[:password]@]host[:port]``, ``smtps://…`` or ``smtp+starttls://…``."""
    # The value may hold a password: errors show the scheme and host only.
    shape = "expected smtp://host:port, smtps://host:port or smtp+starttls://host:port (user:password@ allowed)"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise SettingsError(f"{name}: not a URL; {shape}") from None
    if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
        raise SettingsError(f"{name}: scheme {parts.scheme!r} or host missing; {shape}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SettingsError(f"{name}: unexpected path or query after the host; {shape}")
    default_port = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}[parts.scheme]
    return SmtpServer(
        scheme=parts.scheme, host=parts.hostname, port=port or default_port,
        username=unquote(parts.username) if parts.username else None,
        password=password if password is not None else (unquote(parts.password) if parts.password else None),
    )


def parse_expiry_reminders(text: str, name: str = "KEYLEDGER_EXPIRY_REMINDERS") -> tuple[timedelta, ...]:
    """``7d,1d`` → the reminder leads before a key's expiry, longest first; ``none`` for no
    reminders. Each a duration from 1 minute to 365 days, distinct by name."""
    if text.strip().lower() == "none":
        return ()
    shape = "expected distinct durations before a key expires, e.g. 7d,1d (units s, m, h, d), or none"
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(not part for part in parts):
        raise SettingsError(f"{name}={text!r}: an empty item; {shape}")
    leads = []
    for part in parts:
        match = _DURATION.match(part)
        if not match:
            raise SettingsError(f"{name}={text!r}: {part!r} is not a duration; {shape}")
        lead = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
        if not timedelta(minutes=1) <= lead <= timedelta(days=365):
            raise SettingsError(f"{name}={text!r}: {part!r} is outside 1m to 365d; {shape}")
        leads.append(lead)
    if len({duration_name(lead) for lead in leads}) != len(leads):
        raise SettingsError(f"{name}={text!r}: a duration given twice; {shape}")
    return tuple(sorted(leads, reverse=True))


def duration_name(offset: timedelta) -> str:
    """A reminder's stage name, as written in KEYLEDGER_REMINDERS: 90d, 12h, 30m, 45s."""
    seconds = int(offset.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0 and seconds:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


_SCHEMA_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def parse_database_url(value: str, name: str = "KEYLEDGER_DATABASE_URL") -> dict[str, str]:
    """``postgresql://user:password@host:port/dbname`` → its parts (password percent-decoded)."""
    problem = f"{name}: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise SettingsError(problem + " (the port is not a number from 1 to 65535)") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(problem + f" (the scheme is {parts.scheme or 'missing'!r})")
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not dbname or "/" in dbname:
        raise SettingsError(problem + " (the host or the database name is missing)")
    if parts.query or parts.fragment:
        raise SettingsError(problem + " (no ?options or #fragment)")
    return {"host": parts.hostname, "port": str(port or 5432), "dbname": dbname,
            "user": unquote(parts.username or "postgres"), "password": unquote(parts.password or "")}


def parse_redis_url(value: str, name: str = "KEYLEDGER_REDIS_URL") -> str:
    """``redis://[user:password@]host[:port][/db]`` (or ``rediss://``), checked now."""
    shape = "expected redis://host:port/db"
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise SettingsError(f"{name}: scheme or host missing; {shape}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number from 1 to 65535; {shape}") from None
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise SettingsError(f"{name}: the database is a number (/0); {shape}")
    if parts.query or parts.fragment or any(c.isspace() or ord(c) < 32 for c in value):
        raise SettingsError(f"{name}: unexpected options, spaces or control characters; {shape}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./var")
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    database_schema: str = "public"  # the PostgreSQL schema holding the events and the views
    database_pool_size: int = 5  # PostgreSQL connections per process for the event store
    pepper: str | None = field(default=None, repr=False)
    legacy_sunset_at: datetime = parse_time("2018-01-01T00:00:00Z", "default")
    legacy_deprecated_at_setting: datetime | None = None  # default: the first reminder's time
    migration_guide_url: str = "/docs/migration"
    reminders: tuple[timedelta, ...] = (timedelta(days=90), timedelta(days=30), timedelta(days=7), timedelta(days=1))
    legacy_use_window: timedelta = timedelta(hours=1)
    access_token_ttl: timedelta = timedelta(hours=48)
    smtp_url: str | None = field(default=None, repr=False)  # may hold a password
    smtp_password: str | None = field(default=None, repr=False)
    mail_from: str = "keyledger@localhost"
    legacy_lookback: timedelta = timedelta(days=30)  # who counts as "using tokens" for the campaign
    scheduler_interval: float = 5.0  # seconds between the campaign's reconciliation runs
    mail_retry: timedelta = timedelta(seconds=10)  # first retry after a failed delivery; doubles, capped
    audit_signing_key: str | None = field(default=None, repr=False)
    follow_interval: float = 0.2  # seconds between polls for other processes' events
    last_used_interval: float = 60.0  # seconds between writes of keys' last-used times
    # A bulk pass (first start, rebuild) on SQLite builds the audit trail and the webhooks view in a
    # second process when the log holds at least this many events; None: never.
    bulk_second_process_from: int | None = 100_000
    proxy_hops: int = 0  # trusted reverse proxies in front (X-Forwarded-For/-Proto/-Host)
    # Peers whose X-Forwarded-For/Forwarded forward-auth believes (client restrictions by address).
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    store_lock_timeout: int = 5  # whole seconds a write waits for SQLite's lock before 503
    workers: int = 2  # HTTP worker processes of `keyledger serve`
    metrics_dir: Path | None = None  # where the run's metrics folder is made (default: /dev/shm, …)
    log_level: str = "INFO"
    redis_url: str | None = field(default=None, repr=False)  # rate-limit counters shared by instances
    github_scanning_keys: Path | None = None  # GitHub's secret-scanning public keys (JSON or PEM file)
    leak_policy: str = "revoke"  # what a leaked key gets: revoke | report (an app may override)
    # How long before a key expires its owner is reminded (service.domain.expiry), longest first.
    expiry_reminders: tuple[timedelta, ...] = (timedelta(days=7), timedelta(days=1))
    # The live audit feed (GET /v2/audit/events.jsonl?follow=1): how long one stream lasts before the
    # client reconnects with since_seq, and the blank line sent after this long without events.
    audit_follow_limit: timedelta = timedelta(hours=1)
    audit_heartbeat: timedelta = timedelta(seconds=15)
    webhooks_allow_private: bool = False  # webhooks may go to private addresses, and over http
    webhooks_timeout: float = 10.0  # seconds for one webhook delivery
    webhooks_backoff: tuple[float, ...] | None = None  # seconds after each failed attempt (None: the default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        kwargs: dict = {}
        if (v := get("KEYLEDGER_DATA_DIR")) is not None:
            kwargs["data_dir"] = Path(v)
        kwargs["database_url"] = get("KEYLEDGER_DATABASE_URL")
        if (v := get("KEYLEDGER_REDIS_URL")) is not None:
            kwargs["redis_url"] = parse_redis_url(v)
        if kwargs["database_url"] is not None:
            parse_database_url(kwargs["database_url"])  # fails clearly now, not at the first query
        if (v := get("KEYLEDGER_DATABASE_SCHEMA")) is not None:
            if not _SCHEMA_NAME.fullmatch(v):
                raise SettingsError(f"KEYLEDGER_DATABASE_SCHEMA={v!r}: expected a lower-case SQL name "
                                    "(letters, digits and _, starting with a letter; at most 63)")
            kwargs["database_schema"] = v
        if (v := get("KEYLEDGER_DATABASE_POOL_SIZE")) is not None:
            if not v.isdigit() or not 1 <= int(v) <= 100:
                raise SettingsError(f"KEYLEDGER_DATABASE_POOL_SIZE={v!r}: expected a whole number from 1 to 100")
            kwargs["database_pool_size"] = int(v)
        kwargs["pepper"] = get("KEYLEDGER_PEPPER")
        if (v := get("KEYLEDGER_GITHUB_SCANNING_KEYS")) is not None:
            from service.github_scanning import ScanningKeysError, load_keys

            try:  # a file that cannot be used stops the start, not the first report
                load_keys(Path(v))
            except ScanningKeysError as error:
                raise SettingsError(str(error)) from None
            kwargs["github_scanning_keys"] = Path(v)
        if (v := get("KEYLEDGER_LEAK_POLICY")) is not None:
            if v not in ("revoke", "report"):
                raise SettingsError(f"KEYLEDGER_LEAK_POLICY={v!r}: expected revoke or report")
            kwargs["leak_policy"] = v
        if (v := get("KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE")) is not None:
            if v not in ("0", "1"):
                raise SettingsError(f"KEYLEDGER_WEBHOOKS_ALLOW_PRIVATE={v!r}: expected 1 (allow private addresses "
                                    "and http for webhooks) or 0")
            kwargs["webhooks_allow_private"] = v == "1"
        if (v := get("KEYLEDGER_WEBHOOKS_TIMEOUT")) is not None:
            try:
                kwargs["webhooks_timeout"] = float(v)
            except ValueError:
                kwargs["webhooks_timeout"] = 0.0
            if not 0.1 <= kwargs["webhooks_timeout"] <= 60:
                raise SettingsError(f"KEYLEDGER_WEBHOOKS_TIMEOUT={v!r}: expected seconds from 0.1 to 60, e.g. 10")
        if (v := get("KEYLEDGER_WEBHOOKS_BACKOFF")) is not None:
            backoff = tuple(parse_duration(part.strip(), "KEYLEDGER_WEBHOOKS_BACKOFF").total_seconds()
                            for part in v.split(",") if part.strip())
            if not backoff or not all(backoff):
                raise SettingsError(f"KEYLEDGER_WEBHOOKS_BACKOFF={v!r}: expected durations above zero, the wait "
                                    "after each failed attempt, e.g. 5s,5m,30m,2h,5h,10h")
            kwargs["webhooks_backoff"] = backoff
        if kwargs["pepper"] is not None and len(kwargs["pepper"].encode("utf-8")) < 32:
            raise SettingsError("KEYLEDGER_PEPPER is too short: use at least 32 random bytes "
                                "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_hex(32))')")
        if (v := get("KEYLEDGER_LEGACY_SUNSET_AT")) is not None:
            kwargs["legacy_sunset_at"] = parse_time(v, "KEYLEDGER_LEGACY_SUNSET_AT")
        if (v := get("KEYLEDGER_LEGACY_DEPRECATED_AT")) is not None:
            kwargs["legacy_deprecated_at_setting"] = parse_time(v, "KEYLEDGER_LEGACY_DEPRECATED_AT")
        if (v := get("KEYLEDGER_MIGRATION_GUIDE_URL")) is not None:
            if any(ord(c) < 0x21 or c in '<>"' for c in v):
                raise SettingsError(f"KEYLEDGER_MIGRATION_GUIDE_URL={v!r}: expected a URL without spaces, "
                                    "quotes or angle brackets")
            kwargs["migration_guide_url"] = v
        if (v := get("KEYLEDGER_REMINDERS")) is not None:
            reminders = tuple(
                parse_duration(part, "KEYLEDGER_REMINDERS") for part in v.split(",") if part.strip()
            )
            if (not reminders or len({duration_name(r) for r in reminders}) != len(reminders)
                    or not all(reminders)):
                raise SettingsError(f"KEYLEDGER_REMINDERS={v!r}: expected distinct durations before "
                                    "the sunset, e.g. 90d,30d,7d,1d")
            kwargs["reminders"] = reminders
        if (v := get("KEYLEDGER_EXPIRY_REMINDERS")) is not None:
            kwargs["expiry_reminders"] = parse_expiry_reminders(v)
        if (v := get("KEYLEDGER_LEGACY_LOOKBACK")) is not None:
            kwargs["legacy_lookback"] = parse_duration(v, "KEYLEDGER_LEGACY_LOOKBACK")
            if not kwargs["legacy_lookback"]:
                raise SettingsError(f"KEYLEDGER_LEGACY_LOOKBACK={v!r}: expected a duration above zero, e.g. 30d")
        if (v := get("KEYLEDGER_MAIL_RETRY")) is not None:
            kwargs["mail_retry"] = parse_duration(v, "KEYLEDGER_MAIL_RETRY")
            if not kwargs["mail_retry"]:
                raise SettingsError(f"KEYLEDGER_MAIL_RETRY={v!r}: expected a duration above zero, e.g. 10s")
        if (v := get("KEYLEDGER_SCHEDULER_INTERVAL")) is not None:
            try:
                kwargs["scheduler_interval"] = float(v)
            except ValueError:
                kwargs["scheduler_interval"] = 0.0
            if not 0.05 <= kwargs["scheduler_interval"] <= 3600:
                raise SettingsError(f"KEYLEDGER_SCHEDULER_INTERVAL={v!r}: expected seconds from 0.05 to 3600, e.g. 5")
        if (v := get("KEYLEDGER_LEGACY_USE_WINDOW")) is not None:
            kwargs["legacy_use_window"] = parse_duration(v, "KEYLEDGER_LEGACY_USE_WINDOW")
            if not kwargs["legacy_use_window"]:
                raise SettingsError(f"KEYLEDGER_LEGACY_USE_WINDOW={v!r}: expected a duration above zero, e.g. 1h")
        if (v := get("KEYLEDGER_ACCESS_TOKEN_TTL")) is not None:
            kwargs["access_token_ttl"] = parse_duration(v, "KEYLEDGER_ACCESS_TOKEN_TTL")
            if not kwargs["access_token_ttl"]:
                raise SettingsError(f"KEYLEDGER_ACCESS_TOKEN_TTL={v!r}: expected a duration above zero, e.g. 48h")
        kwargs["smtp_url"] = get("KEYLEDGER_SMTP_URL")
        kwargs["smtp_password"] = get("KEYLEDGER_SMTP_PASSWORD")
        if kwargs["smtp_url"] is not None:
            parse_smtp_url(kwargs["smtp_url"], "KEYLEDGER_SMTP_URL")  # a bad URL stops the start
        if (v := get("KEYLEDGER_MAIL_FROM")) is not None:
            kwargs["mail_from"] = parse_mail_from(v, "KEYLEDGER_MAIL_FROM")
        kwargs["audit_signing_key"] = get("KEYLEDGER_AUDIT_SIGNING_KEY")
        if (v := get("KEYLEDGER_PROXY_HOPS")) is not None:
            if not v.isdigit() or int(v) > 10:
                raise SettingsError(f"KEYLEDGER_PROXY_HOPS={v!r}: expected how many proxies are in front, 0 to 10")
            kwargs["proxy_hops"] = int(v)
        if (v := get("KEYLEDGER_TRUSTED_PROXIES")) is not None:
            kwargs["trusted_proxies"] = parse_cidrs(v, "KEYLEDGER_TRUSTED_PROXIES")
        for variable, name, example in (("KEYLEDGER_AUDIT_FOLLOW_LIMIT", "audit_follow_limit", "1h"),
                                        ("KEYLEDGER_AUDIT_HEARTBEAT", "audit_heartbeat", "15s")):
            if (v := get(variable)) is not None:
                kwargs[name] = parse_duration(v, variable)
                if not kwargs[name]:
                    raise SettingsError(f"{variable}={v!r}: expected a duration above zero, e.g. {example}")
        if (v := get("KEYLEDGER_FOLLOW_INTERVAL")) is not None:
            try:
                interval = float(v)
            except ValueError:
                interval = -1.0
            if not 0.01 <= interval <= 60:  # also refuses nan and inf
                raise SettingsError(f"KEYLEDGER_FOLLOW_INTERVAL={v!r}: expected seconds from 0.01 to 60, e.g. 0.2")
            kwargs["follow_interval"] = interval
        if (v := get("KEYLEDGER_WORKERS")) is not None:
            if not v.strip().isdigit() or not 1 <= int(v) <= 64:
                raise SettingsError(f"KEYLEDGER_WORKERS={v!r}: expected a whole number of worker processes, 1 to 64")
            kwargs["workers"] = int(v)
        if (v := get("KEYLEDGER_METRICS_DIR")) is not None:
            if not os.path.isabs(v) or any(ord(c) < 0x20 for c in v):
                raise SettingsError(f"KEYLEDGER_METRICS_DIR={v!r}: expected an absolute path to an existing "
                                    "folder, on another filesystem than the data directory (e.g. /dev/shm)")
            kwargs["metrics_dir"] = Path(v)
        if (v := get("KEYLEDGER_LOG_LEVEL")) is not None:
            if v.strip().upper() not in LOG_LEVELS:
                raise SettingsError(f"KEYLEDGER_LOG_LEVEL={v!r}: expected one of {', '.join(LOG_LEVELS)}")
            kwargs["log_level"] = v.strip().upper()
        if (v := get("KEYLEDGER_LAST_USED_INTERVAL")) is not None:
            try:
                kwargs["last_used_interval"] = float(v)
            except ValueError:
                kwargs["last_used_interval"] = 0.0
            if not 0.05 <= kwargs["last_used_interval"] <= 3600:
                raise SettingsError(f"KEYLEDGER_LAST_USED_INTERVAL={v!r}: expected seconds from 0.05 to 3600, e.g. 60")
        if (v := get("KEYLEDGER_BULK_SECOND_PROCESS_FROM")) is not None:
            if v.strip().lower() == "off":
                kwargs["bulk_second_process_from"] = None
            elif v.strip().isascii() and v.strip().isdigit() and int(v) <= 10**12:
                kwargs["bulk_second_process_from"] = int(v)
            else:
                raise SettingsError(f"KEYLEDGER_BULK_SECOND_PROCESS_FROM={v!r}: expected a number of events "
                                    "(0 or more, e.g. 100000) or off")
        return cls(**kwargs)

    @property
    def smtp_server(self) -> SmtpServer | None:
        """The SMTP server for reminder mail; None means: write .eml files to the outbox folder."""
        if self.smtp_url is None:
            return None
        return parse_smtp_url(self.smtp_url, "KEYLEDGER_SMTP_URL", self.smtp_password)

    def prepare_data_dir(self) -> Path:
        """Make the data directory (owner only, 0700) or check the one there; a directory that
        cannot be used stops the command with one line naming KEYLEDGER_DATA_DIR."""
        where = self.data_dir
        try:
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise SettingsError(f"KEYLEDGER_DATA_DIR={str(where)!r}: cannot make the data directory "
                                f"({error.strerror or type(error).__name__})") from None
        if not where.is_dir():
            raise SettingsError(f"KEYLEDGER_DATA_DIR={str(where)!r}: not a directory")
        if not os.access(where, os.W_OK | os.X_OK):
            try:
                read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            why = "on a read-only file system" if read_only else "not writable by this user"
            raise SettingsError(f"KEYLEDGER_DATA_DIR={str(where)!r}: the data directory is {why}; "
                                "Keyledger writes its store, keys and outbox there")
        try:
            if where.stat().st_mode & 0o077 and where.stat().st_uid == os.geteuid():
                where.chmod(0o700)  # made by an earlier version, or with a loose umask
        except OSError:
            pass
        return where

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def scheduler_lock_path(self) -> Path:
        return self.data_dir / "scheduler.lock"

    @property
    def legacy_deprecated_at(self) -> datetime:
        """Since when access tokens are deprecated (the ``Deprecation`` header): as set, or the
        time of the first reminder before the sunset."""
        if self.legacy_deprecated_at_setting is not None:
            return self.legacy_deprecated_at_setting
        return self.legacy_sunset_at - max(self.reminders, default=timedelta(0))

    @property
    def events_path(self) -> Path:
        return self.data_dir / "events.sqlite"

    @property
    def views_path(self) -> Path:
        return self.data_dir / "views.sqlite"

    @property
    def uses_postgres(self) -> bool:
        return self.database_url is not None

    @property
    def database_conninfo(self) -> str:
        """The libpq connection string of ``database_url`` (for the views, locks and listening)."""
        from psycopg.conninfo import make_conninfo

        url = parse_database_url(self.database_url or "")
        return make_conninfo(host=url["host"], port=url["port"], dbname=url["dbname"], user=url["user"],
                             password=url["password"] or None, connect_timeout=5)

    def eventsourcing_env(self, *, create_tables: bool = True) -> dict[str, str]:
        """The ``env=`` for the eventsourcing application (never via os.environ)."""
        if self.database_url:
            url = parse_database_url(self.database_url)
            env = {
                # eventsourcing.postgres, with one attempt per call and short waits (a database
                # outage is a 503 at once): service/event_store.py
                "PERSISTENCE_MODULE": "service.event_store:FailFastFactory",
                "POSTGRES_DBNAME": url["dbname"], "POSTGRES_HOST": url["host"],
                "POSTGRES_PORT": url["port"], "POSTGRES_USER": url["user"],
                "POSTGRES_SCHEMA": self.database_schema,
                "POSTGRES_POOL_SIZE": str(self.database_pool_size),
                "POSTGRES_MAX_OVERFLOW": str(self.database_pool_size),
                "POSTGRES_CONNECT_TIMEOUT": "2",
                # No check before each use (a round trip each time): a pooled connection found dead
                # when used is replaced and the call tried once more (service.event_store).
                "POSTGRES_PRE_PING": "n",
                "POSTGRES_LOCK_TIMEOUT": str(self.store_lock_timeout),
                "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
                "CREATE_TABLE": "y" if create_tables else "n",
            }
            env["POSTGRES_PASSWORD"] = url["password"]  # the library wants one, even empty (trust auth)
            return env
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(self.events_path),
            "SQLITE_LOCK_TIMEOUT": str(self.store_lock_timeout),
        }
