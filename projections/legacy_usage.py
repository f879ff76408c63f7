"""Legacy usage: per app, who still uses legacy OAuth2 access tokens, how much, how recently.

The view ``legacy_usage`` (one row per app with client credentials) follows the events:
credentials issued, access tokens issued, use windows recorded (``LegacyTokenUsed``, at most
one per client per window), access disabled. ``LegacyUsage`` answers the questions asked of
it — ``GET /v2/legacy/usage`` and the deprecation campaign's "whom to warn" — joining it with
the directory (owners, apps, keys) and the use counts and last-used times that serving
processes write without events (``projections.last_used``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from projections.projection import Projection, handles
from projections.store import ViewStore, upsert
from projections.timefmt import epoch
from service.domain.legacy import LegacyClient, LegacyUseWindow


class LegacyUsageView(Projection):
    name = "legacy_usage"
    tables = ("legacy_usage",)
    ddl = (
        """CREATE TABLE IF NOT EXISTS legacy_usage (
            app_id        TEXT PRIMARY KEY,
            client_id     TEXT NOT NULL UNIQUE,
            client_uuid   TEXT NOT NULL,
            origin        TEXT NOT NULL,
            created_at    REAL NOT NULL,
            disabled_at   REAL,
            tokens_issued INTEGER NOT NULL DEFAULT 0,
            last_token_at REAL,
            windows       INTEGER NOT NULL DEFAULT 0,
            first_used_at REAL,
            last_used_at  REAL
        )""",
    )

    # New credentials for an app start its row afresh (the counts of earlier ones go).
    _ISSUED = upsert("legacy_usage", ("app_id", "client_id", "client_uuid", "origin", "created_at",
                                      "disabled_at", "tokens_issued", "last_token_at", "windows",
                                      "first_used_at", "last_used_at"), ("app_id",))

    @handles(LegacyClient.CredentialsIssued)
    def _issued(self, db: Any, position: int, e: Any) -> None:
        db.execute(self._ISSUED,
                   (e.app_id, e.client_id, str(e.originator_id), e.origin, epoch(e.timestamp),
                    None, 0, None, 0, None, None))

    @handles(LegacyClient.AccessTokenIssued)
    def _token(self, db: Any, position: int, e: Any) -> None:
        db.execute("UPDATE legacy_usage SET tokens_issued = tokens_issued + 1, last_token_at = ? "
                   "WHERE app_id = ?", (epoch(e.timestamp), e.app_id))

    @handles(LegacyClient.AccessDisabled)
    def _disabled(self, db: Any, position: int, e: Any) -> None:
        db.execute("UPDATE legacy_usage SET disabled_at = COALESCE(disabled_at, ?) WHERE app_id = ?",
                   (epoch(e.timestamp), e.app_id))

    @handles(LegacyUseWindow.LegacyTokenUsed)
    def _used(self, db: Any, position: int, e: Any) -> None:
        at = epoch(e.timestamp)
        db.execute("UPDATE legacy_usage SET windows = windows + 1, "
                   "first_used_at = LEAST(COALESCE(first_used_at, ?), ?), "
                   "last_used_at = GREATEST(COALESCE(last_used_at, ?), ?) WHERE app_id = ?",
                   (at, at, at, at, e.app_id))


# One row per app: the view, its owner (directory), its counted uses (last_used), and whether
# any of its API keys has been used.
_APPS = """
SELECT u.app_id, a.name AS app_name, a.owner_id, o.email AS owner_email, o.name AS owner_name,
       u.client_id, u.created_at, u.disabled_at, u.tokens_issued, u.last_token_at, u.windows,
       u.first_used_at,
       GREATEST(COALESCE(u.last_used_at, 0), COALESCE(c.last_used_at, 0)) AS last_used_at,
       GREATEST(u.windows, COALESCE(c.uses, 0)) AS uses,
       (SELECT MAX(l.last_used_at) FROM directory_keys k JOIN key_last_used l ON l.key_id = k.id
         WHERE k.app_id = u.app_id) AS api_keys_last_used_at
FROM legacy_usage u
LEFT JOIN directory_apps a ON a.id = u.app_id
LEFT JOIN directory_accounts o ON o.id = a.owner_id
LEFT JOIN (SELECT client_id, CAST(SUM(uses) AS INTEGER) AS uses, MAX(last_used_at) AS last_used_at
           FROM legacy_use_counts GROUP BY client_id) c ON c.client_id = u.client_uuid
"""


def _time(value: float | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(value, UTC)


class LegacyUsage:
    """Queries over legacy usage."""

    def __init__(self, store: ViewStore) -> None:
        self.store = store

    def apps(self, owner_id: str | None = None) -> list[dict]:
        """Every app with legacy client credentials (an owner's only, if given), by app id."""
        sql = _APPS
        params: tuple = ()
        if owner_id is not None:
            sql += " WHERE a.owner_id = ?"
            params = (owner_id,)
        with self.store.read() as db:
            rows = db.execute(sql + " ORDER BY u.app_id", params).fetchall()
        return [self._app(r) for r in rows]

    def owners_using_tokens(self, since: datetime) -> list[dict]:
        """Owners with at least one app whose tokens were used at or after ``since``, each with
        those apps (disabled ones included: the sunset's final notice names them too): the
        deprecation campaign's list of whom to warn."""
        owners: dict[str, dict] = {}
        for app in self.apps():
            if app["last_used_at"] is None or app["last_used_at"] < since or app["owner_id"] is None:
                continue
            owner = owners.setdefault(app["owner_id"], {
                "owner_id": app["owner_id"], "owner_email": app["owner_email"],
                "owner_name": app["owner_name"], "apps": []})
            owner["apps"].append(app)
        return list(owners.values())

    def clients(self) -> list[dict]:
        """Every legacy client: ``{"app_id", "client_id", "disabled_at"}``."""
        with self.store.read() as db:
            rows = db.execute("SELECT app_id, client_id, disabled_at FROM legacy_usage ORDER BY app_id").fetchall()
        return [{"app_id": r[0], "client_id": r[1], "disabled_at": _time(r[2])} for r in rows]

    @staticmethod
    def _app(r: Any) -> dict:
        return {
            "app_id": r["app_id"], "app_name": r["app_name"], "owner_id": r["owner_id"],
            "owner_email": r["owner_email"], "owner_name": r["owner_name"], "client_id": r["client_id"],
            "created_at": _time(r["created_at"]), "disabled_at": _time(r["disabled_at"]),
            "tokens_issued": r["tokens_issued"], "last_token_at": _time(r["last_token_at"]),
            "first_used_at": _time(r["first_used_at"]), "last_used_at": _time(r["last_used_at"]),
            "uses": r["uses"], "windows": r["windows"],
            "api_keys_last_used_at": _time(r["api_keys_last_used_at"]),
            "uses_api_keys": r["api_keys_last_used_at"] is not None,
        }

