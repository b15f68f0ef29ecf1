"""The openmeteo formats of the records endpoint (``api/record_formats.py``): ``fmt=hts``,
``hts2`` and ``csv``, read back by the maintained parsers (``htimeseries`` and pandas)
from a real instance over HTTP; errors, headers and authentication in-process.
"""

import csv
import datetime as dt
import io
import math
import re
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import requests
from htimeseries import HTimeseries

from api.record_formats import single_line
from hcore import models as m
from tests.api_helpers import create_sample_data

UTC = dt.UTC
RECORDS = "/api/hcore/timeseries/{pk}/records/"
NASTY_NAME = (
    "Line one\nline two\r\nline three\rend \"quoted\" 'single' a,b; Ελληνικά "
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u202eevil\u202c tab\there nel\x85x ls\u2028ps\u2029 end"
)
NASTY = NASTY_NAME + " " + "x" * 5000  # the remarks: no length limit
WEST, EAST = -210, 345  # Newfoundland (-03:30) and Nepal (+05:45)


# --- the remote and what it holds ------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(instance_template):
    """A read-only remote whose sample series cover every case: missing values, flags,
    offsets east and west of UTC, no time step, seconds and microseconds, nasty text."""
    from tests.instance import Instance

    instance = Instance(instance_template, hostname="formats.example.org")
    instance.generate(stations=4, seed=7, records_per_series=150)
    pks = series_pks(instance)
    assert len(pks) >= 6, pks
    add_cases(instance, pks)
    instance.start()
    yield instance
    instance.drop()


def series_pks(instance):
    return [pk for (pk,) in instance.sql("SELECT id FROM hcore_timeseries ORDER BY id")]


def add_cases(instance, pks):
    west, east = (
        instance.sql(
            "INSERT INTO hcore_timezone (code, utc_offset, last_modified) "
            "VALUES (%s, %s, now()) RETURNING id",
            [code, offset],
        )[0][0]
        for code, offset in (("NST", WEST), ("NPT", EAST))
    )
    first, second, third, fourth, fifth = pks[:5]
    instance.sql("UPDATE hcore_timeseries SET time_zone_id = %s WHERE id = %s", [west, first])
    instance.sql("UPDATE hcore_timeseries SET time_zone_id = %s WHERE id = %s", [east, second])
    instance.sql(
        "UPDATE hcore_timeseries SET time_step_id = NULL, nominal_offset_minutes = NULL, "
        "nominal_offset_months = NULL, actual_offset_minutes = NULL, "
        "actual_offset_months = NULL WHERE id = %s",
        [third],
    )
    instance.sql("UPDATE hcore_timeseries SET precision = NULL WHERE id = %s", [fourth])
    instance.sql("UPDATE hcore_timeseries SET precision = -1 WHERE id = %s", [fifth])
    # Flags that a CSV writer or reader could get wrong, and times with seconds.
    instance.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) VALUES '
        "(%(s)s, '2030-01-01 00:00:30+00', 0.15, 'with,comma'), "
        "(%(s)s, '2030-01-01 00:01:00.000250+00', -0.0, 'with \"quote\"'), "
        "(%(s)s, '2030-01-01 00:02+00', 1e300, E'multi\\nline\\rflags'), "
        "(%(s)s, '2030-01-01 00:04+00', NULL, 'MISS'), "
        "(%(s)s, '2030-01-01 00:05+00', 'NaN', 'NAN'), "
        "(%(s)s, '2030-01-01 00:06+00', 123456789.123456789, 'Ελληνικά RANGE')",
        {"s": first},
    )
    instance.sql(
        "UPDATE hcore_record SET flags = 'SUSPECT' WHERE timeseries_id = %s "
        "AND value IS NOT NULL AND \"timestamp\" < '2025-12-31 12:00+00'",
        [second],
    )
    # A series of nasty text everywhere its header shows some.
    instance.sql(
        "UPDATE hcore_timeseries SET name = %s, remarks = %s WHERE id = %s",
        [NASTY_NAME, NASTY, first],
    )
    instance.sql(
        "UPDATE hcore_gentity SET name = %s WHERE id = "
        "(SELECT gentity_id FROM hcore_timeseries WHERE id = %s)",
        [NASTY_NAME, first],
    )
    instance.sql("UPDATE hcore_timezone SET code = %s WHERE id = %s", ["N(S)T\nx", west])


