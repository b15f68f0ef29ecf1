"""Time-series records and files: the API's endpoints, the sync against a real remote
over HTTP, generate_sample_data's records and the admin's overview."""

import datetime as dt
import hashlib
import io
import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import F
from django.urls import reverse

from api import records as api_records
from dbsync.engine.errors import PayloadError
from dbsync.engine.files import sync_files
from dbsync.engine.records import RecordsError, sync_records
from dbsync.engine.remote import RemoteClient
from dbsync.engine.result import FILES_LABEL, RECORDS_LABEL
from dbsync.models import Database, SyncRun
from hcore import models as m
from tests.faultproxy import FaultProxy
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_sync import last_run, register, sync

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt.UTC
BATCH_PATH = "/api/hcore/timeseries/records/"
SUMMARY_PATH = "/api/hcore/timeseries/records-summary/"
LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d(\.\d+)?)?,")


# --- helpers ---------------------------------------------------------------------------------


def sync_data(database, skip=False):
    """The records and the files alone, with their results (per series, per file).
    Without the records guard: series emptied at the remote are part of the mechanics
    tested here (the guard's scenarios are in tests/reliability/test_deletion.py)."""
    client = RemoteClient(database)
    records = sync_records(database, client, skip=skip, max_delete="all")
    return records, sync_files(database, client)


def sync_all(database, skip=False):
    sync(database, "--no-records")
    return sync_data(database, skip=skip)


def remote_records(instance):
    rows = instance.sql('SELECT timeseries_id, "timestamp", value, flags FROM hcore_record')
    return sorted((pk, moment.astimezone(UTC), value, flags) for pk, moment, value, flags in rows)


def local_records(database):
    """The records of the series replicated from ``database``, keyed by remote pk."""
    original = dict(
        m.Timeseries.objects.filter(original_db=database).values_list("pk", "original_id")
    )
    rows = m.Record.objects.filter(timeseries__original_db=database).values_list(
        "timeseries_id", "timestamp", "value", "flags"
    )
    return sorted((original[pk], moment, value, flags) for pk, moment, value, flags in rows)


def assert_same_records(instance, database):
    remote, local = remote_records(instance), local_records(database)
    assert len(local) == len(remote)
    assert local == remote
    # and the series' own metadata too
    assert_same_graph(remote_graph(instance), local_graph(database))


def local_snapshot():
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT timeseries_id, "timestamp", value, flags FROM hcore_record ORDER BY 1, 2'
        )
        records = cursor.fetchall()
        cursor.execute("SELECT * FROM hcore_recordssyncstate ORDER BY 1")
        states = cursor.fetchall()
    return records, states


def append_day(instance, pks=None, start="2026-01-01 00:00+00"):
    """One more day of 10-minute values at the end of the remote's series."""
    where = "" if pks is None else f"WHERE s.id IN ({', '.join(map(str, pks))})"
    instance.sql(
        f'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        f"SELECT s.id, timestamptz '{start}' + n * interval '10 minutes', s.id + n / 10.0, '' "
        f"FROM hcore_timeseries s, generate_series(0, 143) n {where}"
    )


def remote_series(instance):
    return [pk for (pk,) in instance.sql("SELECT id FROM hcore_timeseries ORDER BY id")]


@pytest.fixture
def proxy_of():
    proxies = []

    def make(instance):
        proxy = FaultProxy(instance.url)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def fast_retries(settings):
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.01


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    return settings.MEDIA_ROOT


@pytest.fixture(scope="module")
def static_remote(instance_template):
    """A read-only remote with records (tests that change a remote make their own)."""
    from tests.instance import Instance

    instance = Instance(instance_template, hostname="records.example.org")
    instance.generate(stations=8, seed=11, records_per_series=400)
    add_awkward_records(instance)
    instance.start()
    yield instance
    instance.drop()


def add_awkward_records(instance):
    """Values and flags that a CSV writer or reader could get wrong."""
    pk = remote_series(instance)[0]
    instance.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) VALUES '
        f"({pk}, '2030-01-01 00:00:30+00', 0.1, 'with,comma'), "
        f"({pk}, '2030-01-01 00:01:00.000250+00', -0.0, 'with \"quote\"'), "
        f"({pk}, '2030-01-01 00:02+00', 1e300, E'multi\\nline'), "
        f"({pk}, '2030-01-01 00:03+00', 5e-324, E'tab\\there back\\\\slash'), "
        f"({pk}, '2030-01-01 00:04+00', NULL, 'MISS'), "
        f"({pk}, '2030-01-01 00:05+00', 0, ''), "
        f"({pk}, '2030-01-01 00:06+00', 123456789.123456789, 'Ελληνικά')"
    )


@pytest.fixture
def live_remote(make_instance):
    instance = make_instance(hostname="live-records.example.org")
    instance.generate(stations=6, seed=5, records_per_series=300, files_per_station=1)
    return instance.start()


# --- the API -------------------------------------------------------------------------------


