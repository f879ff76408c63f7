"""A harness for real Keyledger server processes over real sockets.

``start_server(...)`` (a fixture factory) runs ``keyledger serve`` as a subprocess on a
free port with its own data directory, waits for ``GET /readyz`` to answer 200, and
stops every process it started when the test ends, passed or failed (``start_module_server``: when
the module's last test ends — for tests that read back only what their own requests did). A server can be
stopped (gracefully with SIGTERM, or killed with SIGKILL) and started again on the same
data directory. ``ServerProcess.cli(...)`` runs the ``keyledger`` command with the same
environment. HTTP goes through the stdlib only (``urllib.request``), bypassing proxies.

Every secret the harness sees in an answer (``ak_…``/``pat_…``) is remembered; at the end
of the test the server's log and data directory are scanned for them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import backend, schema_pool
from tests.conftest import TEST_PEPPER, require, secrets_in
from tests.throwaway_postgres import ThrowawayPostgres, unavailable_reason

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYLEDGER = Path(sys.executable).parent / "keyledger"
GUNICORN = Path(sys.executable).parent / "gunicorn"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0  # gunicorn's graceful_timeout is 10 s
SECRET = re.compile(r"\b(?:ak|pat)_[0-9A-Za-z]{38}\b")

# Settings a developer's shell might carry that must not reach the server under test.
_SCRUBBED = ("KEYLEDGER_", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
             "ALL_PROXY")

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_LIVE: set[int] = set()  # process groups started here and not yet reaped


@atexit.register
def _kill_leftovers() -> None:
    """A last resort if pytest itself is interrupted before the fixtures' finalizers run."""
    for group in list(_LIVE):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_environment(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update({
        "KEYLEDGER_DATA_DIR": str(data_dir),
        "KEYLEDGER_PEPPER": TEST_PEPPER,
        "KEYLEDGER_FOLLOW_INTERVAL": "0.05",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        **backend.environment_for(data_dir),
    })
    env.update(extra or {})
    return env


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def http(method: str, url: str, *, json_body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    """One HTTP request with the stdlib; HTTP errors are answers, not exceptions."""
    sent = dict(headers or {})
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Key {token}"
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers.items()), error.read())


