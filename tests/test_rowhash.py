"""The row encoding of --verify (protocol.rowhash): golden vectors, the same in Python
and in PostgreSQL's SQL, on the serving side and on the replica's."""

import datetime as dt
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import connection

from api.checksums import python_hashes, range_checksums, range_hashes
from dbsync.engine.verify.local import LocalRows
from dbsync.models import Database
from hcore import models as m
from protocol.formats import MAX_KEY, format_checksum
from protocol.rowhash import (
    hash_sql,
    part_bounds,
    part_of,
    row_text,
    text_hash,
    token,
    token_sql,
)

pytestmark = pytest.mark.django_db

ATHENS = dt.timezone(dt.timedelta(hours=2))

# (kind, Python value, the same value as an SQL literal, its token)
TOKENS = [
    ("text", "", "''::text", "S0:;"),
    ("text", None, "NULL::text", "N;"),
    ("text", "Ελλάδα; ok", "'Ελλάδα; ok'::varchar", "S10:Ελλάδα; ok;"),
    ("int", -42, "-42::integer", "I-42;"),
    ("int", None, "NULL::bigint", "N;"),
    ("float", 0.1, "0.1::float8", "F3fb999999999999a;"),
    ("float", -0.0, "'-0'::float8", "F8000000000000000;"),
    ("float", 1e300, "1e300::float8", "F7e37e43c8800759c;"),
    ("float", float("inf"), "'Infinity'::float8", "F7ff0000000000000;"),
    ("decimal", Decimal("12.50"), "12.50::numeric(6,2)", "D12.5;"),
    ("decimal", Decimal("0.00"), "0.00::numeric", "D0;"),
    ("decimal", Decimal("-1E+2"), "-100::numeric", "D-100;"),
    ("bool", True, "true", "B1;"),
    ("bool", False, "false", "B0;"),
    ("bool", None, "NULL::boolean", "N;"),
    ("date", dt.date(1969, 12, 31), "DATE '1969-12-31'", "d-1;"),
    (
        "datetime",
        dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=ATHENS),
        "TIMESTAMPTZ '2026-03-01 12:30:15.123456+02'",
        "T1772361015123456;",
    ),
    ("time", dt.time(23, 59, 59, 999999), "TIME '23:59:59.999999'", "t86399999999;"),
]


@pytest.mark.parametrize(("kind", "value", "literal", "expected"), TOKENS)
def test_tokens_are_the_same_in_python_and_sql(kind, value, literal, expected):
    assert token(kind, value) == expected
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL TIME ZONE 'Pacific/Auckland'")  # the session's zone is moot
        cursor.execute(f"SELECT {token_sql(kind, literal)}")
        assert cursor.fetchone()[0] == expected


def test_text_hash_golden_vector():
    assert text_hash("I7;S3:abc;N;B1;") == 583049415977805696
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {hash_sql('%s')}", ["I7;S3:abc;N;B1;"])
        assert cursor.fetchone()[0] == 583049415977805696