def stored_records(instance, pk):
    """(UTC timestamp, value, flags) of the series, as stored."""
    return instance.sql(
        'SELECT "timestamp", value, flags FROM hcore_record WHERE timeseries_id = %s ORDER BY 1',
        [pk],
    )


def stored_series(instance, pk):
    (row,) = instance.sql(
        "SELECT s.name, s.precision, z.utc_offset, st.length_minutes, st.length_months, "
        "u.symbol, v.descr, g.name, s.remarks, p.abscissa, p.ordinate, p.srid, p.altitude "
        "FROM hcore_timeseries s JOIN hcore_timezone z ON z.id = s.time_zone_id "
        "LEFT JOIN hcore_timestep st ON st.id = s.time_step_id "
        "JOIN hcore_unitofmeasurement u ON u.id = s.unit_of_measurement_id "
        "JOIN hcore_variable v ON v.id = s.variable_id "
        "JOIN hcore_gentity g ON g.id = s.gentity_id "
        "LEFT JOIN hcore_gpoint p ON p.gentity_ptr_id = s.gentity_id WHERE s.id = %s",
        [pk],
    )
    keys = "name precision utc_offset minutes months unit variable station remarks x y srid z"
    return dict(zip(keys.split(), row, strict=True))


def fetch(instance, pk, fmt, **params):
    response = requests.get(
        instance.url + RECORDS.format(pk=pk), params={"fmt": fmt, **params}, timeout=60
    )
    assert response.status_code == 200, response.text[:500]
    return response


def tolerance(precision):
    """How far a value written at ``precision`` may be from the stored one."""
    if precision is None:
        return 5e-7  # htimeseries' six decimals
    return 0.5 * 10.0 ** (-precision) * (1 + 1e-9)


def assert_same_records(frame, stored, precision, utc_offset):
    """``frame`` (date index, value and flags columns) holds ``stored``."""
    assert len(frame) == len(stored)
    zone = dt.timezone(dt.timedelta(minutes=utc_offset))
    dates = [moment.to_pydatetime() for moment in frame.index]
    if dates:
        if dates[0].tzinfo is None:  # pandas' read_csv: naive, in the series' zone
            dates = [moment.replace(tzinfo=zone) for moment in dates]
        assert dates[0].utcoffset() == dt.timedelta(minutes=utc_offset)
    assert dates == [moment for moment, _value, _flags in stored]
    for got, (moment, value, flags) in zip(frame.itertuples(), stored, strict=True):
        if value is None or math.isnan(value):
            assert math.isnan(got.value), moment
        elif math.isinf(value):
            assert got.value == value
        else:
            assert abs(got.value - value) <= tolerance(precision) * max(1, abs(value) * 1e-15), (
                moment,
                got.value,
                value,
            )
        assert (got.flags if isinstance(got.flags, str) else "") == single_line(flags), moment


def read_hts(text):
    return HTimeseries(io.StringIO(text))


def read_csv(text):
    return pd.read_csv(
        io.StringIO(text),
        header=None,
        names=["date", "value", "flags"],
        index_col="date",
        parse_dates=["date"],
        dtype={"flags": str},
        keep_default_na=False,
        na_values={"value": [""]},
    )


# --- every sample series, back through the maintained parsers -------------------------------


@pytest.mark.parametrize("fmt", ["hts", "hts2"])
def test_htimeseries_reads_every_series_back(remote, fmt):
    pks = series_pks(remote)
    for pk in pks:
        expected = stored_series(remote, pk)
        response = fetch(remote, pk, fmt)
        assert response.headers["Content-Type"] == "text/vnd.openmeteo.timeseries; charset=utf-8"
        text = response.content.decode()
        series = read_hts(text)
        stored = stored_records(remote, pk)
        assert_same_records(series.data, stored, expected["precision"], expected["utc_offset"])
        assert series.unit == single_line(expected["unit"])
        assert series.variable == single_line(expected["variable"])
        assert series.title == single_line(expected["name"]).strip()
        assert getattr(series, "precision", None) == expected["precision"]
        first_line = (expected["station"].splitlines() or [""])[0]
        assert series.comment.split("\n")[0] == single_line(first_line).strip()
        assert f"\r\nCount={len(stored)}\r\n" in text
        minutes, months = expected["minutes"], expected["months"]
        if minutes:
            assert series.time_step == f"{minutes}min"
        elif months:
            assert series.time_step == f"{months}M"
        else:
            assert not hasattr(series, "time_step")
        if fmt == "hts2":
            assert text.startswith("Version=2\r\n")
            assert "Location=" not in text
        elif expected["srid"] is not None and expected["x"] is not None:
            assert series.location["abscissa"] == pytest.approx(expected["x"], abs=1e-6)
            assert series.location["ordinate"] == pytest.approx(expected["y"], abs=1e-6)
            assert series.location["srid"] == expected["srid"]