def run_cli(args: list[str], env: dict[str, str], *, cwd: Path = REPO_ROOT,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    if not KEYLEDGER.exists():
        pytest.fail(f"the keyledger command is not installed next to {sys.executable} ({KEYLEDGER})")
    return subprocess.run([str(KEYLEDGER), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


@dataclass
class ServerProcess:
    """One ``keyledger serve`` (gunicorn master and its workers, in their own session), or with
    ``plain_gunicorn`` the production way: ``gunicorn -c gunicorn.conf.py 'service.api:create_app()'``
    (host, port and workers through KEYLEDGER_HOST, KEYLEDGER_PORT and KEYLEDGER_WORKERS)."""

    data_dir: Path
    log_path: Path
    workers: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # more options for ``keyledger serve``
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    secrets: list[str] = field(default_factory=list)
    starts: int = 0
    plain_gunicorn: bool = False

    def _command(self) -> tuple[list[str], dict[str, str]]:
        if self.plain_gunicorn:
            return ([str(GUNICORN), "-c", "gunicorn.conf.py", "service.api:create_app()"],
                    {**self.env, "KEYLEDGER_HOST": "127.0.0.1", "KEYLEDGER_PORT": str(self.port),
                     "KEYLEDGER_WORKERS": str(self.workers)})
        return ([str(KEYLEDGER), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(self.workers), *self.args], self.env)

    @property
    def env(self) -> dict[str, str]:
        return base_environment(self.data_dir, self.extra_env)

    @property
    def url(self) -> str:
        assert self.port is not None, "the server has not been started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- life cycle --------------------------------------------------------------------------

    def start(self, *, port: int | None = None, timeout: float = READY_TIMEOUT) -> ServerProcess:
        """Start ``keyledger serve`` and wait until ``/readyz`` answers 200."""
        assert not self.running, "already running"
        if not KEYLEDGER.exists():
            pytest.fail(f"the keyledger command is not installed next to {sys.executable} ({KEYLEDGER})")
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            self.port = port if port is not None else free_port()
            self.starts += 1
            argv, env = self._command()
            if self.starts == 1:
                schema_pool.place_for_server(env)  # its store, ready-made on PostgreSQL (tests/schema_pool.py)
            self._log_line(f"=== start #{self.starts}: {Path(argv[0]).name} "
                           f"{' '.join(argv[1:])} port {self.port} workers {self.workers} "
                           f"(data {self.data_dir})")
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    argv, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
            _LIVE.add(self.process.pid)
            if self._wait_ready(timeout):
                return self
            # Another process may have taken the port between free_port() and the bind.
            if attempt + 1 < attempts and "in use" in self.log_tail(20):
                self.kill()
                continue
            break
        exited = self.process.poll() if self.process else None
        why = f"exited with code {exited}" if exited is not None else f"not ready within {timeout:.0f} s"
        tail = self.log_tail()
        self.kill()
        pytest.fail(f"{'gunicorn' if self.plain_gunicorn else 'keyledger serve'} on {self.url} {why} (GET /readyz never answered 200); "
                    f"log {self.log_path}:\n{tail}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                if http("GET", self.url + "/readyz", timeout=2).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop: SIGTERM to the gunicorn master, wait, then SIGKILL everything."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._log_line(f"=== no exit {timeout:.0f} s after SIGTERM; killing")
        return self.kill()

    def kill(self) -> int | None:
        """Crash: SIGKILL the master and its workers at once (no shutdown code runs)."""
        if self.process is None:
            return None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.process.wait(10)
        _LIVE.discard(self.process.pid)
        self._log_line(f"=== stopped (exit {code})")
        self.process = None
        return code

    def restart(self, *, graceful: bool = True) -> ServerProcess:
        self.stop() if graceful else self.kill()
        return self.start()

    # -- talking to it -----------------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
        response = http(method, self.url + path, json_body=json_body, token=token, headers=headers)
        self.remember(response.body.decode("utf-8", "replace"))
        return response

    def get(self, path: str, token: str | None = None, **kw: Any) -> Response:
        return self.request("GET", path, token=token, **kw)

    def post(self, path: str, json_body: Any = None, token: str | None = None, **kw: Any) -> Response:
        return self.request("POST", path, json_body=json_body, token=token, **kw)

    def patch(self, path: str, json_body: Any = None, token: str | None = None, **kw: Any) -> Response:
        return self.request("PATCH", path, json_body=json_body, token=token, **kw)

    def delete(self, path: str, token: str | None = None, **kw: Any) -> Response:
        return self.request("DELETE", path, token=token, **kw)

    def cli(self, *args: str) -> Any:
        """Run ``keyledger <args>`` with this server's environment; parse its JSON output."""
        done = run_cli(list(args), self.env)
        assert done.returncode == 0, (
            f"keyledger {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
        self.remember(done.stdout)
        return json.loads(done.stdout)

    def create_account(self, role: str, email: str, name: str, *, wait: float = 0.0) -> dict:
        """``keyledger accounts create ... --json`` (a separate process writing to the store).

        The CLI raises the change beacon, so the server accepts the token on the very next
        request; ``wait`` > 0 instead polls for up to that long (for other machines' writes)."""
        account = self.cli("accounts", "create", "--email", email, "--name", name, "--role", role,
                           "--json")
        if wait and self.running:
            deadline = time.monotonic() + wait
            while (me := self.get("/v2/me", token=account["token"])).status != 200:
                assert time.monotonic() < deadline, (
                    f"the server did not accept the CLI-created {role}'s token within {wait} s: {me}")
                time.sleep(0.01)
        return account

    # -- evidence ----------------------------------------------------------------------------

    def remember(self, text: str) -> None:
        for secret in SECRET.findall(text):
            if secret not in self.secrets:
                self.secrets.append(secret)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _log_line(self, line: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(line + "\n")


StartServer = Callable[..., ServerProcess]


def _servers(folder: Path) -> Iterator[StartServer]:
    """The factory behind ``start_server`` and ``start_module_server``: servers under ``folder``,
    every one stopped at the end, then its log and data directory scanned for its secrets."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, *, workers: int = 1, env: dict[str, str] | None = None,
              start: bool = True, name: str | None = None, plain_gunicorn: bool = False,
              args: list[str] | None = None) -> ServerProcess:
        label = name or f"server{len(started) + 1}"
        server = ServerProcess(data_dir=data_dir or folder / label / "var",
                               log_path=folder / f"{label}.log", workers=workers,
                               extra_env=dict(env or {}), plain_gunicorn=plain_gunicorn,
                               args=list(args or []))
        server.data_dir.parent.mkdir(parents=True, exist_ok=True)
        started.append(server)
        return server.start() if start else server

    yield start

    problems = []
    for server in started:
        try:
            server.stop(timeout=5)
        except Exception as error:  # keep stopping the others
            problems.append(f"{server.log_path.name}: could not stop: {error!r}")
    for server in started:
        for folder_or_file in {server.data_dir, server.log_path}:
            paths = folder_or_file.rglob("*") if folder_or_file.is_dir() else [folder_or_file]
            for path in paths:
                if path.is_file() and (hits := secrets_in(path.read_bytes(), server.secrets)):
                    problems.append(f"{len(hits)} secret(s) at rest in {path}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(data_dir=None, workers=1, env=None, start=True, plain_gunicorn=False)`` → a
    running server.

    Every server is stopped at teardown; then its log and data directory are scanned for
    the secrets it handed out."""
    yield from _servers(tmp_path)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server`` for servers that the tests of one module share (a start-up costs a second or
    more): for tests that each send their own requests and read only what those requests did —
    never what another test's did, nor a count of log lines or of records. Stopped and scanned for
    secrets after the module's last test."""
    yield from _servers(tmp_path_factory.mktemp("module-servers"))


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    """One running server (one worker) on a fresh data directory."""
    return start_server()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of the test's own (``tests/throwaway_postgres.py``): a temporary folder,
    a free port, stopped and removed afterwards. Tests that stop the database use this one, never
    the machine's. Skipped where initdb/pg_ctl are missing (failed under KEYLEDGER_REQUIRE_ALL=1)."""
    reason = unavailable_reason()
    require("a throwaway PostgreSQL cluster", reason is None, reason or "")
    cluster = ThrowawayPostgres()
    try:
        yield cluster.start()
    finally:
        cluster.remove()
