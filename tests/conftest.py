"""Fixtures shared by every layer of tests.

* freezegun: the eventsourcing transcoder is taught freezegun's ``FakeDatetime`` (same
  name as ``DatetimeAsISO``, so the stored format is unchanged).
* Every secret generated during the run is remembered; each test's data directory and the
  run's log file are scanned for them at teardown.
* The suite runs twice, on SQLite and on PostgreSQL (``scripts/test``). A test that never reaches
  the store under test — a pure unit test, a documentation check, a parser, the domain on the
  in-memory store — is marked ``store_independent`` (on the test, or ``pytestmark`` for a module):
  it runs in the SQLite pass only, and the PostgreSQL pass deselects it by design, saying how many.
  The mark is checked: the store under test is reached only through ``tests/backend.py``
  (``make_settings``, ``environment_for`` — every server or CLI process —, ``connect``, …), and a
  marked test that calls one of those fails in the SQLite pass. So the fixtures ``settings``,
  ``system``, ``flask_app``, ``client``, ``start_server``, ``server`` are out for such a test.
  Unmarked tests (the default: leave new tests unmarked when in doubt) run on both stores.
* scripts/test runs the two passes at the same time, each in three processes. A test that asserts a
  wall-clock bound (a verification under 1 s, another instance refusing a revoked key within 1 s, ...)
  is marked ``timing_sensitive``: it then runs while no other process of the run runs a test
  (tests/pass_lock.py). Tests
  that only wait *up to* a deadline for something to happen need no mark.
* On PostgreSQL, in-process systems find their store ready-made (tests/schema_pool.py): nothing to
  do in a test; ``KEYLEDGER_TEST_SCHEMA_POOL=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import freezegun
import pytest
from eventsourcing.persistence import DatetimeAsISO
from freezegun.api import FakeDatetime

from service import credentials
from service.api import create_app
from service.application import Keyledger
from service.composition import System, build_system
from service.domain.actors import NO_REQUEST, Actor
from service.settings import Settings
from tests import backend, pass_lock, schema_pool
from tests.backend import make_settings

# -- freezegun and the eventsourcing transcoder ------------------------------------------


class FakeDatetimeAsISO(DatetimeAsISO):
    type = FakeDatetime
    name = "datetime_iso"


_register_transcodings = Keyledger.register_transcodings


def _register_with_freezegun(self, transcoder):  # type: ignore[no-untyped-def]
    _register_transcodings(self, transcoder)
    transcoder.register(FakeDatetimeAsISO())
    transcoder.register(DatetimeAsISO())  # decoding by name stays with the real type


Keyledger.register_transcodings = _register_with_freezegun  # type: ignore[method-assign]

# The database driver and its pools keep real time under freeze_time: their timeouts, idle
# checks and reconnection schedules run on time.monotonic(), which a frozen or moved clock
# would stop or leap (a pool then waits forever for a connection, or discards every one).
freezegun.configure(extend_ignore_list=["psycopg", "psycopg_pool"])

# -- every secret issued during the run ------------------------------------------------------

ISSUED_SECRETS: list[str] = []
_generate = credentials.generate


def _remembering_generate(prefix: str) -> str:
    secret = _generate(prefix)
    ISSUED_SECRETS.append(secret)
    return secret


credentials.generate = _remembering_generate
_generate_opaque = credentials.generate_opaque


def _remembering_generate_opaque(length: int) -> str:
    secret = _generate_opaque(length)
    ISSUED_SECRETS.append(secret)
    return secret


credentials.generate_opaque = _remembering_generate_opaque


def secrets_in(blob: bytes | str, secrets: list[str] | None = None) -> list[str]:
    """The ``secrets`` (by default every one issued in this run) found anywhere in ``blob``.

    A search per secret made every test's teardown cost the number of secrets issued so far times
    the size of its files (quadratic over a run: thousands of secrets, megabytes of SQLite files).
    Secrets are runs of letters, digits and ``_``: each run of the blob at least as long as the
    shortest secret is looked up, every window of a secret's length, in a set."""
    if secrets is None:
        index = _ISSUED.update(ISSUED_SECRETS)
    else:
        index = _SecretIndex().update(secrets)
    data = blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else blob
    found: set[bytes] = set()
    if index.lengths:
        for run in re.finditer(rb"[0-9A-Za-z_]{%d,}" % index.lengths[0][0], data):
            word = run.group()
            for size, wanted in index.lengths:
                if size > len(word):
                    break
                found.update(word[i:i + size] for i in range(len(word) - size + 1) if word[i:i + size] in wanted)
    if index.odd:  # not a run of word characters (none are, today): searched for as before
        text = data.decode("utf-8", "replace")
        found.update(s.encode("utf-8", "surrogatepass") for s in index.odd if s in text)
    if not found:
        return []
    hits = {f.decode("utf-8", "surrogatepass") for f in found}
    return [s for s in (ISSUED_SECRETS if secrets is None else secrets) if s in hits]