def test_pandas_reads_every_series_back_as_csv(remote):
    for pk in series_pks(remote):
        expected = stored_series(remote, pk)
        response = fetch(remote, pk, "csv")
        assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
        text = response.content.decode()
        assert "# end" not in text
        frame = read_csv(text)
        stored = stored_records(remote, pk)
        assert_same_records(frame, stored, expected["precision"], expected["utc_offset"])
        # htimeseries reads it too (its text format), given the series' time zone.
        zone = dt.timezone(dt.timedelta(minutes=expected["utc_offset"]))
        plain = HTimeseries(io.StringIO(text), default_tzinfo=zone)
        assert_same_records(plain.data, stored, expected["precision"], expected["utc_offset"])


def test_the_cases_are_in_the_data(remote):
    """The round trips above cover what they claim to (a guard on the fixture)."""
    pks = series_pks(remote)
    series = [stored_series(remote, pk) for pk in pks]
    offsets = {s["utc_offset"] for s in series}
    assert WEST in offsets and EAST in offsets
    assert any(s["minutes"] is None for s in series)
    assert any(s["precision"] is None for s in series)
    records = [r for pk in pks for r in stored_records(remote, pk)]
    assert any(value is None for _t, value, _f in records)
    assert any(flags == "SUSPECT" for _t, _v, flags in records)
    assert any(moment.microsecond for moment, _v, _f in records)


def test_dates_take_one_form_a_response(remote):
    """A response with a record at seconds writes every date with seconds (pandas and
    htimeseries refuse a mix); one without, minutes only."""
    first = series_pks(remote)[0]
    lines = fetch(remote, first, "csv").text.splitlines()
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6},", line) for line in lines)
    lines = fetch(remote, first, "csv", end_date="2025-12-31 23:59").text.splitlines()
    assert lines and all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d,", line) for line in lines)


def test_start_and_end_dates_apply(remote):
    pk = series_pks(remote)[2]
    expected = stored_series(remote, pk)
    zone = dt.timezone(dt.timedelta(minutes=expected["utc_offset"]))
    stored = stored_records(remote, pk)
    start, end = stored[10][0].astimezone(zone), stored[20][0].astimezone(zone)
    text = fetch(
        remote, pk, "hts", start_date=f"{start:%Y-%m-%d %H:%M}", end_date=f"{end:%Y-%m-%d %H:%M}"
    ).text
    assert "\r\nCount=11\r\n" in text
    assert_same_records(
        read_hts(text).data, stored[10:21], expected["precision"], expected["utc_offset"]
    )


# --- the single-line rule -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hts", "hts2"])
def test_nasty_text_keeps_every_header_on_its_line(remote, fmt):
    pk = series_pks(remote)[0]
    text = fetch(remote, pk, fmt).content.decode()
    header, _blank, _records = text.partition("\r\n\r\n")
    for line in header.split("\r\n"):
        assert re.match(r"^[A-Z][a-z_]*=", line), line[:80]
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), line[:80]
    series = read_hts(text)
    assert series.title == single_line(NASTY_NAME)
    assert "\u202eevil\u202c" in series.title and "Ελληνικά" in series.title
    # The comment: the station's name, a blank line, the remarks, a line per line.
    station = [single_line(line).strip() for line in NASTY_NAME.splitlines()]
    remarks = [single_line(line).strip() for line in NASTY.splitlines()]
    assert series.comment.split("\n") == [*station, "", *remarks]
    assert "N(S)T" not in header
    expected_zone = "NST x (UTC-0330)" if fmt == "hts2" else "-0330"
    assert f"\r\nTimezone={expected_zone}\r\n" in header
    assert series.data.index.tz.utcoffset(None) == dt.timedelta(minutes=WEST)


def test_single_line_replaces_every_line_break_and_control():
    assert single_line("a\nb\rc\r\nd\te\x00f\x85g\u2028h\u2029i\x7fj") == "a b c  d e f g h i j"
    assert single_line('‮עברית, "q" Ελληνικά') == '‮עברית, "q" Ελληνικά'


