"""A bulk pass makes the directory's, the expiry view's and the limits view's rows from the stored
JSON itself (``reads_stored``, projections.stored): for every record, the rows are those the live
path writes for the decoded event — read from the JSON when its shape is one the readers know,
decoded otherwise (a later class version, a typed value or a number where text is expected, a float,
a value the mapper cannot decode, a refused record, an id the mapper reads differently)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.persistence import DatetimeAsISO, DecimalAsStr, JSONTranscoder, UUIDAsHex
from eventsourcing.utils import get_topic

from projections import stored
from projections.directory import DirectoryView
from projections.expiry import ExpiryView
from projections.follower import Page
from projections.limits import LimitsView
from projections.store import open_view_store
from projections.timefmt import rfc3339
from service.application.sealing import SealingMapper
from service.domain.accounts import Account
from service.domain.apps import App
from service.domain.audit import RefusedRecord
from service.domain.keys import ApiKey

VIEWS = (DirectoryView, ExpiryView, LimitsView)
KEY = uuid4()
AT = {"_type_": "datetime_iso", "_data_": "2030-01-02T03:04:05.678901+00:00"}
LATER = {"_type_": "datetime_iso", "_data_": "2030-02-03T04:05:06.000001+00:00"}
REQUEST = {"id": "r1", "ip": "10.0.0.1", "user_agent": "ünï \u2026"}
BASE = {"timestamp": AT, "by": "account:a1", "request": REQUEST}


def state_of(cls: type, **fields: object) -> dict:
    return {**BASE, **fields, "_mac": "00" * 16}


STATES = {
    Account.Registered: state_of(Account.Registered, originator_topic="service.domain.accounts:Account",
                                 email="o@example.com", name="O", role="owner", token_digest="ab" * 32,
                                 token_display="…1234"),
    App.Registered: state_of(App.Registered, originator_topic="service.domain.apps:App", slug="app-1",
                             name="App ✓", owner_id=str(uuid4()), origin="user"),
    ApiKey.Issued: state_of(ApiKey.Issued, originator_topic="service.domain.keys:ApiKey", app_id="app-1",
                            description="ro", scopes=["Predict", "Search"], expires_at=LATER, digest="cd" * 32,
                            display="ak_…1234", origin="user"),
    ApiKey.ScopesChanged: state_of(ApiKey.ScopesChanged, scopes=["Predict"], previous_scopes=["All"],
                                   digests=["cd" * 32]),
    ApiKey.DescriptionChanged: state_of(ApiKey.DescriptionChanged, description="read"),
    ApiKey.Rolled: state_of(ApiKey.Rolled, digest="ef" * 32, display="ak_…5678", previous_digest="cd" * 32,
                            previous_display="ak_…1234", previous_valid_until=LATER),
    ApiKey.Revoked: state_of(ApiKey.Revoked, digests=["ef" * 32]),
    ApiKey.Expiring: state_of(ApiKey.Expiring, stage="7d", expires_at=LATER, reminder_id="m1"),
    ApiKey.Expired: state_of(ApiKey.Expired, expires_at=LATER),
    ApiKey.Restricted: state_of(ApiKey.Restricted, restrictions={"browser": ["https://*.example.com/*"]},
                                previous_restrictions=None, digests=["ef" * 32]),
    ApiKey.LimitsChanged: state_of(ApiKey.LimitsChanged, limits=[{"limit": 10, "per": "1s"}], previous_limits=[]),
    App.LimitsChanged: state_of(App.LimitsChanged, app_id="app-1", limits=[{"limit": 100, "per": "1m"}],
                                previous_limits=[]),
}
UNKNOWN = "service.domain.keys:ApiKey.NothingLikeIt"


def case(cls: type | str, fast: bool | None, *, id_: str, oid: object = None, version: object = 2,
         problem: str | None = None, body: bytes | None = None, drop: tuple = (), **changes: object):
    topic = cls if isinstance(cls, str) else get_topic(cls)
    state = {k: v for k, v in {**STATES.get(cls, BASE), **changes}.items() if k not in drop}
    return pytest.param(topic, state, oid if oid is not None else KEY.hex, version, problem, body, fast, id=id_)


def cases():
    for cls in STATES:
        name = cls.__qualname__
        yield case(cls, True, id_=f"{name}-as-stored")
        yield case(cls, True, id_=f"{name}-id-in-capitals", oid=KEY.hex.upper())
        yield case(cls, True, id_=f"{name}-an-offset", timestamp={"_type_": "datetime_iso",
                                                                 "_data_": "2030-01-02T05:04:05.5+02:00"})
        yield case(cls, True, id_=f"{name}-whole-seconds", timestamp={"_type_": "datetime_iso",
                                                                     "_data_": "2030-01-02T03:04:05+00:00"})
        yield case(cls, True, id_=f"{name}-no-zone", timestamp={"_type_": "datetime_iso",
                                                               "_data_": "2030-01-02 03:04:05.000007"})
        yield case(cls, True, id_=f"{name}-a-uuid-beside", note={"id": {"_type_": "uuid_hex", "_data_": uuid4().hex}})
        yield case(cls, True, id_=f"{name}-no-request", drop=("request", "by"))
        # Decoded instead: the rows of the decoded event (or, refused, none). None: read from the JSON
        # by a view that does not read the value, decoded by one that does.
        yield case(cls, False, id_=f"{name}-class-version", class_version=1)
        yield case(cls, False, id_=f"{name}-a-float-beside", ratio=1.5)
        yield case(cls, False, id_=f"{name}-a-decimal-beside", price={"_type_": "decimal_str", "_data_": "1.10"})
        yield case(cls, False, id_=f"{name}-an-unknown-type-beside", note=[{"_type_": "nope", "_data_": "x"}])
        yield case(cls, False, id_=f"{name}-a-bad-time-beside", note={"_type_": "datetime_iso", "_data_": "soon"})
        yield case(cls, False, id_=f"{name}-a-bad-uuid-beside", note={"_type_": "uuid_hex", "_data_": "zz"})
        yield case(cls, False, id_=f"{name}-a-bad-timestamp", timestamp={"_type_": "datetime_iso", "_data_": "x"})
        yield case(cls, None, id_=f"{name}-timestamp-as-text", timestamp="2030-01-02T03:04:05+00:00")
        yield case(cls, None, id_=f"{name}-no-timestamp", drop=("timestamp",))
        yield case(cls, False, id_=f"{name}-refused", problem="its seal does not verify")
        yield case(cls, False, id_=f"{name}-a-hyphenated-id", oid=str(KEY))
        yield case(cls, False, id_=f"{name}-a-garbage-id", oid="not-an-id-at-all-not-an-id-at-a")
        yield case(cls, None, id_=f"{name}-a-text-version", version="2")
        yield case(cls, False, id_=f"{name}-not-json", body=b'{"timestamp": ')
        yield case(cls, False, id_=f"{name}-not-an-object", body=b'["a", "b"]')
        yield case(cls, False, id_=f"{name}-a-typed-state", body=orjson.dumps(AT))
    # A value of another type where a reader expects text, a list of text, plain JSON.
    yield case(Account.Registered, False, id_="account-name-a-number", name=5)
    yield case(App.Registered, False, id_="app-origin-a-number", origin=7)
    yield case(App.Registered, False, id_="app-owner-a-uuid", owner_id={"_type_": "uuid_hex", "_data_": uuid4().hex})
    yield case(ApiKey.Issued, False, id_="issued-scopes-mixed", scopes=[1, "a"])
    yield case(ApiKey.Issued, True, id_="issued-never-expires", expires_at=None)
    yield case(ApiKey.Issued, False, id_="issued-expiry-a-text", expires_at="2031-01-01T00:00:00+00:00")
    yield case(ApiKey.ScopesChanged, False, id_="scopes-a-text", scopes="All")
    yield case(ApiKey.ScopesChanged, True, id_="scopes-none", scopes=[])
    yield case(ApiKey.DescriptionChanged, False, id_="description-null", description=None)
    yield case(ApiKey.DescriptionChanged, False, id_="description-a-list", description=["a"])
    yield case(ApiKey.Rolled, None, id_="rolled-no-display", drop=("display",))
    yield case(ApiKey.Revoked, None, id_="revoked-at-null", timestamp=None)
    yield case(ApiKey.Expiring, None, id_="expiring-stage-a-number", stage=7)
    yield case(ApiKey.Restricted, True, id_="restrictions-lifted", restrictions=None)
    yield case(ApiKey.Restricted, True, id_="restrictions-empty", restrictions={})
    yield case(ApiKey.Restricted, False, id_="restrictions-a-float", restrictions={"server": [1.5]})
    yield case(ApiKey.Restricted, False, id_="restrictions-a-time",
               restrictions={"server": [{"_type_": "datetime_iso", "_data_": "2030-01-01T00:00:00+00:00"}]})
    yield case(ApiKey.LimitsChanged, True, id_="key-limits-removed", limits=[])
    yield case(ApiKey.LimitsChanged, False, id_="key-limits-a-float", limits=[{"limit": 1.5, "per": "1s"}])
    yield case(ApiKey.LimitsChanged, False, id_="key-limits-a-uuid",
               limits=[{"limit": {"_type_": "uuid_hex", "_data_": uuid4().hex}, "per": "1s"}])
    yield case(App.LimitsChanged, True, id_="app-limits-removed", limits=[])
    yield case(App.LimitsChanged, False, id_="app-limits-app-a-number", app_id=5)
    yield case(UNKNOWN, False, id_="an-unknown-topic")


def transcoder() -> JSONTranscoder:
    t = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        t.register(transcoding)
    return t


MAPPER = SealingMapper(transcoder(), b"k" * 32)


class Decoder:
    """``LedgerApplication.decode_judged``: the event, or a ``RefusedRecord``; the seqs it decoded."""

    def __init__(self) -> None:
        self.decoded: list[int] = []

    def __call__(self, record: tuple) -> object:
        self.decoded.append(record[0])
        seq, _, version, topic, _, problem, body, oid = record
        if problem is None:
            try:
                return MAPPER.decode_opened(oid if isinstance(oid, UUID) else UUID(oid), version, topic, body)
            except Exception as error:  # noqa: BLE001 - as the application: refused
                problem = f"it cannot be decoded ({type(error).__name__})"
        return RefusedRecord(oid, version, topic, problem, datetime(1970, 1, 1, tzinfo=UTC))


def judged(seq: int, topic: str, state: dict, oid: object, version: object, problem: str | None = None,
           body: bytes | None = None) -> tuple:
    body = orjson.dumps(state) if body is None else body
    return (seq, oid.hex if isinstance(oid, UUID) else oid, version, topic, body, problem, body, oid)


SEED = [  # the key (KEY) and its app, issued and registered as stored
    judged(1, get_topic(App.Registered), STATES[App.Registered], uuid4(), 1),
    judged(2, get_topic(ApiKey.Issued), STATES[ApiKey.Issued], KEY, 1),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    found = {bulk: open_view_store(tmp_path_factory.mktemp("views") / f"{bulk}.sqlite") for bulk in (False, True)}
    yield found
    for store in found.values():
        store.close()


def rows(store, view_cls: type, pages: list[list[tuple]], *, bulk: bool) -> tuple[object, list[int]]:
    """The view's rows after the pages (bulk: ``process_page``; else live, event by event), or the
    error it stopped at; and the seqs decoded."""
    view, decode = view_cls(), Decoder()
    with store.write() as db:
        view.drop(db)
        view.create(db)
    try:
        for records in pages:
            with store.write() as db:
                if bulk:
                    view.process_page(db, Page(judged=records, decode=decode))
                else:
                    view.process_batch(db, [(record[0], decode(record)) for record in records])
    except Exception as error:  # noqa: BLE001 - the same error either way
        return type(error).__name__, decode.decoded
    with store.read() as db:
        found = {t: sorted(tuple(r) for r in db.execute(f"SELECT * FROM {t}")) for t in view.tables}
    return found, decode.decoded


@pytest.mark.parametrize("together", [False, True], ids=["after", "in-one-page"])
@pytest.mark.parametrize(("topic", "state", "oid", "version", "problem", "body", "fast"), list(cases()))
def test_rows_from_the_stored_json_are_the_rows_of_the_decoded_event(stores, topic, state, oid, version, problem,
                                                                      body, fast, together):
    record = judged(3, topic, state, oid, version, problem, body)
    pages = [[*SEED, record]] if together else [SEED, [record]]
    for view_cls in VIEWS:
        live, _ = rows(stores[False], view_cls, pages, bulk=False)
        got, decoded = rows(stores[True], view_cls, pages, bulk=True)
        assert got == live, view_cls.name
        if fast is not None and topic in view_cls._readers:
            assert (3 not in decoded) is fast, view_cls.name  # read from the JSON, or decoded
        assert 1 not in decoded and 2 not in decoded  # the seed, as stored: read from the JSON


def test_the_readers_cover_the_common_events():
    assert set(DirectoryView._readers) == {get_topic(c) for c in DirectoryView._handlers}
    assert set(ExpiryView._readers) == {get_topic(c) for c in (ApiKey.Rolled, ApiKey.Expiring, ApiKey.Expired)}
    assert set(LimitsView._readers) == {get_topic(c) for c in (ApiKey.Revoked, ApiKey.LimitsChanged,
                                                               App.LimitsChanged)}


def test_a_handler_overridden_without_a_reader_is_decoded():
    class Other(ExpiryView):
        name = "expiry_other"

        def _rolled(self, db, position, e):
            super()._rolled(db, position, e)

    assert get_topic(ApiKey.Rolled) not in Other._readers
    assert get_topic(ApiKey.Expired) in Other._readers


@pytest.mark.parametrize("data", [
    "2030-01-02T03:04:05.678901+00:00", "2030-01-02T03:04:05+00:00", "2030-01-02T03:04:05.000001+00:00",
    "2030-01-02T03:04:05.100000+00:00", "2030-01-02 03:04:05.678901+00:00", "2030-01-02T03:04:05.678901+01:00",
    "2030-01-02T03:04:05.678901", "2030-01-02T03:04:05,678901+00:00", "2030-01-02T03:04:05.678901Z",
    "0001-01-01T00:00:00.000001+00:00", "9999-12-31T23:59:59.999999+00:00", "2030-01-02T03:04:05.678901-00:00",
    "20300102T030405.678901+00:00", "2030-01-02T03:04:05.6789+00:00", "2030-01-02T03:04:05.000000+00:00",
])
def test_a_stored_time_reads_as_the_decoded_time_writes(data):
    assert stored.time_text({"_type_": "datetime_iso", "_data_": data}) == rfc3339(datetime.fromisoformat(data))


def test_the_scopes_text_is_json_dumps():
    from projections.directory import _scopes_text

    for scopes in (["All"], [], ["Predict", "Search"], ["ünï", 'q"uote']):
        assert _scopes_text(list(scopes)) == _scopes_text(list(scopes)) == json.dumps(scopes)


class DecodedPage(Page):
    """A page whose every event another view has decoded already: its JSON is not read again."""

    __slots__ = ()

    def state(self, i):
        raise AssertionError("read the JSON of an event decoded already")


def test_an_event_another_view_decoded_is_handled_not_read_again(stores):
    records = [*SEED, *(judged(3 + n, get_topic(cls), state, KEY, 2 + n) for n, (cls, state) in
                        enumerate(STATES.items()) if cls not in (App.Registered, ApiKey.Issued))]
    for view_cls in VIEWS:
        live, _ = rows(stores[False], view_cls, [records], bulk=False)
        view, decode = view_cls(), Decoder()
        page = DecodedPage(judged=records, decode=decode)
        for i in range(len(records)):
            page.event(i)
        with stores[True].write() as db:
            view.drop(db)
            view.create(db)
            view.process_page(db, page)
        with stores[True].read() as db:
            got = {t: sorted(tuple(r) for r in db.execute(f"SELECT * FROM {t}")) for t in view.tables}
        assert got == live, view_cls.name
        assert any(got.values())
