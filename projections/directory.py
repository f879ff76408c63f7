"""Directory: accounts, apps and keys for listings (and, later, the console)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from projections.projection import Projection, handles
from projections.store import ViewStore, upsert
from projections.timefmt import from_rfc3339, rfc3339
from service.domain.accounts import Account
from service.domain.apps import App
from service.domain.keys import ApiKey, key_status


class DirectoryView(Projection):
    name = "directory"
    tables = ("directory_accounts", "directory_apps", "directory_keys", "directory_key_restrictions")
    ddl = (
        """CREATE TABLE IF NOT EXISTS directory_accounts (
            id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS directory_apps (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, owner_id TEXT NOT NULL, origin TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS directory_keys (
            id TEXT PRIMARY KEY, app_id TEXT NOT NULL, description TEXT NOT NULL, scopes TEXT NOT NULL,
            created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, display TEXT NOT NULL,
            origin TEXT NOT NULL, version INTEGER NOT NULL)""",
        # Client restrictions, for the keys that have one (most have none): canonical JSON.
        """CREATE TABLE IF NOT EXISTS directory_key_restrictions (
            id TEXT PRIMARY KEY, restrictions TEXT NOT NULL)""",
    )
    indexes = (
        "CREATE INDEX IF NOT EXISTS directory_apps_by_owner ON directory_apps (owner_id, created_at)",
        "CREATE INDEX IF NOT EXISTS directory_keys_by_app ON directory_keys (app_id, created_at)",
    )

    _ACCOUNT = upsert("directory_accounts", ("id", "email", "name", "role", "created_at"), ("id",))
    _APP = upsert("directory_apps", ("id", "name", "owner_id", "origin", "created_at"), ("id",))
    _KEY = upsert("directory_keys", ("id", "app_id", "description", "scopes", "created_at", "expires_at",
                                     "revoked_at", "display", "origin", "version"), ("id",))

    @handles(Account.Registered)
    def _account(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._ACCOUNT,
                   (str(e.originator_id), e.email, e.name, e.role, rfc3339(e.timestamp)))

    @handles(App.Registered)
    def _app(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._APP,
                   (e.slug, e.name, e.owner_id, e.origin, rfc3339(e.timestamp)))

    @handles(ApiKey.Issued)
    def _issued(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._KEY,
                   (str(e.originator_id), e.app_id, e.description, json.dumps(e.scopes),
                    rfc3339(e.timestamp), rfc3339(e.expires_at), None, e.display, e.origin,
                    e.originator_version))

    @handles(ApiKey.ScopesChanged)
    def _scopes(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, scopes=json.dumps(e.scopes))

    @handles(ApiKey.DescriptionChanged)
    def _description(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, description=e.description)

    @handles(ApiKey.Rolled)
    def _rolled(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, display=e.display)

    @handles(ApiKey.Revoked)
    def _revoked(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, revoked_at=rfc3339(e.timestamp))

    @handles(ApiKey.Expiring)
    def _expiring(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)  # an expiry reminder (service.domain.expiry): only the version moves

    @handles(ApiKey.Expired)
    def _expired(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)  # the expiry recorded: only the version moves (the status follows expires_at)

    @handles(ApiKey.Restricted)
    def _restricted(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)
        db.execute("DELETE FROM directory_key_restrictions WHERE id = ?", (str(e.originator_id),))
        if e.restrictions:
            db.execute("INSERT INTO directory_key_restrictions (id, restrictions) VALUES (?, ?)",
                       (str(e.originator_id), json.dumps(e.restrictions, sort_keys=True)))

    @staticmethod
    def _update(db: Any, e: Any, **columns: Any) -> None:
        sets = "".join(f"{name} = ?, " for name in columns)
        db.execute(f"UPDATE directory_keys SET {sets}version = ? WHERE id = ?",
                   (*columns.values(), e.originator_version, str(e.originator_id)))


class Directory:
    """Queries over the directory view."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def key_created_at(self, key_id: str) -> datetime | None:
        """When a key was created (None for an id the directory does not hold)."""
        with self.store.read() as db:
            row = db.execute("SELECT created_at FROM directory_keys WHERE id = ?", (key_id,)).fetchone()
        return from_rfc3339(row[0]) if row else None

    def apps(self, owner_id: str | None = None) -> list[dict]:
        sql = "SELECT id, name, owner_id, created_at FROM directory_apps"
        params: tuple = ()
        if owner_id is not None:
            sql += " WHERE owner_id = ?"
            params = (owner_id,)
        with self.store.read() as db:
            rows = db.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [{"id": r["id"], "name": r["name"], "owner_id": r["owner_id"],
                 "created_at": from_rfc3339(r["created_at"])} for r in rows]

    def keys(self, app_id: str, now: datetime) -> list[dict]:
        with self.store.read() as db:
            rows = db.execute("SELECT k.*, r.restrictions FROM directory_keys k LEFT JOIN directory_key_restrictions r"
                              " ON r.id = k.id WHERE k.app_id = ? ORDER BY k.created_at, k.id",
                              (app_id,)).fetchall()
        return [self._key(r, now) for r in rows]

    @staticmethod
    def _key(r: Any, now: datetime) -> dict:
        expires_at = from_rfc3339(r["expires_at"])
        status = key_status(r["revoked_at"], expires_at, now)
        return {
            "id": r["id"], "app_id": r["app_id"], "description": r["description"],
            "scopes": json.loads(r["scopes"]), "created_at": from_rfc3339(r["created_at"]),
            "status": status, "expires_at": expires_at, "revoked_at": from_rfc3339(r["revoked_at"]),
            "display": r["display"], "origin": r["origin"], "version": r["version"],
            "restrictions": json.loads(r["restrictions"]) if r["restrictions"] else None,
        }