def test_records_csv_is_the_historical_format_with_a_trailer(static_remote):
    pk = remote_series(static_remote)[1]
    response = requests.get(f"{static_remote.url}/api/hcore/timeseries/{pk}/records/", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    lines = response.content.splitlines()
    assert len(lines) == 401
    assert all(LINE.match(line) for line in lines[:-1])
    count, first_checksum = re.fullmatch(
        rb"# end count=(\d+) checksum=([0-9a-f]{16}) utc_offset=(-?\d+)", lines[-1]
    ).group(1, 2)
    assert int(count) == 400
    # dates are in the series' time zone: its last record is 2025-12-31 23:50 UTC
    (offset,) = static_remote.sql(
        "SELECT z.utc_offset FROM hcore_timeseries s JOIN hcore_timezone z "
        "ON z.id = s.time_zone_id WHERE s.id = %s",
        [pk],
    )[0]
    last = dt.datetime(2025, 12, 31, 23, 50) + dt.timedelta(minutes=offset)
    assert lines[-2].startswith(f"{last:%Y-%m-%d %H:%M},".encode())
    assert lines[-1].endswith(f"utc_offset={offset}".encode())
    # missing values are empty, with their flags
    assert any(line.endswith(b",,MISS") for line in lines)
    assert first_checksum


def test_start_and_end_dates_are_inclusive(static_remote):
    pk = remote_series(static_remote)[1]
    url = f"{static_remote.url}/api/hcore/timeseries/{pk}/records/"
    every = requests.get(url, timeout=30).content.splitlines()[:-1]
    first, fifth = every[0].split(b",")[0].decode(), every[4].split(b",")[0].decode()
    some = requests.get(url, params={"start_date": first, "end_date": fifth}, timeout=30)
    assert some.content.splitlines()[:-1] == every[:5]
    assert some.content.splitlines()[-1].startswith(b"# end count=5 ")
    # ISO 8601 with an offset is exact, whatever the series' time zone
    iso = requests.get(
        url, params={"start_date": "2025-12-31T23:40:00+00:00"}, timeout=30
    ).content.splitlines()
    assert iso[:-1] == every[-2:]


def test_checksums_add_up_and_see_a_rewrite(static_remote):
    """The checksum of a series is the sum of those of its parts (mod 2**64)."""
    pk = remote_series(static_remote)[2]
    url = f"{static_remote.url}/api/hcore/timeseries/{pk}/records/"

    def checksum(**params):
        last = requests.get(url, params=params, timeout=30).content.splitlines()[-1]
        return int(re.search(rb"checksum=([0-9a-f]{16})", last).group(1), 16)

    whole = checksum()
    split = "2025-12-31T00:00:00+00:00"
    before = checksum(end_date="2025-12-30T23:59:59.999999+00:00")
    after = checksum(start_date=split)
    assert (before + after) % 2**64 == whole
    summary = requests.get(
        f"{static_remote.url}/api/hcore/timeseries/records-summary/", timeout=30
    ).json()
    entry = next(e for e in summary if e["pk"] == pk)
    assert int(entry["checksum"], 16) == whole
    assert entry["count"] == 400
    assert entry["end"] == "2025-12-31T23:50:00+00:00"


@pytest.mark.django_db
def test_a_rewritten_or_missing_value_changes_the_checksum():
    series = make_local_series(records=3)
    checksums = [summary_checksum(series)]
    record = m.Record.objects.filter(timeseries=series).order_by("timestamp").first()
    for value in (None, 0.0, 1e-9):
        m.Record.objects.filter(pk=record.pk).update(value=value)
        checksums.append(summary_checksum(series))
    m.Record.objects.filter(pk=record.pk).update(flags="RANGE")
    checksums.append(summary_checksum(series))
    assert len(set(checksums)) == len(checksums)


def summary_checksum(series):
    body = b"".join(api_records.stream_summary()).decode()
    (entry,) = [e for e in json.loads(body) if e["pk"] == series.pk]
    return entry["checksum"]


def make_local_series(records=0, utc_offset=120):
    call_command("generate_sample_data", stations=1, timeseries_per_station=1, verbosity=0)
    series = m.Timeseries.objects.order_by("pk").first()
    zone = m.TimeZone.objects.create(code=f"Z{utc_offset}", utc_offset=utc_offset)
    m.Timeseries.objects.filter(pk=series.pk).update(time_zone=zone)
    start = dt.datetime(2020, 1, 1, tzinfo=UTC)
    m.Record.objects.bulk_create(
        m.Record(
            timeseries=series,
            timestamp=start + dt.timedelta(minutes=10 * k),
            value=1.0 + k * 1.5,
            flags="",
        )
        for k in range(records)
    )
    series.refresh_from_db()
    return series


@pytest.mark.django_db
def test_the_kept_summary_follows_every_change():
    """PostgreSQL's triggers keep the summary equal to one computed from the records."""
    series = make_local_series(records=40)
    other = m.Timeseries.objects.create(
        gentity=series.gentity,
        variable=series.variable,
        unit_of_measurement=series.unit_of_measurement,
        time_zone=series.time_zone,
    )
    start = dt.datetime(2020, 1, 1, tzinfo=UTC)

    def assert_kept():
        kept = [
            (pk, count, first, last, int(total))
            for pk, _offset, count, first, last, total in api_records.summary_rows_postgresql()
        ]
        computed = [
            (pk, count, first, last, int(total))
            for pk, count, first, last, total in api_records.computed_summary_rows_postgresql()
        ]
        assert kept == computed

    assert_kept()
    m.Record.objects.bulk_create(
        m.Record(timeseries=other, timestamp=start + dt.timedelta(hours=k), value=k, flags="")
        for k in range(30)
    )
    assert_kept()
    records = m.Record.objects.filter(timeseries=series)
    records.filter(timestamp=start).update(value=None, flags="MISS")
    assert_kept()
    records.filter(timestamp__lt=start + dt.timedelta(minutes=30)).update(
        timestamp=F("timestamp") - dt.timedelta(days=1)
    )  # the first records move: the period changes
    assert_kept()
    records.filter(timestamp__gte=start + dt.timedelta(hours=5)).delete()  # the last ones
    assert_kept()
    m.Record.objects.filter(timeseries=other).delete()
    assert_kept()
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (moment,) = cursor.fetchone()
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no TRUNCATE with checks pending
        cursor.execute("TRUNCATE hcore_record")
    assert_kept()
    assert not m.RecordsSummary.objects.exclude(count=0).exists()
    # emptied, not dropped: listed as changed, so that a syncer empties its copy too
    changed = json.loads(b"".join(api_records.stream_summary(moment)).decode())
    assert {e["pk"] for e in changed} == {series.pk, other.pk}
    assert all(e["count"] == 0 for e in changed)
    m.Record.objects.create(timeseries=series, timestamp=start, value=1.0, flags="")
    series.delete()  # its summary goes with it
    assert_kept()


@pytest.mark.django_db
def test_the_python_writer_writes_what_postgresqls_copy_writes():
    """Servers on SQLite write the CSV in Python: the same lines, record for record."""
    series = make_local_series(records=0, utc_offset=-150)
    moments = [
        dt.datetime(2021, 3, 4, 5, 6, tzinfo=UTC),
        dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC),
        dt.datetime(2021, 3, 4, 5, 6, 7, 89, tzinfo=UTC),
        dt.datetime(2021, 3, 4, 5, 7, tzinfo=UTC),
        dt.datetime(2021, 3, 4, 5, 8, tzinfo=UTC),
        dt.datetime(2021, 3, 4, 5, 9, tzinfo=UTC),
    ]
    values = [0.1, None, -2.5e-7, 1e22, 3.0, 12345.678]
    flags = ["", "MISS", 'a,b "c"', "line\nbreak", "SUSPECT RANGE", ""]
    m.Record.objects.bulk_create(
        m.Record(timeseries=series, timestamp=t, value=v, flags=f)
        for t, v, f in zip(moments, values, flags, strict=True)
    )

    def python_lines():
        out, buffer = bytearray(), bytearray()
        for part in api_records.python_block(series.pk, -150, None, None, buffer):
            out += part
        out += buffer
        return bytes(out).rsplit(b"checksum=", 1)[0]

    def postgresql_lines():
        with api_records.snapshot() as cursor:
            blocks = api_records.postgresql_blocks(
                cursor, [(series.pk, None, None)], {series.pk: -150}, headers=False
            )
            return b"".join(blocks).rsplit(b"checksum=", 1)[0]

    assert python_lines() == postgresql_lines()
    text = postgresql_lines().decode()
    assert text.startswith("2021-03-04 02:36,0.1,\n2021-03-04 02:36:07,,MISS\n")
    assert "2021-03-04 02:36:07.000089,-2.5e-07," in text