def test_the_file_name_is_safe_whatever_the_name(remote):
    pk = series_pks(remote)[0]
    response = fetch(remote, pk, "hts")
    disposition = response.headers["Content-Disposition"]
    ascii_name = re.search(r'filename="([^"]*)"', disposition)[1]
    assert re.fullmatch(rf"{pk}-[A-Za-z0-9-]+\.hts", ascii_name)
    full = unquote(re.search(r"filename\*=UTF-8''(\S+)$", disposition)[1])
    assert full.startswith(f"{pk}-Line-one-line-two") and full.endswith(".hts")
    assert "/" not in full and "\n" not in full and "\u202e" not in full and "Ελληνικά" in full


# --- errors, headers and rules, in-process ---------------------------------------------------


@pytest.fixture
def sample(db):
    data = create_sample_data()
    series = m.Timeseries.objects.order_by("pk").first()
    series.remarks = "Tipping bucket"
    series.save()
    m.Record.objects.bulk_create(
        m.Record(
            timeseries=series,
            timestamp=dt.datetime(2025, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=10 * k),
            value=None if k == 2 else k / 3,
            flags="MISS" if k == 2 else "",
        )
        for k in range(5)
    )
    return {**data, "series": series}


@pytest.mark.django_db
def test_an_unknown_format_is_a_400_naming_the_known_ones(client, sample):
    response = client.get(RECORDS.format(pk=sample["series"].pk), {"fmt": "xlsx"})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert "fmt must be one of hts, hts2, csv" in error and "'xlsx'" in error


@pytest.mark.django_db
def test_the_default_format_keeps_its_trailer(client, sample):
    response = client.get(RECORDS.format(pk=sample["series"].pk))
    text = b"".join(response.streaming_content).decode()
    assert text.splitlines()[-1].startswith("# end count=5 checksum=")
    assert "Content-Disposition" not in response


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [
        ("hts", "text/vnd.openmeteo.timeseries; charset=utf-8", "hts"),
        ("HTS2", "text/vnd.openmeteo.timeseries; charset=utf-8", "hts"),
        ("csv", "text/csv; charset=utf-8", "csv"),
    ],
)
def test_head_and_get_give_the_type_and_file_name(client, sample, fmt, content_type, extension):
    pk = sample["series"].pk
    for response in (
        client.head(RECORDS.format(pk=pk), {"fmt": fmt}),
        client.get(RECORDS.format(pk=pk), {"fmt": fmt}),
    ):
        assert response.status_code == 200
        assert response["Content-Type"] == content_type
        assert response["Content-Disposition"] == (
            f'inline; filename="{pk}-Rain-10-minutes.{extension}"; '
            f"filename*=UTF-8''{pk}-Rain-10-minutes.{extension}"
        )


@pytest.mark.django_db
def test_the_hts_file_is_what_htimeseries_writes(client, sample):
    """Byte for byte the header and records that htimeseries 8 writes for the same
    series (the body of a version 5 file)."""
    series = sample["series"]
    text = b"".join(
        client.get(RECORDS.format(pk=series.pk), {"fmt": "hts"}).streaming_content
    ).decode()
    ours = read_hts(text)
    out = io.StringIO()
    ours.write(out, format=HTimeseries.FILE, version=5)
    assert text == out.getvalue()
    assert text.startswith("Unit=mm\r\nCount=5\r\nTitle=Rain, 10 minutes\r\n")
    assert "\r\nTime_step=10min\r\n" in text and "\r\nTimezone=+0200\r\n" in text
    assert "\r\nLocation=23.718000 37.972000 4326\r\nAltitude=107.00\r\n" in text
    assert text.endswith(
        "\r\n2025-01-01 02:20,,MISS\r\n2025-01-01 02:30,1.0,\r\n" + "2025-01-01 02:40,1.3,\r\n"
    )


@pytest.mark.django_db
def test_an_empty_series_is_a_header_alone(client, sample):
    series = m.Timeseries.objects.order_by("pk").last()
    text = b"".join(
        client.get(RECORDS.format(pk=series.pk), {"fmt": "hts2"}).streaming_content
    ).decode()
    assert text.startswith("Version=2\r\n") and text.endswith("\r\n\r\n")
    assert read_hts(text).data.empty
    body = b"".join(client.get(RECORDS.format(pk=series.pk), {"fmt": "csv"}).streaming_content)
    assert body == b""


