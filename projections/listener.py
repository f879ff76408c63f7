"""Following another instance's events on PostgreSQL: LISTEN/NOTIFY, supervised.

The eventsourcing library's PostgreSQL recorder sends ``NOTIFY <events table>`` in the
transaction of every save. ``LogListener`` holds one connection of its own, listens on that
channel and calls ``on_change`` for each notification, so every instance's in-memory index
sees another instance's revocation milliseconds after it commits.

A notification can be lost (a dropped connection, a listener restarting), so the follower's
polling keeps running beside it as the fallback, and the listener reconnects by itself with
a growing pause. ``connected`` says whether the subscription is up (metrics, ``/readyz``);
``unreachable`` whether the database could not be reached at the last attempt (the breaker that
refuses writes at once). When the database answers again, ``on_reachable`` runs before the
breaker closes (the composition refreshes the connection pools there, so that no request meets
a connection the outage broke).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("keyledger.listener")


class LogListener:
    def __init__(self, conninfo: str, channel: str, on_change: Callable[[], None], *,
                 max_pause: float = 0.25, on_reachable: Callable[[], None] | None = None) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_change = on_change
        self.on_reachable = on_reachable
        self.max_pause = max_pause
        self.connected = False
        self.unreachable = False  # the last attempt to listen failed: the database is down
        self.notifications = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keyledger-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.cancel_safe()  # wake a blocking wait for notifications
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        pause = 0.1
        while not self._stopping.is_set():
            established = False
            try:
                with psycopg.connect(self.conninfo, autocommit=True,
                                     application_name="keyledger-listener") as connection:
                    self._connection = connection
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    if not self.connected:
                        log.info("listening for new events on channel %s", self.channel)
                    self.connected = True
                    if self.unreachable and self.on_reachable is not None:
                        try:
                            self.on_reachable()
                        except Exception:  # noqa: BLE001 - the breaker closes anyway
                            log.exception("preparing for the database's return failed")
                    self.unreachable = False
                    established = True
                    pause = 0.1
                    self.on_change()  # whatever was written while we were not listening
                    while not self._stopping.is_set():
                        for _ in connection.notifies(timeout=0.25, stop_after=1):
                            self.notifications += 1
                            self.on_change()
            except Exception as error:  # noqa: BLE001 - supervised: reconnect, polling covers the gap
                if self._stopping.is_set():
                    break
                if self.connected:
                    log.warning("the event subscription dropped (%s); polling until it is back",
                                type(error).__name__)
                self.connected = False
                if not established:  # the database cannot be reached (not merely a dropped session)
                    self.unreachable = True
            finally:
                self._connection = None
            if established:
                continue  # a session that was up ended: reconnect at once; failing that, it is down
            self._stopping.wait(pause)
            pause = min(self.max_pause, pause * 2)
        self.connected = False

