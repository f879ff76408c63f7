"""The PostgreSQL outage drill: instances under load while their database stops and starts again.

On a throwaway PostgreSQL cluster (``tests/throwaway_postgres.py``, never the machine's own):
``instances`` real ``keyledger serve`` processes share one schema; every instance answers
forward-auth (``GET /v2/auth/check`` with an API key, ``POST /v2/verify``, and a legacy access token
whose first use falls in the outage) at a steady pace and takes key creations (``POST
/v2/apps/vision/keys``) at another. After a baseline, PostgreSQL is stopped (``pg_ctl stop -m fast``),
left down for ``outage`` seconds, started again, and the load goes on for ``after`` seconds.

Every answer is kept with its instance, start time, duration, status and staleness header;
``Drill.report()`` gives per instance p50/p99/max of forward-auth before, during and after the
outage, and the writes' answers per phase. ``Drill.unstored()`` lists every key whose creation was
answered 201 but is not in the store afterwards. Used by ``tests/e2e/test_postgres_outage.py``
(which asserts) and ``scripts/fault_outage.py`` (which prints).
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from tests.e2e.conftest import ServerProcess
from tests.e2e.many_instances import Cluster, cluster_env
from tests.throwaway_postgres import ThrowawayPostgres

BASELINE, OUTAGE, AFTER = "baseline", "outage", "after"
PHASES = (BASELINE, OUTAGE, AFTER)
VERIFICATIONS = ("auth_check", "verify", "legacy")
SUNSET = "2031-01-01T00:00:00Z"  # legacy tokens still work


@dataclass
class Sample:
    instance: int
    kind: str  # auth_check, verify, legacy (forward-auth) or write
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: no answer (connection error or timeout)
    stale: bool = False  # answered with X-Keyledger-Index-Stale
    error: str | None = None  # a write's error code, or the exception's class
    request_id: str | None = None  # a write's (to find it in the instance's log)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def call(port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection, as a gateway's subrequest would be (http.client: little overhead)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@dataclass
class Drill:
    postgres: ThrowawayPostgres
    tmp_path: Path
    start_server: Callable[..., ServerProcess]
    instances: int = 3
    workers: int = 2
    verify_every: float = 0.02  # seconds between one instance's verifications (50/s each)
    write_every: float = 0.1  # seconds between one instance's key creations (10/s each)
    cluster: Cluster | None = None
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # time.monotonic() of each step
    created: dict[str, int] = field(default_factory=dict)  # key id answered 201 -> instance
    legacy_recorded: bool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    # -- set-up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        env = {**cluster_env("o_" + uuid.uuid4().hex[:16], database_url=self.postgres.url),
               "KEYLEDGER_LEGACY_SUNSET_AT": SUNSET}
        self.cluster = Cluster(env, self.tmp_path, self.start_server)
        self.cluster.cli("db", "init")
        servers = self.cluster.start(self.instances, workers=self.workers)
        first = servers[0]
        admin = first.create_account("admin", "admin@example.com", "Admin")["token"]
        self.owner = first.post("/v2/accounts", {"email": "o@example.com", "name": "O", "role": "owner"},
                                token=admin).json["token"]
        for app in ("vision", "search"):
            assert first.post("/v2/apps", {"id": app, "name": app.title()}, token=self.owner).status == 201
        self.keys = [first.post("/v2/apps/vision/keys", {"description": f"load {n}", "scopes": ["Predict"]},
                                token=self.owner).json["key"] for n in range(3)]
        # Two legacy clients: one used from the start; the other's first use (an event to record)
        # falls in the outage.
        self.legacy_client_ids = []
        self.tokens = []
        for app in ("vision", "search"):
            credentials = first.post(f"/v2/apps/{app}/legacy-credentials", token=admin)
            assert credentials.status == 201, credentials
            first.remember(credentials.json["client_secret"])
            basic = base64.b64encode(f"{credentials.json['client_id']}:{credentials.json['client_secret']}".encode())
            token = first.request("POST", "/v2/token", json_body={"grant_type": "client_credentials"},
                                  headers={"Authorization": f"Basic {basic.decode()}"})
            assert token.status == 200, token
            self.legacy_client_ids.append(credentials.json["client_id"])
            self.tokens.append(token.json["access_token"])
        for server in servers:
            server.secrets.extend(s for s in first.secrets if s not in server.secrets)
            for key in self.keys:  # every instance knows every key before the load starts
                self._wait_valid(server, key)

    def _wait_valid(self, server: ServerProcess, key: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while server.post("/v2/verify", {"key": key}).json["code"] != "VALID":
            assert time.monotonic() < deadline, f"{server.url} does not know a key made {timeout} s ago"
            time.sleep(0.02)

    @property
    def servers(self) -> list[ServerProcess]:
        assert self.cluster is not None
        return self.cluster.servers

    # -- load ----------------------------------------------------------------------------------

    def _keep(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def _verifications(self, n: int, server: ServerProcess) -> None:
        port = server.port
        assert port is not None
        turn = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            turn += 1
            key = self.keys[turn % len(self.keys)]
            if turn % 10 == 0:  # a legacy token: the first client's always, the second's from the outage on
                kind = "legacy"
                token = self.tokens[1] if "stop" in self.marks and n == 1 else self.tokens[0]
                method, path, body, headers = "GET", "/v2/auth/check?scope=Predict", None, {
                    "Authorization": f"Bearer {token}"}
            elif turn % 2:
                kind = "auth_check"
                method, path, body, headers = "GET", "/v2/auth/check?" + urlencode({"scope": "Predict"}), None, {
                    "Authorization": f"Key {key}"}
            else:
                kind = "verify"
                method, path = "POST", "/v2/verify"
                body = json.dumps({"key": key, "scope": "Predict"}).encode()
                headers = {"Content-Type": "application/json"}
            started = time.monotonic()
            try:
                status, answer_headers, _ = call(port, method, path, body=body, headers=headers)
                sample = Sample(n, kind, started, time.monotonic() - started, status,
                                "x-keyledger-index-stale" in answer_headers)
            except OSError as error:
                sample = Sample(n, kind, started, time.monotonic() - started, 0, error=type(error).__name__)
            self._keep(sample)
            next_at = max(next_at + self.verify_every, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _writes(self, n: int, server: ServerProcess) -> None:
        port = server.port
        assert port is not None
        next_at = time.monotonic()
        while not self._stop.is_set():
            body = json.dumps({"description": f"drill {n}", "scopes": ["Predict"]}).encode()
            started = time.monotonic()
            try:
                status, headers, answer = call(port, "POST", "/v2/apps/vision/keys", body=body, headers={
                    "Content-Type": "application/json", "Authorization": f"Key {self.owner}"})
                seconds = time.monotonic() - started
                text = answer.decode("utf-8", "replace")
                server.remember(text)
                parsed = json.loads(answer) if answer else {}
                error = None
                if status == 201:
                    with self._lock:
                        self.created[parsed["id"]] = n
                else:
                    error = (parsed.get("error") or {}).get("code") if isinstance(parsed, dict) else None
                    if status == 503 and "retry-after" not in headers:
                        error = f"{error} without Retry-After"
                sample = Sample(n, "write", started, seconds, status, error=error,
                                request_id=headers.get("x-request-id"))
            except OSError as error:
                sample = Sample(n, "write", started, time.monotonic() - started, 0, error=type(error).__name__)
            self._keep(sample)
            next_at = max(next_at + self.write_every, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def run(self, *, baseline: float = 5.0, outage: float = 20.0, after: float = 10.0,
            progress: Callable[[str], None] = lambda _: None) -> None:
        """The load on every instance; PostgreSQL stopped after ``baseline`` seconds for ``outage``."""
        threads = []
        for n, server in enumerate(self.servers):
            threads.append(threading.Thread(target=self._verifications, args=(n, server), daemon=True))
            threads.append(threading.Thread(target=self._writes, args=(n, server), daemon=True))
        self.marks["load"] = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            time.sleep(baseline)
            progress(f"stopping PostgreSQL for {outage:.0f} s")
            self.marks["stop"] = time.monotonic()
            self.postgres.stop("fast")
            self.marks["stopped"] = time.monotonic()
            time.sleep(outage)
            progress("starting PostgreSQL")
            self.marks["start"] = time.monotonic()
            self.postgres.start()
            self.marks["started"] = time.monotonic()
            time.sleep(after)
        finally:
            if not self.postgres.running:
                self.postgres.start()
            self._stop.set()
            for thread in threads:
                thread.join(60)
            self.marks["end"] = time.monotonic()

    # -- what happened -------------------------------------------------------------------------

    def phase(self, sample: Sample) -> str:
        if sample.started < self.marks["stop"]:
            return BASELINE
        return OUTAGE if sample.started < self.marks["started"] else AFTER

    def verifications(self, instance: int | None = None, phase: str | None = None) -> list[Sample]:
        return [s for s in self.samples if s.kind in VERIFICATIONS
                and (instance is None or s.instance == instance) and (phase is None or self.phase(s) == phase)]

    def writes(self, phase: str | None = None) -> list[Sample]:
        return [s for s in self.samples if s.kind == "write" and (phase is None or self.phase(s) == phase)]

    def unstored(self) -> list[str]:
        """Keys whose creation was answered 201 but whose ``Issued`` event is not in the store."""
        assert self.cluster is not None
        issued = {originator for originator, _, topic in self.cluster.events() if topic.endswith("ApiKey.Issued")}
        return sorted(set(self.created) - issued)

    def legacy_use_recorded(self) -> bool:
        """Whether the second legacy client's use (first made during the outage) is in the store."""
        assert self.cluster is not None
        with self.cluster.connect() as db:
            rows = db.execute("SELECT state FROM keyledger_events WHERE topic LIKE %s",
                              ("%LegacyTokenUsed",)).fetchall()
        return any(json.loads(bytes(state)).get("client_id") == self.legacy_client_ids[1] for (state,) in rows)

    def report(self) -> str:
        lines = [f"PostgreSQL stopped {self.marks['start'] - self.marks['stopped']:.1f} s "
                 f"(stop took {self.marks['stopped'] - self.marks['stop']:.2f} s, start "
                 f"{self.marks['started'] - self.marks['start']:.2f} s); {self.instances} instances x "
                 f"{self.workers} workers; one verification every {self.verify_every * 1000:.0f} ms and one "
                 f"key creation every {self.write_every * 1000:.0f} ms per instance",
                 "forward-auth, ms                    n     p50     p99     max  stale  5xx  no answer"]
        for n in range(self.instances):
            for phase in PHASES:
                samples = self.verifications(n, phase)
                took = [s.seconds * 1000 for s in samples]
                lines.append(
                    f"  instance{n + 1} {phase:<10} {len(took):>10} {percentile(took, 50):>7.1f} "
                    f"{percentile(took, 99):>7.1f} {max(took, default=float('nan')):>7.1f} "
                    f"{sum(s.stale for s in samples):>6} {sum(s.status >= 500 for s in samples):>4} "
                    f"{sum(s.status == 0 for s in samples):>10}")
        lines.append("writes (POST /v2/apps/vision/keys)   n    2xx    503  other     p50 ms  max ms")
        for phase in PHASES:
            samples = self.writes(phase)
            took = [s.seconds * 1000 for s in samples]
            statuses = Counter(s.status for s in samples)
            lines.append(f"  {phase:<19} {len(samples):>10} {sum(v for k, v in statuses.items() if 200 <= k < 300):>6} "
                         f"{statuses[503]:>6} {sum(v for k, v in statuses.items() if not (200 <= k < 300 or k == 503)):>6} "
                         f"{percentile(took, 50):>10.1f} {max(took, default=float('nan')):>7.1f}")
        return "\n".join(lines)
