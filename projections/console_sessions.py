"""Console sessions ended by signing out, shared by every process and instance.

The console's session is a signed cookie (``service.console.session``); signing out must end it
on the server side too, so that a copy of the cookie (another tab, a proxy's log, a stolen
backup) stops working at once, on every worker and every instance. One row per session signed
out, in the view store every process shares (the SQLite file of the data directory, or
PostgreSQL's schema), kept until the session would have expired anyway. Not derived from
events, so a rebuild of the views leaves it alone; it holds a digest of the session's nonce,
never the cookie.
"""

from __future__ import annotations

from projections.store import ViewStore

DDL = """CREATE TABLE IF NOT EXISTS console_sessions_ended (
    session_id TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"""


class EndedSessions:
    def __init__(self, store: ViewStore) -> None:
        self.store = store
        with store.write() as db:
            db.execute(DDL)

    def end(self, session_id: str, expires_at: float, now: float) -> None:
        """Record the session as signed out; forget those that have expired meanwhile."""
        with self.store.write() as db:
            db.execute("INSERT INTO console_sessions_ended (session_id, expires_at) VALUES (?, ?) "
                       "ON CONFLICT (session_id) DO NOTHING", (session_id, expires_at))
            db.execute("DELETE FROM console_sessions_ended WHERE expires_at < ?", (now,))

    def ended(self, session_id: str) -> bool:
        with self.store.read() as db:
            return db.execute("SELECT 1 FROM console_sessions_ended WHERE session_id = ?",
                              (session_id,)).fetchone() is not None
