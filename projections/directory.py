"""Directory: accounts, apps and keys for listings (and, later, the console)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from projections.projection import Projection, StatementRuns, handles, reads_stored
from projections.store import ViewStore, upsert
from projections.stored import key_text, plain, read_checked, record_version, text, texts, time_text
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

    _RESTRICTIONS_DELETE = "DELETE FROM directory_key_restrictions WHERE id = ?"
    _RESTRICTIONS_INSERT = "INSERT INTO directory_key_restrictions (id, restrictions) VALUES (?, ?)"

    # In bulk passes (``process_page``), each handler's effect is made from the stored JSON
    # (``reads_stored``; projections.stored): a row, or a key's change (``_CHANGE``: its id, version
    # and columns), read as the decoded event holds them; anything else is decoded.
    @handles(Account.Registered)
    @reads_stored(lambda record, state: (DirectoryView._ACCOUNT, (
        key_text(record[1]), text(state["email"]), text(state["name"]), text(state["role"]),
        time_text(state["timestamp"]))))
    def _account(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._ACCOUNT,
                   (str(e.originator_id), e.email, e.name, e.role, rfc3339(e.timestamp)))

    @handles(App.Registered)
    @reads_stored(lambda record, state: (DirectoryView._APP, (
        text(state["slug"]), text(state["name"]), text(state["owner_id"]), text(state["origin"]),
        time_text(state["timestamp"]))))
    def _app(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._APP,
                   (e.slug, e.name, e.owner_id, e.origin, rfc3339(e.timestamp)))

    @handles(ApiKey.Issued)
    @reads_stored(lambda record, state: (DirectoryView._KEY, _issued_row(record, state)))
    def _issued(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._KEY,
                   (str(e.originator_id), e.app_id, e.description, json.dumps(e.scopes),
                    rfc3339(e.timestamp), rfc3339(e.expires_at), None, e.display, e.origin,
                    e.originator_version))

    @handles(ApiKey.ScopesChanged)
    @reads_stored(lambda record, state: _change(record, scopes=_scopes_text(texts(state["scopes"]))))
    def _scopes(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, scopes=json.dumps(e.scopes))

    @handles(ApiKey.DescriptionChanged)
    @reads_stored(lambda record, state: _change(record, description=text(state["description"])))
    def _description(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, description=e.description)

    @handles(ApiKey.Rolled)
    @reads_stored(lambda record, state: _change(record, display=text(state["display"])))
    def _rolled(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, display=e.display)

    @handles(ApiKey.Revoked)
    @reads_stored(lambda record, state: _change(record, revoked_at=time_text(state["timestamp"])))
    def _revoked(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e, revoked_at=rfc3339(e.timestamp))

    @handles(ApiKey.Expiring)
    @reads_stored(lambda record, state: _change(record))
    def _expiring(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)  # an expiry reminder (service.domain.expiry): only the version moves

    @handles(ApiKey.Expired)
    @reads_stored(lambda record, state: _change(record))
    def _expired(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)  # the expiry recorded: only the version moves (the status follows expires_at)

    @handles(ApiKey.Restricted)
    @reads_stored(lambda record, state: (_RESTRICT, (key_text(record[1]), record_version(record),
                                                     _restrictions_text(plain(state["restrictions"])))))
    def _restricted(self, db: Any, position: int, e: Any) -> None:
        self._update(db, e)
        db.execute(self._RESTRICTIONS_DELETE, (str(e.originator_id),))
        if e.restrictions:
            db.execute(self._RESTRICTIONS_INSERT, (str(e.originator_id), _restrictions_text(e.restrictions)))

    def process_page(self, db: Any, page: Any) -> None:
        """A page of a bulk pass: the keys' rows gathered in memory (``_KeyRows``) — a key issued in
        the page written once, as its events leave it; the changes to the others, one ``UPDATE``
        per key with what they leave — and written at the page's end; the other rows in order.
        Read from judged records, each event's effect is made from its stored JSON (the handlers'
        readers, ``reads_stored``), no event built; what they do not read is decoded and handled."""
        runs = StatementRuns(db)
        keys = _KeyRows(runs)
        judged = getattr(page, "judged", None)
        if judged is None:
            self.process_batch(keys, self.handled(page))
        else:
            readers, wants, event, readable = self._readers, self.wants, page.event, page.readable
            decoded = page.decoded()  # events another view decoded: handled (cheaper than their JSON)
            for i, record in enumerate(judged):
                topic = record[3]
                reader = readers.get(topic) if type(topic) is str and i not in decoded else None
                if reader is not None:
                    found = read_checked(reader, record, readable(i))
                    if found is not None:
                        what, params = found
                        if what is _CHANGE:
                            keys.update(*params)
                        elif what is _RESTRICT:
                            key_id, key_version, restrictions = params
                            keys.update(key_id, key_version, {})
                            keys.execute(self._RESTRICTIONS_DELETE, (key_id,))
                            if restrictions is not None:
                                keys.execute(self._RESTRICTIONS_INSERT, (key_id, restrictions))
                        else:
                            keys.execute(what, params)
                        continue
                if wants(record):
                    self.process(keys, record[0], event(i))
        keys.flush()
        runs.flush()

    @staticmethod
    def _update(db: Any, e: Any, **columns: Any) -> None:
        if type(db) is _KeyRows:
            db.update(str(e.originator_id), e.originator_version, columns)
            return
        sets = "".join(f"{name} = ?, " for name in columns)
        db.execute(f"UPDATE directory_keys SET {sets}version = ? WHERE id = ?",
                   (*columns.values(), e.originator_version, str(e.originator_id)))


_CHANGE = object()  # a reader's key change: (key id, version, {column: value})
_RESTRICT = object()  # a reader's restriction: (key id, version, restrictions text or None)


def _change(record: tuple, **columns: Any) -> tuple[object, tuple]:
    """``_update``'s change of a key, from a judged record."""
    return _CHANGE, (key_text(record[1]), record_version(record), columns)


