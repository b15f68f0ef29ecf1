"""A sync from a legacy remote: one that serves only the 2010 layout
(``dbsync/engine/legacy.py``), against a real second instance over HTTP.

The remote is a real instance (tests/instance.py) loaded with the 2010 fixture and
the sample data, behind a tiny front (``LegacyFront``, a ``FaultProxy``) that passes
the 2010 URLs through unchanged and answers 404 to everything else, the manifest
included, as a server of 2010 would: the instance itself serves both layouts, and
only a front can take today's away from it without changing its code. The front
also records every path asked for, so that the tests see the sync ask for nothing else.
"""

import io
import json
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from dbsync.engine.dumps import iter_objects
from dbsync.engine.errors import PayloadError
from dbsync.engine.legacy import to_line_layout
from dbsync.models import Database, SyncRun
from dbsync.runs.tasks import sync_remote
from hcore.models import Gentity, Record, Station, Timeseries, Variable
from protocol.legacy import LEGACY_MODELS, TSDATA
from tests.faultproxy import FaultProxy
from tests.graph import assert_same_graph, local_dump, local_graph, remote_graph
from tests.instance import Instance
from tests.test_tasks import cluster, storage_root, wait_for_run, workers  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime"),
]

FIXTURE_2010 = Path(__file__).parent / "fixtures" / "enhydris-2010-dbsync-testdata.json"
LEGACY_PATH = re.compile(
    r"^/api/(?:(?:" + "|".join(LEGACY_MODELS) + r")/(?:[0-9]+/)?|" + TSDATA + r"/[0-9]+/)$"
)


def as_in_2010(path, status, headers, body):
    """A listing as a server of 2010 wrote it: Django's serializer, all on one line,
    with the fields that today's served set leaves out (the remote's bookkeeping, the
    keys to user accounts, and WaterBasin.water_division, which today's models lack)."""
    objects = json.loads(body)
    for obj in objects:
        fields = obj["fields"]
        if "last_modified" in fields:
            fields.update(original_id=None, original_db=None)
        if obj["model"] == "hcore.waterbasin":
            fields["water_division"] = 2
        if obj["model"] == "hcore.station":
            fields.update(creator=1, maintainers=[1])
    return status, headers, json.dumps(objects).encode()


def not_found(path, status, headers, body):
    return 404, {"Content-Type": "application/json"}, b'{"error": "Not found"}'


class LegacyFront(FaultProxy):
    """Only the 2010 layout of the instance behind it (see the module's docstring)."""

    def __init__(self, upstream):
        super().__init__(upstream)
        self.on(lambda path: not LEGACY_PATH.match(path), not_found)


def start_2010_instance(instance):
    """The 2010 fixture and the sample data (every served model, user data too)."""
    instance.shell(
        "from django.core.management import call_command\n"
        f"call_command('loaddata', '--ignorenonexistent', {str(FIXTURE_2010)!r}, verbosity=0)\n"
        "from tests.api_helpers import create_sample_data; create_sample_data()\n"
        "import datetime as dt\n"
        "from hcore.models import Record, Timeseries\n"
        "start = dt.datetime(2010, 5, 1, tzinfo=dt.UTC)\n"
        "for n, series in enumerate(Timeseries.objects.order_by('pk')[:2]):\n"
        "    Record.objects.bulk_create(Record(timeseries=series, timestamp=start + "
        "dt.timedelta(minutes=10 * k), value=None if k == 3 else k / 4, flags='RANGE' * (k % 2))"
        " for k in range(5 + 20 * n))\n"
    )
    return instance.start()


@pytest.fixture(scope="module")
def remote_2010(instance_template):
    """A read-only remote (tests that change the remote make their own)."""
    instance = start_2010_instance(
        Instance(instance_template, hostname="enhydris-2010.example.org")
    )
    yield instance
    instance.drop()


@pytest.fixture
def legacy_remote(remote_2010):
    front = LegacyFront(remote_2010.url)
    yield remote_2010, front
    front.close()


@pytest.fixture
def changing_remote(make_instance):
    instance = start_2010_instance(make_instance(hostname="enhydris-2010.example.org"))
    front = LegacyFront(instance.url)
    yield instance, front
    front.close()