def test_part_bounds_agree_with_part_of():
    for low, high, parts in [(0, MAX_KEY, 16), (5, 9, 16), (1, 1000, 7), (3, 3, 1)]:
        bounds = part_bounds(low, high, parts)
        for key in {low, high, (low + high) // 2, low + 1, high - 1}:
            if not low <= key <= high:
                continue
            part = part_of(key, low, high, parts)
            assert bounds[part][0] <= key <= bounds[part][1]


def graph(original_db=None, shift=0):
    """A small graph with fixed keys and every kind of field the encoding meets."""
    common = {"original_db": original_db}

    def ids(pk):
        return {"pk": pk + shift, "original_id": pk if original_db else None}

    variable = m.Variable.objects.create(descr="Rain", **ids(1), **common)
    m.Variable.objects.create(descr="", descr_alt="", **ids(2), **common)
    unit = m.UnitOfMeasurement.objects.create(descr="mm", symbol="mm", **ids(3), **common)
    unit.variables.set([variable, m.Variable.objects.get(pk=2 + shift)])
    owner = m.Organization.objects.create(name="ΥΠΕΚΑ", **ids(4), **common)
    kind = m.StationType.objects.create(descr="meteo", **ids(5), **common)
    m.Station.objects.create(
        name="Αθήνα; 1",
        abscissa=23.7275,
        ordinate=37.9838,
        srid=4326,
        altitude=None,
        approximate=True,
        owner=owner,
        type=kind,
        start_date=dt.date(1990, 1, 1),
        **ids(6),
        **common,
    )
    zone = m.TimeZone.objects.create(code="EET", utc_offset=120, **ids(7), **common)
    event_type = m.EventType.objects.create(descr="visit", **ids(8), **common)
    m.GentityEvent.objects.create(
        gentity_id=6 + shift,
        date=dt.datetime(2026, 3, 1, 12, 30, tzinfo=ATHENS),
        type=event_type,
        user="",
        **ids(9),
        **common,
    )
    return zone


def test_a_row_is_encoded_as_documented():
    assert (
        row_text(
            m.Station,
            6,
            {"owner": 4, "type": 5, "is_active": False, "is_automatic": True, "start_date": None},
            {},
        )
        == "I6;I4;I5;B0;B1;N;N;"
    )
    assert row_text(
        m.UnitOfMeasurement,
        3,
        {"descr": "mm", "descr_alt": "", "symbol": "mm"},
        {"variables": [2, 1]},
    ) == ("I3;S2:mm;S0:;S2:mm;M2:1,2;")


GOLDEN = {
    "hcore.station": "97d1f424e4f5515a",
    "hcore.gpoint": "17933a974fb64166",
    "hcore.gentity": "2524d291a42220ae",
    "hcore.unitofmeasurement": "b0ac938985212629",
    "hcore.gentityevent": "748d0915179404e9",
}


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_served_rows_hash_alike_in_sql_and_python(label):
    graph()
    model = apps.get_model(label)
    sql = dict(range_hashes(model, 0, MAX_KEY))
    python = {pk: format_checksum(h) for pk, h, _m in python_hashes(model, 0, MAX_KEY)}
    assert sql == python
    total = format_checksum(sum(int(h, 16) for h in sql.values()))
    assert total == GOLDEN[label]
    ((part, count, checksum, first, last),) = range_checksums(model, 0, MAX_KEY, 1)
    assert (part, count, checksum) == (0, len(sql), total)
    assert (first, last) == (min(sql), max(sql))
    # Asked for by key, with a cursor: the same hashes, the later changes flagged.
    keys = sorted(sql)
    moment = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert range_hashes(model, 0, 0, pks=keys, after=moment) == [[pk, sql[pk], 1] for pk in keys]


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_a_replica_hashes_as_its_remote(label):
    """The same graph replicated (other local keys, original_id the remote's): the
    replica's hashes, in SQL and in Python, are the remote's golden ones."""
    database = Database.objects.create(name="r", hostname="r.example.org")
    graph(original_db=database, shift=100)
    rows = LocalRows(database, apps.get_model(label))
    sql = rows.hashes(0, MAX_KEY)
    python = {pk: format_checksum(h) for pk, h in rows.python_hashes(0, MAX_KEY)}
    assert sql == python
    assert format_checksum(sum(int(h, 16) for h in sql.values())) == GOLDEN[label]
    # A key edited by hand to point at an object of another origin never matches.
    if label == "hcore.station":
        other = m.Organization.objects.create(name="local")
        m.Station.objects.filter(pk=106).update(owner=other)
        assert rows.hashes(0, MAX_KEY) != sql
        assert rows.python_hashes(0, MAX_KEY) != sql


@pytest.mark.parametrize("label", sorted(GOLDEN))
def test_the_sqlite_paths_give_the_same_checksums(label):
    """On SQLite both sides hash in Python. A real SQLite database cannot hold this test's
    PostgreSQL rows, so the vendor is faked: the Python branches then read the same rows
    through the ORM, and must give what the SQL gave."""
    from unittest import mock

    model = apps.get_model(label)
    graph()
    database = Database.objects.create(name="r", hostname="r.example.org")
    graph(original_db=database, shift=100)
    rows = LocalRows(database, model)
    sql = (range_checksums(model, 0, 1000, 4), rows.checksums(0, 1000, 4))
    sql_hashes = (range_hashes(model, 0, 1000), rows.hashes(pks=[1, 6, 9]))
    with mock.patch.object(connection, "vendor", "sqlite"):
        python = (range_checksums(model, 0, 1000, 4), rows.checksums(0, 1000, 4))
        python_hashes_ = (range_hashes(model, 0, 1000), rows.hashes(pks=[1, 6, 9]))
    assert python == sql and python_hashes_ == sql_hashes
    # The served side's parts (of the first graph: keys below 100) and the replica's
    # (of its copy) agree, part by part.
    served = range_checksums(model, 0, 99, 4)
    assert {p[0]: tuple(p[1:]) for p in served} == rows.checksums(0, 99, 4)