def test_batches_and_the_summary(static_remote):
    one, two = remote_series(static_remote)[1:3]
    after = int(dt.datetime(2025, 12, 31, 23, 30, tzinfo=UTC).timestamp()) * 1_000_000
    body = requests.get(
        f"{static_remote.url}{BATCH_PATH}",
        params={"series": f"{one}:{after},{two},999999"},
        timeout=30,
    ).content.decode()
    blocks = body.split("# timeseries ")[1:]
    assert [b.split(" ", 1)[0].strip() for b in blocks] == [str(one), str(two), "999999"]
    assert blocks[0].count("\n") == 4  # header, two records, trailer
    assert "# end count=2 " in blocks[0]
    assert "# end count=400 " in blocks[1]
    assert blocks[2] == "999999 not found\n"
    summary = requests.get(
        f"{static_remote.url}/api/hcore/timeseries/records-summary/", timeout=30
    ).json()
    assert [e["pk"] for e in summary] == remote_series(static_remote)
    assert {e["count"] for e in summary} >= {400}


def summary_of(instance, **params):
    response = requests.get(f"{instance.url}{SUMMARY_PATH}", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_summary_lists_only_the_series_changed_after_a_moment(live_remote):
    manifest = requests.get(f"{live_remote.url}/api/", timeout=30).json()
    assert manifest["records"]["summary_parameters"] == ["changed_after"]
    series = remote_series(live_remote)
    everything = summary_of(live_remote)
    assert [e["pk"] for e in everything] == series
    # every series of this remote has records: all changed since they were made
    assert [e["pk"] for e in summary_of(live_remote, changed_after="2000-01-01T00:00Z")] == series
    moment = manifest["server_time"]
    assert summary_of(live_remote, changed_after=moment) == []
    append_day(live_remote, [series[2]], start="2026-01-01 00:00+00")
    live_remote.sql("DELETE FROM hcore_record WHERE timeseries_id = %s", [series[4]])
    changed = summary_of(live_remote, changed_after=moment)
    assert [e["pk"] for e in changed] == [series[2], series[4]]
    # the same entries as the whole summary's, naive means UTC
    now = {e["pk"]: e for e in summary_of(live_remote)}
    assert changed == [now[series[2]], now[series[4]]]
    assert now[series[4]]["count"] == 0 and now[series[2]]["count"] == 300 + 144
    assert summary_of(live_remote, changed_after=moment.replace("+00:00", "")) == changed


def test_the_manifest_gives_the_clock_of_changed_after(live_remote):
    """``records.database_time`` is the remote database's clock (the one that stamps the
    summary's changes), read during the manifest's request: a change after it is listed
    by ``changed_after`` of that moment."""
    (before,) = live_remote.sql("SELECT now()")[0]
    manifest = requests.get(f"{live_remote.url}/api/", timeout=30).json()
    (after,) = live_remote.sql("SELECT now()")[0]
    moment = manifest["records"]["database_time"]
    assert before <= dt.datetime.fromisoformat(moment) <= after
    assert moment.endswith("+00:00")
    assert summary_of(live_remote, changed_after=moment) == []
    series = remote_series(live_remote)
    append_day(live_remote, [series[1]], start="2026-01-01 00:00+00")
    assert [e["pk"] for e in summary_of(live_remote, changed_after=moment)] == [series[1]]


@pytest.mark.parametrize(
    "path, params, status, words",
    [
        ("/api/hcore/timeseries/{pk}/records/", {"start_date": "yesterday"}, 400, "start_date"),
        ("/api/hcore/timeseries/{pk}/records/", {"end_date": "2025-02-30 10:00"}, 400, "end_date"),
        ("/api/hcore/timeseries/{pk}/records/", {"colour": "blue"}, 400, "colour"),
        (
            "/api/hcore/timeseries/{pk}/records/",
            {"start_date": "2025-02-03", "end_date": "2025-02-01"},
            400,
            "after end_date",
        ),
        ("/api/hcore/timeseries/99999999/records/", {}, 404, "No time series"),
        (BATCH_PATH, {}, 400, "series is required"),
        (BATCH_PATH, {"series": "1:yesterday"}, 400, "neither"),
        (BATCH_PATH, {"series": "1,1"}, 400, "more than once"),
        ("/api/hcore/timeseries/records-summary/", {"x": "1"}, 400, "Unknown"),
        (
            "/api/hcore/timeseries/records-summary/",
            {"changed_after": "last night"},
            400,
            "changed_after must be an ISO 8601 datetime",
        ),
        ("/api/hcore/gentityfile/99999999/content/", {}, 404, "No gentityfile"),
    ],
)
def test_bad_requests_get_json_errors(static_remote, path, params, status, words):
    pk = remote_series(static_remote)[0]
    response = requests.get(static_remote.url + path.format(pk=pk), params=params, timeout=30)
    assert response.status_code == status
    assert words in response.json()["error"]


def test_private_instances_guard_records_and_files(make_instance):
    private = make_instance(hostname="private.example.org", API_AUTH="token", API_TOKENS="t0k")
    private.generate(stations=1, records_per_series=5, files_per_station=1)
    private.start()
    pk = remote_series(private)[0]
    for path in (
        f"/api/hcore/timeseries/{pk}/records/",
        BATCH_PATH + f"?series={pk}",
        "/api/hcore/timeseries/records-summary/",
        "/api/hcore/gentityfile/contents/",
    ):
        refused = requests.get(private.url + path, timeout=30)
        assert refused.status_code == 401 and "error" in refused.json()
        allowed = requests.get(
            private.url + path, headers={"Authorization": "Token t0k"}, timeout=30
        )
        assert allowed.status_code == 200


def test_files_are_listed_and_served_with_their_checksum(live_remote):
    listing = requests.get(f"{live_remote.url}/api/hcore/gentityfile/contents/", timeout=30)
    entries = listing.json()
    assert entries and all(e["sha256"] for e in entries)
    entry = entries[0]
    response = requests.get(
        f"{live_remote.url}/api/hcore/gentityfile/{entry['pk']}/content/", timeout=30
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
    assert response.headers["X-Content-SHA256"] == entry["sha256"]
    assert len(response.content) == entry["size"]


# --- the sync of records ----------------------------------------------------------------------


def test_every_record_arrives(static_remote, media):
    database = register(static_remote)
    records, _files = sync_all(database)
    assert_same_records(static_remote, database)
    assert records.counts[RECORDS_LABEL]["created"] == len(remote_records(static_remote))
    assert all(s["replaced"] for s in records.series.values())
    # a second run asks for nothing but the summary
    before = local_snapshot()[0]
    again, _files = sync_data(database)
    counts = again.counts[RECORDS_LABEL]
    assert counts["fetched"] == 0 and counts["unchanged"] == len(before)
    assert local_snapshot()[0] == before


def test_appends_rewrites_and_deletions_at_the_remote_arrive(live_remote, media):
    database = register(live_remote)
    sync_all(database)
    assert_same_records(live_remote, database)
    series = remote_series(live_remote)

    # appends: only the new records are fetched
    append_day(live_remote)
    records, _ = sync_all(database)
    assert_same_records(live_remote, database)
    assert records.counts[RECORDS_LABEL]["fetched"] == 144 * len(series)
    assert all(s["appended"] == 144 for s in records.series.values())

    # a rewrite of an old value (and another series both rewritten and appended to)
    live_remote.sql(
        'UPDATE hcore_record SET value = -1 WHERE timeseries_id = %s AND "timestamp" = '
        '(SELECT min("timestamp") FROM hcore_record WHERE timeseries_id = %s)',
        [series[0], series[0]],
    )
    live_remote.sql(
        "UPDATE hcore_record SET flags = 'EDITED' WHERE timeseries_id = %s AND \"timestamp\" = "
        "'2025-12-30 00:00+00'",
        [series[1]],
    )
    append_day(live_remote, [series[1]], start="2026-01-02 00:00+00")
    # a deleted old record, and a series emptied
    live_remote.sql(
        'DELETE FROM hcore_record WHERE timeseries_id = %s AND "timestamp" = '
        "'2025-12-30 12:00+00'",
        [series[2]],
    )
    live_remote.sql("DELETE FROM hcore_record WHERE timeseries_id = %s", [series[3]])
    records, _ = sync_all(database)
    assert_same_records(live_remote, database)
    replaced = {pk for pk, s in records.series.items() if s["replaced"] or s["removed"]}
    assert replaced == set(series[:4])
    ((whole,),) = live_remote.sql(
        "SELECT count(*) FROM hcore_record WHERE timeseries_id = ANY(%s)", [series[:3]]
    )
    assert records.counts[RECORDS_LABEL]["fetched"] == whole

    # a series deleted at the remote loses its records here
    local_pk = m.Timeseries.objects.get(original_db=database, original_id=series[4]).pk
    assert m.Record.objects.filter(timeseries_id=local_pk).exists()
    live_remote.shell(
        f"from hcore.models import Timeseries; Timeseries.objects.get(pk={series[4]}).delete()"
    )
    # and a new series with records arrives
    live_remote.shell(
        "from hcore.models import *\n"
        "import datetime as dt\n"
        "t = Timeseries.objects.order_by('pk').last()\n"
        "t.pk = None; t.name = 'Brand new'; t.save()\n"
        "Record.objects.bulk_create(Record(timeseries=t, timestamp=dt.datetime(2024, 1, 1, "
        "tzinfo=dt.UTC) + dt.timedelta(hours=k), value=k) for k in range(50))\n"
    )
    sync_all(database)
    assert_same_records(live_remote, database)
    assert not m.Record.objects.filter(timeseries_id=local_pk).exists()
    assert not m.RecordsSyncState.objects.filter(timeseries_id=local_pk).exists()
    assert (
        m.Timeseries.objects.get(original_db=database, name="Brand new").record_set.count() == 50
    )


def test_appended_records_that_clash_with_local_ones_are_merged(live_remote, media):
    """Records added here by other means, after the last synced one: the remote's win."""
    database = register(live_remote)
    sync_all(database)
    series = remote_series(live_remote)[0]
    local = m.Timeseries.objects.get(original_db=database, original_id=series)
    moment = dt.datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    m.Record.objects.create(timeseries=local, timestamp=moment, value=-5, flags="LOCAL")
    append_day(live_remote)
    records, _ = sync_data(database)
    assert_same_records(live_remote, database)
    assert records.counts[RECORDS_LABEL]["updated"] == 1
    assert records.counts[RECORDS_LABEL]["created"] == 144 * len(remote_series(live_remote)) - 1


def test_two_remotes_and_local_records_stay_apart(static_remote, live_remote, media):
    local = make_local_series(records=20)
    one, two = register(static_remote), register(live_remote)
    sync_all(one)
    sync_all(two)
    assert_same_records(static_remote, one)
    assert_same_records(live_remote, two)
    assert m.Record.objects.filter(timeseries=local).count() == 20


# --- series without records, and the incremental summary -------------------------------------


def requested_series(proxy, since=0):
    """The remote pks of the series whose records were asked for (batches)."""
    asked = []
    for path in proxy.requests[since:]:
        if path.split("?")[0] == BATCH_PATH:
            items = parse_qs(urlsplit(path).query)["series"][0].split(",")
            asked += [int(item.split(":")[0]) for item in items]
    return sorted(asked)


def summary_queries(proxy, since=0):
    """The query of each request of the records summary."""
    return [
        parse_qs(urlsplit(path).query)
        for path in proxy.requests[since:]
        if path.split("?")[0] == SUMMARY_PATH
    ]


def database_times_before_summaries(proxy):
    """The ``records.database_time`` of the manifest served last before each records
    summary that ``proxy`` passes on, in order (filled in as they are served)."""
    served, before = [], []

    def manifest(path, status, headers, body):
        served.append(json.loads(body)["records"].get("database_time"))
        return status, headers, body

    def summary(path, status, headers, body):
        before.append(dt.datetime.fromisoformat(served[-1]))
        return status, headers, body

    proxy.on(lambda path: path.split("?")[0] == "/api/", manifest)
    proxy.on(lambda path: path.split("?")[0] == SUMMARY_PATH, summary)
    return before


def local_states(database):
    """{remote pk: (count, checksum)} of the sync states of ``database``'s series."""
    return {
        remote_pk: (count, checksum)
        for remote_pk, count, checksum in m.RecordsSyncState.objects.filter(
            timeseries__original_db=database
        ).values_list("timeseries__original_id", "count", "checksum")
    }


@pytest.fixture
def sparse_remote(make_instance):
    """A remote most of whose series have no records: one has a day of them."""
    instance = make_instance(hostname="sparse-records.example.org")
    instance.generate(stations=6, seed=7, records_per_series=0)
    append_day(instance, remote_series(instance)[:1])
    return instance.start()


def test_series_without_records_cost_no_job_and_are_not_fetched_again(
    sparse_remote, media, proxy_of
):
    proxy = proxy_of(sparse_remote)
    database_times = database_times_before_summaries(proxy)
    database = register(sparse_remote, port=proxy.port)
    series = remote_series(sparse_remote)
    empty = len(series) - 1
    out, _ = sync(database, "-v", "3")
    assert_same_records(sparse_remote, database)
    assert requested_series(proxy) == series[:1]
    assert f"Records: 1 of {len(series)} time series changed, {empty} empty at both ends" in out
    assert (
        f"Installed 144 records: 0 series appended to, 1 replaced, 0 skipped; "
        f"0 records removed; {empty} series empty at the remote." in out
    )
    # no line a series for the empty ones
    assert re.findall(r"timeseries (\d+): ", out) == [str(series[0])]
    states = local_states(database)
    assert sorted(states) == series
    assert all(states[pk] == (0, "0" * 16) for pk in series[1:])
    database.refresh_from_db()
    # the remote database's clock before its summary, not its Django's (sync_cursor)
    assert database.records_cursor == database_times[-1]
    assert database.sync_cursor is not None

    # the next run asks for the summaries changed since, and for no records
    asked = len(proxy.requests)
    out, _ = sync(database, "-v", "2")
    assert requested_series(proxy, asked) == []
    (query,) = summary_queries(proxy, asked)
    assert "changed_after" in query
    assert f"Records: 0 of {len(series)} time series changed" in out
    assert "Installed 0 records: 0 series appended to, 0 replaced, 0 skipped;" in out
    assert "empty at" not in out
    assert local_states(database) == states


def test_an_incremental_summary_brings_only_the_changed_series(
    live_remote, media, proxy_of, settings
):
    proxy = proxy_of(live_remote)
    database = register(live_remote, port=proxy.port)
    sync(database)
    series = remote_series(live_remote)
    states = local_states(database)
    # a day passes: the remote's summaries changed before the run's overlap window
    live_remote.sql("UPDATE hcore_recordssummary SET changed = changed - interval '1 day'")
    # one series appended to; a local state made wrong, which only a full summary shows;
    # a new series without records
    append_day(live_remote, [series[1]])
    wrong = m.Timeseries.objects.get(original_db=database, original_id=series[2])
    m.RecordsSyncState.objects.filter(timeseries=wrong).update(checksum="0123456789abcdef")
    live_remote.shell(
        "from hcore.models import Timeseries\n"
        "t = Timeseries.objects.order_by('pk').last()\n"
        "t.pk = None; t.name = 'New, empty'; t.save()\n"
    )
    new = remote_series(live_remote)[-1]

    database.refresh_from_db()
    since = database.records_cursor - dt.timedelta(seconds=settings.DBSYNC_OVERLAP_SECONDS)
    asked = len(proxy.requests)
    out, _ = sync(database, "-v", "3")
    (query,) = summary_queries(proxy, asked)
    assert query["changed_after"] == [since.isoformat()]
    # the appended series, and the new one (no state here, not listed: fetched whole)
    assert requested_series(proxy, asked) == [series[1], new]
    assert f"timeseries {series[1]}: append 144 records" in out
    assert f"timeseries {new}: replace 0 records" in out
    assert len(re.findall(r"timeseries (\d+): ", out)) == 2
    after = local_states(database)
    assert after[series[1]][0] == states[series[1]][0] + 144
    assert after[series[2]] == (states[series[2]][0], "0123456789abcdef")  # not listed
    assert after[new] == (0, "0" * 16)
    assert {pk: after[pk] for pk in series if pk not in (series[1], series[2])} == {
        pk: states[pk] for pk in series if pk not in (series[1], series[2])
    }

    # --full asks for every series' summary, and so mends the wrong state
    asked = len(proxy.requests)
    out, _ = sync(database, "--full", "-v", "3")
    assert "changed_after" not in summary_queries(proxy, asked)[-1]
    assert requested_series(proxy, asked) == [series[2]]
    assert local_states(database)[series[2]] == states[series[2]]
    assert_same_records(live_remote, database)


def test_a_remote_that_does_not_offer_changed_after_is_asked_for_everything(
    live_remote, media, proxy_of
):
    """An older remote: its manifest names no summary parameters (and it would refuse
    one); every run asks for the whole summary, and still fetches only what changed."""
    proxy = proxy_of(live_remote)

    def older(path, status, headers, body):
        manifest = json.loads(body)
        del manifest["records"]["summary_parameters"]
        return status, headers, json.dumps(manifest).encode()

    proxy.on(lambda path: path.split("?")[0] == "/api/", older)
    database = register(live_remote, port=proxy.port)
    sync(database)
    series = remote_series(live_remote)
    append_day(live_remote, [series[3]])
    asked = len(proxy.requests)
    sync(database)
    assert summary_queries(proxy, asked) == [{}]
    assert requested_series(proxy, asked) == [series[3]]
    assert_same_records(live_remote, database)


def test_a_remote_that_does_not_send_its_database_time_gets_the_run_cursor(
    live_remote, media, proxy_of
):
    """A remote of an earlier release: no ``records.database_time`` in its manifest. The
    records cursor is the run's (its Django's clock), as it was, and appended records
    still arrive by the incremental summary."""
    proxy = proxy_of(live_remote)

    def earlier(path, status, headers, body):
        manifest = json.loads(body)
        del manifest["records"]["database_time"]
        return status, headers, json.dumps(manifest).encode()

    proxy.on(lambda path: path.split("?")[0] == "/api/", earlier)
    database = register(live_remote, port=proxy.port)
    sync(database)
    database.refresh_from_db()
    assert database.records_cursor == database.sync_cursor is not None
    series = remote_series(live_remote)
    append_day(live_remote, [series[3]])
    asked = len(proxy.requests)
    sync(database)
    assert "changed_after" in summary_queries(proxy, asked)[0]
    assert requested_series(proxy, asked) == [series[3]]
    assert_same_records(live_remote, database)
    database.refresh_from_db()
    assert database.records_cursor == database.sync_cursor


@pytest.mark.parametrize("value", ["yesterday", "2026-12-01T10:00:00", 1765000000])
def test_a_malformed_database_time_stops_the_records_sync_and_changes_nothing(
    appended_remote, value
):
    remote, proxy, database = appended_remote
    database.refresh_from_db()
    cursor, before = database.records_cursor, local_records(database)
    assert cursor is not None

    def malformed(path, status, headers, body):
        manifest = json.loads(body)
        manifest["records"]["database_time"] = value
        return status, headers, json.dumps(manifest).encode()

    proxy.on(lambda path: path.split("?")[0] == "/api/", malformed)
    with pytest.raises(PayloadError, match=r"records\.database_time is not an ISO 8601 time"):
        sync_data(database)
    assert local_records(database) == before
    database.refresh_from_db()
    assert database.records_cursor == cursor


def test_a_run_with_a_skipped_series_keeps_the_records_cursor(appended_remote):
    remote, proxy, database = appended_remote
    sync(database)  # through the command: the records cursor is set
    database.refresh_from_db()
    cursor = database.records_cursor
    assert cursor is not None
    bad = remote_series(remote)[1]
    append_day(remote, [bad], start="2026-01-02 00:00+00")
    on_batches(proxy, lambda body: break_line(body, bad, 3, MALFORMED["non-numeric value"][0])[0])
    sync(database, "--skip")
    database.refresh_from_db()
    assert database.records_cursor == cursor < database.sync_cursor
    # the next run (the remote answering well) lists that series again
    proxy.rules.clear()
    database_times = database_times_before_summaries(proxy)
    asked = len(proxy.requests)
    sync(database)
    assert requested_series(proxy, asked) == [bad]
    assert_same_records(remote, database)
    database.refresh_from_db()
    assert database.records_cursor == database_times[-1] > cursor


# --- malformed records: a clear error, nothing installed (or, with skip, that series out) ---


def break_line(body, series_pk, index, transform):
    """``body`` with the ``index``-th record of a series' block changed; and the line's
    number in the body."""
    lines = body.split(b"\n")
    start = next(
        k for k, line in enumerate(lines) if line.startswith(f"# timeseries {series_pk} ".encode())
    )
    target = start + 1 + index
    lines[target] = transform(lines[target])
    return b"\n".join(lines), target + 1


def on_batches(proxy, transform):
    def action(path, status, headers, body):
        return status, headers, transform(body)

    proxy.on(lambda path: path.split("?")[0] == BATCH_PATH, action)


MALFORMED = {
    "bad date": (lambda line: b"2025-13-45 25:61" + line[16:], r"bad date '2025-13-45 25:61'"),
    "four fields": (lambda line: line.split(b",")[0] + b",12,5.3,", r"expected 3 fields"),
    "non-numeric value": (
        lambda line: line.split(b",")[0] + b",twelve,",
        r"value 'twelve' is not a number",
    ),
    "dates out of order": (
        lambda line: b"2025-01-01 00:00" + line[16:],
        r"is not after the previous record",
    ),
}


@pytest.fixture
def appended_remote(live_remote, media, proxy_of, fast_retries):
    """A remote synced once through a proxy, then given a day more of records."""
    proxy = proxy_of(live_remote)
    database = register(live_remote, port=proxy.port)
    sync_all(database)
    append_day(live_remote)
    return live_remote, proxy, database


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_stop_the_run_and_change_nothing(appended_remote, case):
    remote, proxy, database = appended_remote
    transform, message = MALFORMED[case]
    series = remote_series(remote)[2]
    lineno = {}

    def breaking(body):
        body, lineno["n"] = break_line(body, series, 5, transform)
        return body

    on_batches(proxy, breaking)
    before = local_snapshot()
    with pytest.raises(RecordsError) as caught:
        sync_data(database)
    text = str(caught.value)
    assert text.startswith(f"{database}: records of hcore.timeseries(pk={series}), ")
    assert f"line {lineno['n']}:" in text
    assert re.search(message, text)
    assert local_snapshot() == before


def test_a_truncated_response_stops_the_run_and_changes_nothing(appended_remote):
    remote, proxy, database = appended_remote
    on_batches(proxy, lambda body: body[: len(body) // 2])
    before = local_snapshot()
    asked = len(proxy.requests)
    with pytest.raises(RecordsError, match=r"hcore.timeseries\(pk=\d+\).*truncated.*line \d+"):
        sync_data(database)
    assert local_snapshot() == before
    # it was asked for again before giving up
    assert sum(1 for path in proxy.requests[asked:] if path.startswith(BATCH_PATH)) == 2


def test_with_skip_a_malformed_series_is_skipped_and_reported(appended_remote):
    remote, proxy, database = appended_remote
    bad, good = remote_series(remote)[2], remote_series(remote)[3]
    bad_local = m.Timeseries.objects.get(original_db=database, original_id=bad).pk
    before = list(m.Record.objects.filter(timeseries_id=bad_local).values_list("timestamp"))
    on_batches(proxy, lambda body: break_line(body, bad, 7, MALFORMED["bad date"][0])[0])
    records, _ = sync_data(database, skip=True)
    assert records.series[bad]["skipped"] and records.series[good]["appended"] == 144
    (problem,) = records.problems
    assert problem.pk == bad and "line" in problem.message and "bad date" in problem.message
    assert (
        list(m.Record.objects.filter(timeseries_id=bad_local).values_list("timestamp")) == before
    )
    # everything else arrived; the next run (the remote now answering well) mends the rest
    proxy.rules.clear()
    again, _ = sync_data(database)
    assert list(again.series) == [bad]
    assert_same_records(remote, database)


def test_a_rewrite_seen_only_by_its_checksum_fetches_the_series_whole(appended_remote):
    """Appended to and rewritten: the counts add up, the checksums do not."""
    remote, proxy, database = appended_remote
    series = remote_series(remote)[0]
    remote.sql(
        "UPDATE hcore_record SET value = value + 1 WHERE timeseries_id = %s AND "
        "\"timestamp\" < '2025-12-30'",
        [series],
    )
    records, _ = sync_data(database)
    assert records.series[series]["replaced"] and not records.series[series]["appended"]
    assert_same_records(remote, database)


# --- through hcore_remotesyncdb (and so the Celery install, which shares its path) -----------


def test_the_command_syncs_objects_records_and_files(live_remote, media):
    database = register(live_remote)
    out, _ = sync(database, "--no-records")
    assert not m.Record.objects.exists() and "Records:" not in out
    out, _ = sync(database, "-v", "2")
    assert_same_records(live_remote, database)
    assert local_files(database) == remote_files(live_remote)
    total = len(remote_records(live_remote))
    assert f"Records: {total} added, 0 changed, 0 removed, 0 unchanged." in out
    assert "hcore.record" in out and "hcore.gentityfile.content" in out  # the table
    run = last_run(database)
    assert run.model_counts["hcore.record"]["created"] == total
    files = run.model_counts["hcore.gentityfile.content"]
    assert files["fetched"] == len(remote_files(live_remote))
    assert run.totals()["created"] == 0  # of the objects: records and files apart
    append_day(live_remote)
    out, _ = sync(database)
    assert f"Records: {144 * len(remote_series(live_remote))} added" in out
    assert_same_records(live_remote, database)


def test_a_dry_run_changes_no_records(live_remote, media):
    database = register(live_remote)
    sync(database)
    append_day(live_remote)
    before = local_snapshot()
    out, _ = sync(database, "--dry-run")
    assert "Would install" in out and "hcore.record" in out
    assert local_snapshot() == before


def test_the_command_stops_on_malformed_records_or_skips_them(appended_remote):
    remote, proxy, database = appended_remote
    bad = remote_series(remote)[1]
    on_batches(proxy, lambda body: break_line(body, bad, 3, MALFORMED["non-numeric value"][0])[0])
    before = local_snapshot()
    with pytest.raises(CommandError) as caught:
        sync(database)
    message = str(caught.value)
    assert f"records of hcore.timeseries(pk={bad}), line " in message
    assert "the objects of this run were installed" in message
    assert local_snapshot() == before
    assert last_run(database).status == SyncRun.FAILED
    out, err = sync(database, "--skip")
    assert f"hcore.timeseries(pk={bad}): its records, line " in err
    assert "value 'twelve' is not a number" in err
    assert "1 series skipped" in out
    assert last_run(database).status == SyncRun.SUCCEEDED


# --- files ------------------------------------------------------------------------------------


def remote_files(instance):
    """{remote pk: bytes} of the remote's GentityFile objects that have a file."""
    listing = requests.get(f"{instance.url}/api/hcore/gentityfile/contents/", timeout=30).json()
    files = {}
    for entry in listing:
        if entry["name"]:
            files[entry["pk"]] = (instance.var_dir / "media" / entry["name"]).read_bytes()
    return files


def local_files(database):
    from django.core.files.storage import default_storage

    files = {}
    for remote_pk, name in m.GentityFile.objects.filter(original_db=database).values_list(
        "original_id", "content"
    ):
        assert name.startswith(f"gentityfile/{database.pk}/{remote_pk}/")
        with default_storage.open(name, "rb") as fh:
            files[remote_pk] = fh.read()
    return files


def stored_names(media, database):
    folder = media / "gentityfile" / str(database.pk)
    return sorted(str(p.relative_to(media)) for p in folder.rglob("*") if p.is_file())


def test_new_changed_and_deleted_files(live_remote, media):
    database = register(live_remote)
    _, files = sync_all(database)
    assert files.counts[FILES_LABEL]["created"] == len(remote_files(live_remote)) > 2
    assert local_files(database) == remote_files(live_remote)

    # nothing new: nothing fetched
    _, files = sync_all(database)
    counts = files.counts[FILES_LABEL]
    assert counts["fetched"] == 0 and counts["unchanged"] == len(remote_files(live_remote))

    # a file rewritten in place, one replaced by another, one object deleted, one added
    pks = sorted(remote_files(live_remote))
    (name,) = live_remote.sql("SELECT content FROM hcore_gentityfile WHERE id = %s", [pks[0]])[0]
    (live_remote.var_dir / "media" / name).write_bytes(b"rewritten in place\n")
    live_remote.shell(
        "from django.core.files.base import ContentFile\n"
        "from hcore.models import GentityFile\n"
        f"f = GentityFile.objects.get(pk={pks[1]})\n"
        "f.content.save('another (final).txt', ContentFile(b'another file'))\n"
        f"GentityFile.objects.get(pk={pks[2]}).delete()\n"
        "g = GentityFile.objects.first(); g.pk = None; g.content.save('photo.jpg', "
        "ContentFile(b'\\xff\\xd8 new photo'))\n"
    )
    old_names = stored_names(media, database)
    _, files = sync_all(database)
    assert (files.counts[FILES_LABEL]["created"], files.counts[FILES_LABEL]["updated"]) == (1, 2)
    assert local_files(database) == remote_files(live_remote)
    new_names = stored_names(media, database)
    assert len(new_names) == len(remote_files(live_remote))
    assert not any(f"/{pks[2]}/" in name for name in new_names)  # the deleted object's file
    assert len(set(old_names) - set(new_names)) == 3  # two earlier versions, one deleted


def test_local_file_names_stay_in_their_folder():
    from dbsync.engine.files import local_name

    database = Database(pk=3, name="x", hostname="x")
    sha = "ab" * 32
    for hostile in ("../../etc/passwd", "/etc/passwd", "..", "a/../../b", "C:\\evil\\x.exe"):
        name = local_name(database, 7, {"name": hostile, "sha256": sha})
        assert name.startswith("gentityfile/3/7/abababababab/")
        assert ".." not in name and name.count("/") == 4
    long = local_name(database, 7, {"name": "x" * 300 + ".jpeg", "sha256": sha})
    assert len(long) <= 100 and long.endswith(".jpeg")


def test_an_oversized_file_is_refused_with_a_clear_message(live_remote, media, settings):
    settings.DBSYNC_MAX_FILE_BYTES = 100
    database = register(live_remote)
    _, files = sync_all(database)
    sizes = {
        e["pk"]: e["size"]
        for e in requests.get(
            f"{live_remote.url}/api/hcore/gentityfile/contents/", timeout=30
        ).json()
    }
    big = [pk for pk, size in sizes.items() if size > 100]
    assert big and files.counts[FILES_LABEL]["skipped"] == len(big)
    for problem in files.problems:
        assert problem.pk in big
        assert "over the limit of 100 (DBSYNC_MAX_FILE_BYTES)" in problem.message
    assert (
        not m.GentityFile.objects.filter(original_db=database, original_id__in=big)
        .exclude(content="")
        .exists()
    )


# --- generate_sample_data --records-per-series -------------------------------------------------


@pytest.mark.django_db
def test_sample_records_are_ten_minute_values_up_to_a_fixed_moment(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    out = io.StringIO()
    call_command("generate_sample_data", stations=3, records_per_series=500, stdout=out)
    series = m.Timeseries.objects.count()
    assert m.Record.objects.count() == 500 * series
    assert f"Record {500 * series}" in out.getvalue()
    first = m.Timeseries.objects.order_by("pk").first()
    moments = list(
        m.Record.objects.filter(timeseries=first)
        .order_by("timestamp")
        .values_list("timestamp", flat=True)
    )
    assert moments[-1] == dt.datetime(2025, 12, 31, 23, 50, tzinfo=UTC)
    assert {b - a for a, b in zip(moments, moments[1:], strict=False)} == {
        dt.timedelta(minutes=10)
    }
    assert m.Record.objects.filter(value__isnull=True, flags="MISS").exists()


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_records(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path

    def records():
        return list(
            m.Record.objects.order_by("timeseries", "timestamp").values_list(
                "timestamp", "value", "flags"
            )
        )

    call_command("generate_sample_data", stations=2, records_per_series=50, seed=4, verbosity=0)
    first = records()
    m.Record.objects.all().delete()
    m.Gentity.objects.all().delete()
    call_command("generate_sample_data", stations=2, records_per_series=50, seed=4, verbosity=0)
    assert records() == first


# --- the admin ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_timeseries_page_shows_count_period_and_a_plot(admin_client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    series = make_local_series(records=600)
    day = dt.datetime(2020, 1, 2, tzinfo=UTC)
    m.Record.objects.filter(
        timeseries=series, timestamp__gte=day, timestamp__lt=day + dt.timedelta(days=1)
    ).update(value=None)
    url = reverse("admin:hcore_timeseries_change", args=(series.pk,))
    page = " ".join(admin_client.get(url).content.decode().split())
    assert "600 records" in page
    assert "from 2020-01-01 02:00 to 2020-01-05 05:50 (UTC+02:00" in page
    start = page.index('<svg xmlns="http://www.w3.org/2000/svg" class="timeseries-chart"')
    svg = page[start : page.index("</svg>", start)]
    assert svg.count('<path class="stretch"') == 2  # the missing day splits the line in two
    # a series without records, and the add page
    empty = m.Timeseries.objects.create(
        gentity=series.gentity,
        variable=series.variable,
        unit_of_measurement=series.unit_of_measurement,
        time_zone=series.time_zone,
    )
    assert (
        "No records."
        in admin_client.get(
            reverse("admin:hcore_timeseries_change", args=(empty.pk,))
        ).content.decode()
    )
    assert admin_client.get(reverse("admin:hcore_timeseries_add")).status_code == 200


def test_the_page_of_a_replicated_series_shows_its_records(
    static_remote, media, admin_client, settings
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    database = register(static_remote)
    sync_all(database)
    series = m.Timeseries.objects.filter(original_db=database).order_by("pk")[1]
    page = admin_client.get(reverse("admin:hcore_timeseries_change", args=(series.pk,)))
    text = page.content.decode()
    assert "400 records" in text and '<path class="stretch"' in text
    assert "installed by the sync" in text


# --- resuming from the remote's own dumpdata ----------------------------------------------------


def test_resume_from_a_dumpdata_with_records(static_remote, tmp_path, media):
    database = register(static_remote, name="airgapped")
    (tmp_path / "everything.json").write_text(static_remote.manage("dumpdata", "hcore").stdout)
    sync(database, "--resume", "-w", str(tmp_path))
    assert_same_graph(remote_graph(static_remote), local_graph(database))


def test_a_summary_keeps_series_without_records_compactly(tmp_path):
    """Most series of some remotes have no records: the summary holds them as runs of
    keys per UTC offset, and answers for every series exactly as a dict would."""
    from dbsync.engine.records import Entry, read_summary

    zero = "0" * 16
    lines = []
    expected = {}
    for pk in range(1, 200_001):
        offset = 120 if pk % 50_000 == 7 else 0
        if pk % 10_000 == 3:
            entry = Entry(
                5,
                dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
                "00000000000000ab",
                offset,
            )
            start, end = '"2025-01-01T00:00:00+00:00"', '"2025-01-02T00:00:00+00:00"'
            line = f'{{"pk": {pk}, "count": 5, "start": {start}, "end": {end}, '
            line += f'"checksum": "00000000000000ab", "utc_offset": {offset}}}'
        else:
            entry = Entry(0, None, None, zero, offset)
            line = f'{{"pk": {pk}, "count": 0, "start": null, "end": null, '
            line += f'"checksum": "{zero}", "utc_offset": {offset}}}'
        expected[pk] = entry
        lines.append(line)
    path = tmp_path / "summary.json"
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    summary = read_summary("remote.example.org", path)
    assert len(summary) == len(expected) and sorted(summary) == sorted(expected)
    assert all(summary.get(pk) == entry for pk, entry in expected.items())
    assert summary.get(0) is None and summary.get(200_001) is None
    assert len(summary.entries) == 20  # only the series with records are dict entries
    assert sum(len(pks.starts) for _e, pks in summary.empties.values()) < 100

    path.write_text("[\n" + ",\n".join([lines[0], lines[1], lines[0]]) + "\n]\n")
    with pytest.raises(PayloadError, match="remote.example.org.*listed twice"):
        read_summary("remote.example.org", path)


@pytest.mark.django_db
def test_the_summary_is_read_a_page_at_a_time_and_misses_nothing(monkeypatch):
    """The server reads the summary by pages of series (a query's whole result sits in
    psycopg's memory): with pages of 2, every series is listed once, in order, whether
    all are asked for or only those changed after a time."""
    series = make_local_series(records=5)
    for _ in range(6):
        m.Timeseries.objects.create(
            gentity=series.gentity,
            variable=series.variable,
            unit_of_measurement=series.unit_of_measurement,
            time_zone=series.time_zone,
        )
    whole = list(api_records.summary_rows_postgresql())
    since = list(api_records.summary_rows_postgresql(dt.datetime(2000, 1, 1, tzinfo=UTC)))
    monkeypatch.setattr(api_records, "SUMMARY_PAGE_ROWS", 2)
    assert len(whole) == 7 and [row[0] for row in whole] == sorted(row[0] for row in whole)
    assert list(api_records.summary_rows_postgresql()) == whole
    assert since
    assert list(api_records.summary_rows_postgresql(dt.datetime(2000, 1, 1, tzinfo=UTC))) == since