def remote_records(instance):
    """(remote series pk, UTC time, value, flags) of every record at the remote."""
    return sorted(instance.sql("SELECT timeseries_id, timestamp, value, flags FROM hcore_record"))


def local_records(database):
    return sorted(
        Record.objects.filter(timeseries__original_db=database).values_list(
            "timeseries__original_id", "timestamp", "value", "flags"
        )
    )


def register(instance, front):
    return Database.objects.create(
        name="legacy",
        hostname=instance.hostname,
        ip_address="127.0.0.1",
        port=front.port,
        api_layout=Database.LAYOUT_LEGACY,
    )


def sync(database, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


def test_full_sync_from_a_legacy_remote(legacy_remote):
    instance, front = legacy_remote
    database = register(instance, front)
    out, _ = sync(database)
    assert_same_graph(remote_graph(instance), local_graph(database))
    assert "Successfully installed" in out
    # It asked for the 2010 URLs only: one full listing per model, then the records of
    # each series, nothing else.
    series = [pk for (pk,) in instance.sql("SELECT id FROM hcore_timeseries ORDER BY id")]
    assert sorted(front.requests) == sorted(
        [f"/api/{name}/" for name in LEGACY_MODELS] + [f"/api/tsdata/{pk}/" for pk in series]
    )
    assert len(remote_records(instance)) == 30
    assert local_records(database) == remote_records(instance)
    assert Station.objects.filter(original_db=database, original_id=4).exists()
    assert not Station.objects.exclude(creator=None).exists()  # user data never comes
    run = last_run(database)
    assert run.status == SyncRun.SUCCEEDED and run.full
    assert "Installed 30 records: 0 series appended to, 2 replaced" in out
    assert "serves the 2010 layout, which has no files: files not synced" in out
    database.refresh_from_db()
    # No clock to read at the remote: no cursor, and the next run is full again.
    assert database.last_sync is not None and database.sync_cursor is None


def test_listings_as_a_server_of_2010_wrote_them(legacy_remote):
    instance, front = legacy_remote
    front.on(lambda path: path.count("/") == 3 and TSDATA not in path, as_in_2010)
    database = register(instance, front)
    sync(database)
    assert_same_graph(remote_graph(instance), local_graph(database))
    assert not Station.objects.exclude(creator=None).exists()


@pytest.mark.parametrize(
    "body, error",
    [
        (b'{"error": "maintenance"}', "must be a JSON list of objects"),
        (b"", "must be a JSON list of objects"),
        (b'[{"model": "hcore.eventtype", "pk": 1, "fields": {}}, ', "malformed JSON"),
        (b'[{"model": "hcore.eventtype", "pk": 1, "fields": {}}] []', "trailing garbage$"),
        (b'[{"model": "hcore.eventtype", "pk": 1, "fields": {"descr": "x' + b"y" * 3000 + b'"}}]',
         "more than 2000 bytes"),
    ],
)  # fmt: skip
def test_a_listing_that_is_not_one_is_refused_as_it_came(tmp_path, settings, body, error):
    settings.DBSYNC_MAX_OBJECT_BYTES = 2000
    path = tmp_path / "hcore.eventtype.json"
    path.write_bytes(body)
    with pytest.raises(PayloadError, match=error):
        to_line_layout(path)
    assert path.read_bytes() == body and list(tmp_path.iterdir()) == [path]


def test_any_layout_of_a_list_is_rewritten_one_object_a_line(tmp_path):
    objects = [{"model": "hcore.eventtype", "pk": k, "fields": {"descr": f"Ε{k}", "x": 1.5}}
               for k in (1, 2)]  # fmt: skip
    path = tmp_path / "hcore.eventtype.json"
    for text in [json.dumps(objects), json.dumps(objects, indent=4), "\n [ ]"]:
        path.write_text(text)
        to_line_layout(path)
        expected = objects if text.strip() != "[ ]" else []
        assert list(iter_objects(path, whole=False)) == expected


def test_a_change_and_a_deletion_at_the_remote_arrive(changing_remote):
    instance, front = changing_remote
    database = register(instance, front)
    sync(database)
    instance.shell(
        "from hcore.models import *\n"
        "s = Station.objects.get(pk=4); s.name = 'Renamed in 2010'; s.save()\n"
        "Variable.objects.filter(descr='Snow depth').delete()\n"
        "Variable.objects.create(descr='New variable')\n"
        "import datetime as dt\n"
        "first, second = Timeseries.objects.order_by('pk')[:2]\n"
        "Record.objects.filter(timeseries=first, value=0.5).update(value=-7.25, flags='EDITED')\n"
        "Record.objects.create(timeseries=second, timestamp=dt.datetime(2011, 1, 1, "
        "tzinfo=dt.UTC), value=99)\n"
    )
    out, _ = sync(database)
    assert_same_graph(remote_graph(instance), local_graph(database))
    assert local_records(database) == remote_records(instance)
    records = last_run(database).model_counts["hcore.record"]
    # The two changed series replaced whole (5 + 26 records, 5 + 25 before).
    assert (records["created"], records["deleted"]) == (31, 30)
    counts = last_run(database).model_counts
    assert counts["hcore.gentity"]["updated"] == 1
    assert counts["hcore.variable"]["created"] == 1
    assert Gentity.objects.get(original_db=database, original_id=4).name == "Renamed in 2010"
    assert Variable.objects.filter(original_db=database, descr="New variable").exists()
    assert not Variable.objects.filter(descr="Snow depth").exists()


def test_an_empty_listing_is_refused_by_the_delete_guard(legacy_remote):
    """Every listing answers ``[]`` (a wiped or broken 2010 server): the guard refuses
    the run, and nothing here changes. The front empties the answers: the real remote
    would have to lose every row for it, which the front gives in one line."""
    instance, front = legacy_remote
    database = register(instance, front)
    sync(database)
    before = local_dump()
    front.on(lambda path: True, lambda path, status, headers, body: (200, headers, b"[\n]\n"))
    with pytest.raises(
        CommandError,
        match=r"refused: the sync would delete more than allowed .*: hcore\.\w+: (\d+) of \1",
    ):
        sync(database)
    assert local_dump() == before
    assert last_run(database).status == SyncRun.FAILED


def test_a_legacy_remote_is_never_asked_for_the_manifest_and_a_current_one_never_guessed(
    legacy_remote,
):
    """Registered current, the same remote fails on its manifest's 404: the layout is
    what was registered, never guessed from an answer."""
    instance, front = legacy_remote
    database = register(instance, front)
    database.api_layout = Database.LAYOUT_CURRENT
    database.save()
    with pytest.raises(CommandError, match="HTTP 404"):
        sync(database)
    assert front.requests == ["/api/"]
    assert not Station.objects.filter(original_db=database).exists()


def test_addremote_registers_a_legacy_remote():
    out = io.StringIO()
    call_command(
        "dbsync_addremote", "--name", "old", "--hostname", "old.example.org", "--legacy",
        stdout=out,
    )  # fmt: skip
    assert Database.objects.get(name="old").api_layout == Database.LAYOUT_LEGACY
    assert "Registered legacy (2010 layout) remote old" in out.getvalue()
    call_command("dbsync_addremote", "--name", "old", "--current", stdout=io.StringIO())
    assert Database.objects.get(name="old").api_layout == Database.LAYOUT_CURRENT
    call_command("dbsync_addremote", "--name", "new", "--hostname", "n.example.org",
                 stdout=io.StringIO())  # fmt: skip
    assert Database.objects.get(name="new").api_layout == Database.LAYOUT_CURRENT
    with pytest.raises(CommandError, match="not allowed with argument"):
        call_command("dbsync_addremote", "--name", "x", "--legacy", "--current")


def test_the_runs_dumps_are_json_lists(legacy_remote, tmp_path):
    """--fetch-only leaves the listings as fetched, in the work folder, with its
    fetch record (no cursor in it); --resume installs them."""
    instance, front = legacy_remote
    database = register(instance, front)
    sync(database, "--fetch-only", "--work-dir", str(tmp_path))
    record = json.loads((tmp_path / "fetch.json").read_text())
    assert record["full"] is True and record["server_time"] is None
    assert json.loads((tmp_path / "hcore.station.json").read_text())[0]["pk"] == 4
    assert not Timeseries.objects.exists()
    sync(database, "--resume", "--work-dir", str(tmp_path))
    assert_same_graph(remote_graph(instance), local_graph(database))


def test_the_admin_form_shows_and_sets_the_layout(admin_client):
    database = Database.objects.create(name="old", hostname="old.example.org")
    page = admin_client.get(f"/admin/dbsync/database/{database.pk}/change/").content.decode()
    assert 'name="api_layout"' in page
    assert '<option value="current" selected>' in page
    assert "legacy 2010 (/api/&lt;ModelName&gt;/ only)" in page
    Database.objects.create(
        name="older", hostname="older.example.org", api_layout=Database.LAYOUT_LEGACY
    )
    listing = admin_client.get("/admin/dbsync/database/", {"api_layout__exact": "legacy"})
    assert listing.status_code == 200
    assert b">older<" in listing.content and b">old<" not in listing.content


@pytest.mark.usefixtures("workers")
def test_celery_syncs_a_legacy_remote_through_the_same_tasks(legacy_remote):
    """The Celery pipeline (real workers, tests/celery_helpers.py): a fetch task per
    listing, then the install and the records, as for a current remote."""
    instance, front = legacy_remote
    database = register(instance, front)
    sync_remote.delay(database.pk).get(timeout=60)
    run = wait_for_run(database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert_same_graph(remote_graph(instance), local_graph(database))
    assert local_records(database) == remote_records(instance)
    assert run.full and run.remote_time is None and run.fetch_plan["server_time"] is None
    fetched = run.fetch_plan["fetched"]
    assert sorted(m["model"] for m in fetched) == sorted(LEGACY_MODELS.values())
    assert {m["kind"] for m in fetched} == {"dump"}


def test_malformed_records_are_refused_naming_the_series_and_line(legacy_remote):
    """The front rewrites a date of one series' records (a real remote's database
    cannot hold a bad date): the run fails naming the series and the line of its
    body; the objects are installed and say so, no record is. With --skip, that
    series is left out and the others arrive."""
    instance, front = legacy_remote
    (first,) = instance.sql("SELECT min(id) FROM hcore_timeseries")[0]

    def bad_date(path, status, headers, body):
        lines = body.split(b"\n")
        lines[1] = b"2010-13-45 00:00" + lines[1][16:]
        return status, headers, b"\n".join(lines)

    front.on(lambda path: path == f"/api/tsdata/{first}/", bad_date)
    database = register(instance, front)
    with pytest.raises(CommandError) as failure:
        sync(database)
    message = str(failure.value)
    assert f"records of hcore.timeseries(pk={first}), line 2: bad date '2010-13-45" in message
    assert "the objects of this run were installed" in message
    assert Station.objects.filter(original_db=database).exists()
    assert not Record.objects.exists()
    out, _ = sync(database, "--skip")
    assert "1 skipped" in out
    expected = [r for r in remote_records(instance) if r[0] != first]
    assert expected and local_records(database) == expected


def test_a_listing_over_the_size_cap_is_refused_and_nothing_changes(legacy_remote, settings):
    instance, front = legacy_remote
    database = register(instance, front)
    settings.DBSYNC_MAX_RESPONSE_BYTES = 2000
    before = local_dump()
    with pytest.raises(CommandError, match=r"GET /api/\w+/: response larger than the cap"):
        sync(database)
    assert local_dump() == before


def test_a_series_cleared_at_a_legacy_remote_is_refused_by_the_records_guard(changing_remote):
    """The records guard holds for a legacy remote too: a series that loses all its
    records is refused, naming it, and nothing changes; allowed, the next run clears it."""
    instance, front = changing_remote
    database = register(instance, front)
    sync(database)
    before = local_records(database)
    (second,) = instance.sql("SELECT max(timeseries_id) FROM hcore_record")[0]
    instance.shell(
        f"from hcore.models import Record; Record.objects.filter(timeseries={second}).delete()"
    )
    with pytest.raises(CommandError) as refused:
        sync(database)
    assert f"hcore.timeseries(pk={second}; here " in str(refused.value)
    assert "-> 0 records" in str(refused.value)
    assert local_records(database) == before
    sync(database, "--max-records-delete=all")
    assert local_records(database) == remote_records(instance)
    assert not any(pk == second for pk, *_ in local_records(database))