class _SecretIndex:
    """Secrets by length (``lengths``: sorted (length, set of their bytes)), and the odd ones; kept up
    to date with a list that only grows (``update``)."""

    def __init__(self) -> None:
        self.seen = 0
        self.by_length: dict[int, set[bytes]] = {}
        self.lengths: list[tuple[int, set[bytes]]] = []
        self.odd: list[str] = []

    def update(self, pool: list[str]) -> _SecretIndex:
        if len(pool) == self.seen:
            return self
        for secret in pool[self.seen:]:
            raw = secret.encode("utf-8", "surrogatepass")
            if _WORD.fullmatch(raw):
                self.by_length.setdefault(len(raw), set()).add(raw)
            else:
                self.odd.append(secret)
        self.seen = len(pool)
        self.lengths = sorted(self.by_length.items())
        return self


_WORD = re.compile(rb"[0-9A-Za-z_]+")
_ISSUED = _SecretIndex()  # ISSUED_SECRETS' index


def secrets_in_files(folder: Path, secrets: list[str] | None = None) -> dict[str, list[str]]:
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            hits = secrets_in(path.read_bytes(), secrets)
            if hits:
                found[str(path)] = hits
    return found


@pytest.fixture(scope="session", autouse=True)
def run_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything logged during the run, in a file that is scanned for secrets at the end."""
    path = tmp_path_factory.mktemp("logs") / "keyledger-tests.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    handler.close()
    leaked = secrets_in(path.read_bytes())
    assert not leaked, f"{len(leaked)} secret(s) were written to the log during the run"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(reason): about the embedded SQLite store's files "
                                       "themselves; not collected when the suite runs on PostgreSQL")
    config.addinivalue_line("markers", "postgres_only(reason): many instances on one PostgreSQL, its outages; "
                                       "collected when the suite runs on PostgreSQL")
    config.addinivalue_line("markers", "store_independent: never reaches the store under test (checked); runs in "
                                       "the SQLite pass only, deselected on PostgreSQL")
    config.addinivalue_line("markers", "timing_sensitive: asserts a wall-clock bound (within 1 s, under 0.5 s, ...); "
                                       "never runs beside the other pass's tests (tests/pass_lock.py)")
    if backend.ON_POSTGRES:
        backend.create_database()
        schema_pool.install(backend.DATABASE_URL, backend.conninfo(), _build_template)


def _build_template(data_dir: Path, schema: str) -> None:
    """The store the application makes, in ``schema`` (tests/schema_pool.py copies it)."""
    build_system(Settings(data_dir=data_dir, pepper=TEST_PEPPER, database_url=backend.DATABASE_URL,
                          database_schema=schema), follow=False).close()


def pytest_unconfigure(config: pytest.Config) -> None:
    if backend.ON_POSTGRES:
        schema_pool.uninstall()
        backend.drop_database()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if schema_pool.POOL is not None:
        terminalreporter.write_line(f"keyledger: {schema_pool.POOL.placed} PostgreSQL stores ready-made "
                                    f"(tests/schema_pool.py), no copy ready {schema_pool.POOL.missed} times")


def pytest_report_header(config: pytest.Config) -> str:
    where = f"PostgreSQL, database {backend.TEST_DATABASE}" if backend.ON_POSTGRES else "SQLite files"
    return f"keyledger store: {where}"


STORE_INDEPENDENT = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other = "sqlite_only" if backend.ON_POSTGRES else "postgres_only"  # the other store's tests
    kept, dropped, independent = [], [], 0
    for item in items:
        if item.get_closest_marker(other):
            dropped.append(item)
        elif backend.ON_POSTGRES and item.get_closest_marker("store_independent"):
            dropped.append(item)
            independent += 1
        else:
            kept.append(item)
    config.stash[STORE_INDEPENDENT] = independent
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    if not config.stash.get(STORE_INDEPENDENT, 0):
        return []
    return [f"keyledger: {config.stash[STORE_INDEPENDENT]} store-independent tests deselected on PostgreSQL "
            "(marked store_independent: they never reach the store, and ran in the SQLite pass)"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    """While a ``store_independent`` test runs (setup, call, teardown), tests/backend.py refuses to
    reach the store under test (see the module's docstring). A ``timing_sensitive`` test runs while
    the other pass of scripts/test runs nothing (tests/pass_lock.py)."""
    with pass_lock.running(alone=item.get_closest_marker("timing_sensitive") is not None):
        if item.get_closest_marker("store_independent") is None:
            return (yield)
        backend.GUARDED, backend.REACHED[:] = item.nodeid, []
        try:
            return (yield)
        finally:
            backend.GUARDED = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(backend.StoreReached):
        backend.REACHED[:] = []  # reported already
    if call.when == "teardown" and backend.REACHED and item.get_closest_marker("store_independent"):
        # Also when the test caught the StoreReached error itself.
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is marked store_independent but reached the store under test "
                           f"(tests.backend.{', '.join(dict.fromkeys(backend.REACHED))}): remove the marker")
        backend.REACHED[:] = []
    return report


def require(what: str, available: bool, reason: str) -> None:
    """Skip when a heavy dependency is missing on a developer's machine; fail in CI."""
    if available:
        return
    if os.environ.get("KEYLEDGER_REQUIRE_ALL") == "1":
        pytest.fail(f"{what} is required (KEYLEDGER_REQUIRE_ALL=1): {reason}")
    pytest.skip(f"{what} not available: {reason}")


# -- the system under test -------------------------------------------------------------------

TEST_PEPPER = "test-pepper-0123456789abcdef0123456789abcdef"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir=data_dir, pepper=TEST_PEPPER, follow_interval=0.05)


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    built = build_system(settings)
    yield built
    built.close()
    leaked = secrets_in_files(settings.data_dir)
    assert not leaked, f"secrets found at rest: {leaked}"