@pytest.mark.django_db
def test_an_offset_no_reader_accepts_is_a_clear_409(client, sample):
    series = sample["series"]
    m.TimeZone.objects.filter(pk=series.time_zone_id).update(utc_offset=1500)
    response = client.get(RECORDS.format(pk=series.pk), {"fmt": "hts"})
    assert response.status_code == 409
    assert "time zone offset of 1500 minutes" in response.json()["error"]


@pytest.mark.django_db
def test_stored_values_never_make_a_500(client, sample):
    """Extreme precisions and values, a name of nothing but symbols: every format answers."""
    series = sample["series"]
    m.Timeseries.objects.filter(pk=series.pk).update(precision=32767, name="../\"';")
    m.Record.objects.filter(timeseries=series).update(value=1e308)
    for precision in (32767, -32768):
        m.Timeseries.objects.filter(pk=series.pk).update(precision=precision)
        for fmt in ("hts", "hts2", "csv"):
            response = client.get(RECORDS.format(pk=series.pk), {"fmt": fmt})
            assert response.status_code == 200
            b"".join(response.streaming_content)
            assert f'filename="{series.pk}.' in response["Content-Disposition"]


@pytest.mark.django_db
def test_a_private_instance_guards_every_format(client, sample, settings):
    settings.API_AUTH = "token"
    settings.API_TOKENS = ["t0k"]
    url = RECORDS.format(pk=sample["series"].pk)
    for fmt in ("hts", "hts2", "csv"):
        assert client.get(url, {"fmt": fmt}).status_code == 401
        allowed = client.get(url, {"fmt": fmt}, HTTP_AUTHORIZATION="Token t0k")
        assert allowed.status_code == 200
        assert np.isnan(read_csv_or_hts(b"".join(allowed.streaming_content).decode(), fmt))


def read_csv_or_hts(text, fmt):
    """The third record's value (a missing one) as the format's reader sees it."""
    frame = read_csv(text) if fmt == "csv" else read_hts(text).data
    return frame["value"].iloc[2]


# --- the embedded default: SQLite computes the dates' form in Python ------------------------


@pytest.fixture(scope="module")
def sqlite_remote(tmp_path_factory):
    """bin/demo's kind of remote, on its own SQLite file, with a record at microseconds."""
    from tests.test_embedded_default import Local, SqliteRemote

    folder = tmp_path_factory.mktemp("formats-migrated")
    Local(folder).manage("migrate", "-v0")
    remote = SqliteRemote(
        tmp_path_factory.mktemp("formats-sqlite"), "sqlite.example.org", folder / "db.sqlite3"
    )
    remote.generate(stations=2, seed=3, records_per_series=60)
    remote.shell(
        "import datetime as dt; from hcore.models import Record, Timeseries; "
        "Record.objects.create(timeseries=Timeseries.objects.order_by('pk').first(), "
        "timestamp=dt.datetime(2030, 1, 1, 0, 0, 30, 250, tzinfo=dt.UTC), value=1.25, "
        "flags='a,b')"
    )
    remote.start()
    yield remote
    remote.drop()


def syncer_records(instance, pk):
    """The records as the default (syncer's) format serves them: exact values, UTC."""
    response = requests.get(instance.url + RECORDS.format(pk=pk), timeout=60)
    *lines, trailer = response.text.splitlines()
    offset = int(re.search(r"utc_offset=(-?\d+)", trailer)[1])
    zone = dt.timezone(dt.timedelta(minutes=offset))
    return offset, [
        (
            dt.datetime.fromisoformat(date).replace(tzinfo=zone),
            float(value) if value else None,
            flags,
        )
        for date, value, flags in csv.reader(lines)
    ]


def test_on_sqlite_every_format_reads_back(sqlite_remote):
    keys = requests.get(f"{sqlite_remote.url}/api/hcore/timeseries/keys/", timeout=30)
    pks = keys.json()
    assert pks
    for pk in pks:
        offset, stored = syncer_records(sqlite_remote, pk)
        hts = read_hts(fetch(sqlite_remote, pk, "hts").text)
        precision = getattr(hts, "precision", None)
        assert_same_records(hts.data, stored, precision, offset)
        assert_same_records(
            read_hts(fetch(sqlite_remote, pk, "hts2").text).data, stored, precision, offset
        )
        assert_same_records(
            read_csv(fetch(sqlite_remote, pk, "csv").text), stored, precision, offset
        )
    assert ",1.2" in fetch(sqlite_remote, pks[0], "csv").text.splitlines()[-1]
