"""Rate limits of keys and apps: a side table beside the verification index.

The view (``key_limits``, ``app_limits``) holds the current limits of every key and app that has
any; each serving process loads it into ``LimitBook`` at start and applies new events directly,
like the verification index. Keys without limits are not in it at all: their verdict costs
nothing more than before (``active`` is False while nobody has limits; otherwise one dictionary
look-up by the key's UUID and one by its app).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from projections.follower import collector_paused
from projections.projection import Projection, handles, reads_stored
from projections.store import ViewStore, upsert
from projections.stored import key_text, plain, text
from service.domain.apps import App
from service.domain.keys import ApiKey
from service.ratelimit.engine import LimitSet


class LimitsView(Projection):
    name = "limits"
    tables = ("key_limits", "app_limits")
    ddl = (
        """CREATE TABLE IF NOT EXISTS key_limits (
            key_id TEXT PRIMARY KEY,
            limits TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS app_limits (
            app_id TEXT PRIMARY KEY,
            limits TEXT NOT NULL
        )""",
    )
    _KEY = upsert("key_limits", ("key_id", "limits"), ("key_id",))
    _APP = upsert("app_limits", ("app_id", "limits"), ("app_id",))

    # In bulk passes, each handler's statement is made from the stored JSON (``reads_stored``).
    @handles(ApiKey.LimitsChanged)
    @reads_stored(lambda record, state: _limits_statement(
        LimitsView._KEY, "DELETE FROM key_limits WHERE key_id = ?", key_text(record[1]), state))
    def _key(self, db: Any, position: int, e: Any) -> None:
        if e.limits:
            db.execute(self._KEY, (str(e.originator_id), json.dumps(e.limits)))
        else:
            db.execute("DELETE FROM key_limits WHERE key_id = ?", (str(e.originator_id),))

    @handles(ApiKey.Revoked)
    @reads_stored(lambda record, state: ("DELETE FROM key_limits WHERE key_id = ?", (key_text(record[1]),)))
    def _revoked(self, db: Any, position: int, e: Any) -> None:
        db.execute("DELETE FROM key_limits WHERE key_id = ?", (str(e.originator_id),))

    @handles(App.LimitsChanged)
    @reads_stored(lambda record, state: _limits_statement(
        LimitsView._APP, "DELETE FROM app_limits WHERE app_id = ?", text(state["app_id"]), state))
    def _app(self, db: Any, position: int, e: Any) -> None:
        if e.limits:
            db.execute(self._APP, (e.app_id, json.dumps(e.limits)))
        else:
            db.execute("DELETE FROM app_limits WHERE app_id = ?", (e.app_id,))


def _limits_statement(upsert_sql: str, delete_sql: str, owner: str, state: dict) -> tuple[str, tuple]:
    """The statement of ``_key`` or ``_app`` for a stored state: its limits read as plain JSON."""
    limits = plain(state["limits"])
    return (upsert_sql, (owner, json.dumps(limits))) if limits else (delete_sql, (owner,))


class LimitBook:
    """Compiled limit sets by key UUID (16 bytes) and by app id, in memory."""

    view = LimitsView.name

    def __init__(self) -> None:
        self.keys: dict[bytes, LimitSet] = {}
        self.apps: dict[str, LimitSet] = {}
        self.active = False  # any limits at all?

    def load(self, store: ViewStore) -> int:
        keys: dict[bytes, LimitSet] = {}
        apps: dict[str, LimitSet] = {}
        with collector_paused(), store.read() as db:
            position = store.position(db, self.view)
            for key_id, limits in store.scan(db, "SELECT key_id, limits FROM key_limits"):
                keys[bytes.fromhex(key_id.replace("-", ""))] = LimitSet("key", key_id, json.loads(limits))
            for app_id, limits in store.scan(db, "SELECT app_id, limits FROM app_limits"):
                apps[app_id] = LimitSet("app", app_id, json.loads(limits))
        self.keys, self.apps = keys, apps
        self.active = bool(keys or apps)
        return position

    def apply(self, events: Sequence[Any]) -> None:
        for e in events:
            kind = type(e)
            if kind is ApiKey.LimitsChanged:
                if e.limits:
                    self.keys[e.originator_id.bytes] = LimitSet("key", str(e.originator_id), e.limits)
                else:
                    self.keys.pop(e.originator_id.bytes, None)
            elif kind is App.LimitsChanged:
                if e.limits:
                    self.apps[e.app_id] = LimitSet("app", e.app_id, e.limits)
                else:
                    self.apps.pop(e.app_id, None)
            elif kind is ApiKey.Revoked:
                self.keys.pop(e.originator_id.bytes, None)
            else:
                continue
            self.active = bool(self.keys or self.apps)

    def key_limits(self, key_id: bytes) -> list[dict]:
        found = self.keys.get(key_id)
        return [] if found is None else [{"limit": n, "per": per} for n, per in found.limits]

    def app_limits(self, app_id: str) -> list[dict]:
        found = self.apps.get(app_id)
        return [] if found is None else [{"limit": n, "per": per} for n, per in found.limits]