@pytest.fixture
def flask_app(system: System):
    return create_app(system=system)


@pytest.fixture
def client(flask_app):
    return flask_app.test_client()


class Caller:
    """A test client that sends one credential."""

    def __init__(self, client, token: str | None = None, **identity: str) -> None:
        self.client = client
        self.token = token
        self.id = identity.get("id")
        self.role = identity.get("role")

    def headers(self, extra: dict | None = None) -> dict:
        headers = {"Authorization": f"Key {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def get(self, path: str, headers: dict | None = None, **kw):
        return self.client.get(path, headers=self.headers(headers), **kw)

    def post(self, path: str, json=None, headers: dict | None = None, **kw):
        return self.client.post(path, json=json, headers=self.headers(headers), **kw)

    def patch(self, path: str, json=None, headers: dict | None = None, **kw):
        return self.client.patch(path, json=json, headers=self.headers(headers), **kw)

    def delete(self, path: str, headers: dict | None = None, **kw):
        return self.client.delete(path, headers=self.headers(headers), **kw)


def make_account(system: System, role: str, email: str, name: str | None = None) -> dict:
    account, token = system.keys_app.register_account(
        email=email, name=name or email.split("@")[0], role=role, by=Actor.system("test"),
        request=NO_REQUEST)
    system.after_command()
    return {**account, "token": token}


@pytest.fixture
def admin(system: System, client) -> Caller:
    a = make_account(system, "admin", "admin@example.com", "Admin")
    return Caller(client, a["token"], id=a["id"], role="admin")


@pytest.fixture
def auditor(system: System, client) -> Caller:
    a = make_account(system, "auditor", "auditor@example.com", "Auditor")
    return Caller(client, a["token"], id=a["id"], role="auditor")


@pytest.fixture
def owner(system: System, client) -> Caller:
    a = make_account(system, "owner", "owner@example.com", "Owner")
    return Caller(client, a["token"], id=a["id"], role="owner")


@pytest.fixture
def other_owner(system: System, client) -> Caller:
    a = make_account(system, "owner", "other@example.com", "Other Owner")
    return Caller(client, a["token"], id=a["id"], role="owner")


@pytest.fixture
def anonymous(client) -> Caller:
    return Caller(client, None)


@pytest.fixture
def owner_app(owner: Caller) -> dict:
    """An app of ``owner``'s, with its default key (secret under ``default_key.key``)."""
    response = owner.post("/v2/apps", json={"id": "vision", "name": "Vision"})
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def read_only_key(owner: Caller, owner_app: dict) -> dict:
    response = owner.post("/v2/apps/vision/keys",
                          json={"description": "read only", "scopes": ["Predict", "Search"]})
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def api_key_caller(client, read_only_key: dict) -> Caller:
    return Caller(client, read_only_key["key"], id=read_only_key["id"], role="key")


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