def _restrictions_text(restrictions: Any) -> str | None:
    return json.dumps(restrictions, sort_keys=True) if restrictions else None


def _issued_row(record: tuple, state: dict) -> list:
    """``_issued``'s row of a key issued, from its stored JSON."""
    return [key_text(record[1]), text(state["app_id"]), text(state["description"]),
            _scopes_text(texts(state["scopes"])), time_text(state["timestamp"]), _maybe_time(state["expires_at"]),
            None, text(state["display"]), text(state["origin"]), record_version(record)]


_SCOPES_TEXTS: dict[tuple[str, ...], str] = {}  # a few scope sets, over and over


def _scopes_text(scopes: list[str]) -> str:
    """``json.dumps(scopes)``, of each scope set once."""
    key = tuple(scopes)
    found = _SCOPES_TEXTS.get(key)
    if found is None:
        if len(_SCOPES_TEXTS) >= 4096:
            _SCOPES_TEXTS.clear()
        found = _SCOPES_TEXTS[key] = json.dumps(scopes)
    return found


def _maybe_time(value: Any) -> str | None:
    return None if value is None else time_text(value)


_KEY_COLUMNS = ("id", "app_id", "description", "scopes", "created_at", "expires_at", "revoked_at", "display",
                "origin", "version")
_KEY_COLUMN = {name: i for i, name in enumerate(_KEY_COLUMNS)}


class _KeyRows:
    """The view store for a page of a bulk pass (``DirectoryView.process_page``): ``directory_keys``
    gathered in memory, every other statement passed on in order. No handler reads the table, so
    its rows may be written last: a key issued in the page is one row (its upsert replaces every
    column, so changes made before it in the page are dropped, and the later ones change the row);
    any other key gets one ``UPDATE`` setting each changed column to its last value, and the version
    to the last — what the page's updates, one after the other, leave (none, for a key the view
    does not hold)."""

    __slots__ = ("db", "rows", "changes")

    def __init__(self, db: Any) -> None:
        self.db = db
        self.rows: dict[str, list] = {}
        self.changes: dict[str, tuple[dict[str, Any], list]] = {}  # key id -> (columns, [version])

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql is DirectoryView._KEY:
            self.rows[params[0]] = list(params)
            self.changes.pop(params[0], None)
            return None
        return self.db.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.db.executemany(sql, rows)

    def update(self, key_id: str, version: int, columns: dict[str, Any]) -> None:
        row = self.rows.get(key_id)
        if row is not None:
            for name, value in columns.items():
                row[_KEY_COLUMN[name]] = value
            row[-1] = version
            return
        changed = self.changes.get(key_id)
        if changed is None:
            self.changes[key_id] = (dict(columns), [version])
        else:
            changed[0].update(columns)
            changed[1][0] = version

    def flush(self) -> None:
        if self.rows:
            self.db.executemany(DirectoryView._KEY, list(self.rows.values()))
        by_columns: dict[tuple[str, ...], list[tuple]] = {}
        for key_id, (columns, version) in self.changes.items():
            names = tuple(sorted(columns))
            by_columns.setdefault(names, []).append((*(columns[n] for n in names), version[0], key_id))
        for names, params in by_columns.items():
            sets = "".join(f"{name} = ?, " for name in names)
            self.db.executemany(f"UPDATE directory_keys SET {sets}version = ? WHERE id = ?", params)
        self.rows, self.changes = {}, {}


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
