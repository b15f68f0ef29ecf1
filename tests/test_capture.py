"""Change capture (hcore.capture, api.changes, dbsync.engine.capture): every kind of
change at a real remote over HTTP arrives with the next incremental run, with no
overlap window; an unchanged remote costs the manifest only; a remote whose identity
changed, or that went back in time, is refused and nothing changes."""

import io

import psycopg
import pytest
import requests
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Sum

from dbsync.engine.planner import root_of
from dbsync.models import Database
from hcore.models import Record, Station
from protocol.formats import ZERO_CHECKSUM
from tests.graph import assert_same_graph, local_dump, local_graph, remote_graph
from tests.instance import PG_BASE
from tests.test_sync import last_run, register

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_overlap")]


@pytest.fixture
def live(make_instance):
    instance = make_instance(hostname="capture.example.org")
    instance.generate(stations=12, seed=5)
    return instance.start()


def sync(database, *args):
    out = io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", "-v", "2", *args, stdout=out)
    return out.getvalue()


def incremental(database, *args):
    """An incremental run, which must be one on the capture's cursor."""
    out = sync(database, *args)
    assert "objects written by transaction" in out, out
    assert last_run(database).full is False
    return out


def first_pk(instance, table, column="id"):
    return instance.sql(f"SELECT min({column}) FROM {table}")[0][0]


def test_every_kind_of_change_arrives_with_the_next_incremental_run(live):
    database = register(live)
    sync(database)
    database.refresh_from_db()
    assert database.capture_cursor is not None and database.remote_identity

    changes = {
        "QuerySet.update()": lambda: live.shell(
            "from hcore.models import Station\n"
            "Station.objects.filter(pk__in=list(Station.objects.order_by('pk')"
            ".values_list('pk', flat=True)[:5])).update(altitude=777.0)\n"
        ),
        "bulk_update": lambda: live.shell(
            "from hcore.models import Timeseries\n"
            "ts = list(Timeseries.objects.order_by('pk')[:3])\n"
            "for t in ts: t.remarks = 'bulk updated'\n"
            "Timeseries.objects.bulk_update(ts, ['remarks'])\n"
        ),
        "raw UPDATE": lambda: live.sql(
            "UPDATE hcore_gentity SET name = 'Raw rename' WHERE id = %s",
            [first_pk(live, "hcore_station", "gpoint_ptr_id")],
        ),
        "raw INSERT": lambda: live.sql(
            "INSERT INTO hcore_eventtype (descr, descr_alt, last_modified) "
            "VALUES ('Inserted by SQL', '', now() - interval '2 days')"
        ),
        "raw DELETE": lambda: live.sql(
            "DELETE FROM hcore_gentityevent WHERE id = %s",
            [first_pk(live, "hcore_gentityevent")],
        ),
        "TRUNCATE": lambda: live.sql("TRUNCATE hcore_gentityaltcode"),
        "M2M through table INSERT": lambda: live.sql(
            "INSERT INTO hcore_unitofmeasurement_variables (unitofmeasurement_id, variable_id) "
            "SELECT u.id, v.id FROM hcore_unitofmeasurement u, hcore_variable v "
            "WHERE NOT EXISTS (SELECT 1 FROM hcore_unitofmeasurement_variables x "
            "WHERE x.unitofmeasurement_id = u.id AND x.variable_id = v.id) LIMIT 2"
        ),
        # A link moved from one owner to another: both owners change.
        "M2M through table UPDATE": lambda: live.sql(
            "UPDATE hcore_unitofmeasurement_variables SET unitofmeasurement_id = "
            "(SELECT max(id) FROM hcore_unitofmeasurement) WHERE id = ("
            "SELECT min(x.id) FROM hcore_unitofmeasurement_variables x "
            "WHERE x.unitofmeasurement_id <> (SELECT max(id) FROM hcore_unitofmeasurement) "
            "AND NOT EXISTS (SELECT 1 FROM hcore_unitofmeasurement_variables y "
            "WHERE y.variable_id = x.variable_id "
            "AND y.unitofmeasurement_id = (SELECT max(id) FROM hcore_unitofmeasurement)))"
        ),
        "M2M through table DELETE": lambda: live.sql(
            "DELETE FROM hcore_unitofmeasurement_variables WHERE id = %s",
            [first_pk(live, "hcore_unitofmeasurement_variables")],
        ),
        "application clock an hour behind": lambda: live.sql(
            "UPDATE hcore_gentity SET name = 'Saved by a slow clock', "
            "last_modified = now() - interval '1 hour' WHERE id = %s",
            [first_pk(live, "hcore_gpoint", "gentity_ptr_id")],
        ),
    }
    for what, change in changes.items():
        before = remote_graph(live)
        change()
        assert remote_graph(live) != before, f"{what}: the remote did not change"
        # A TRUNCATE deletes them all: more than the delete guard allows by default.
        incremental(database, *(["--max-delete=all"] if what == "TRUNCATE" else []))
        try:
            assert_same_graph(remote_graph(live), local_graph(database))
        except AssertionError as exc:
            raise AssertionError(f"after {what}: {exc}") from exc
    assert Station.objects.filter(original_db=database, altitude=777.0).count() == 5


def test_a_transaction_held_open_across_a_sync_arrives_with_the_next(live):
    database = register(live)
    sync(database)
    station = first_pk(live, "hcore_station", "gpoint_ptr_id")
    with psycopg.connect(f"{PG_BASE}/{live.db_name}") as held:
        # Written (and stamped with now(), its transaction's start) before the run
        # below reads the remote, committed after it.
        held.execute(
            "UPDATE hcore_gentity SET name = 'Committed late', last_modified = now() "
            "WHERE id = %s",
            [station],
        )
        incremental(database)
        assert not Station.objects.filter(name="Committed late").exists()
        held.commit()
    incremental(database)
    assert Station.objects.filter(original_db=database, name="Committed late").count() == 1
    assert_same_graph(remote_graph(live), local_graph(database))


def test_an_unchanged_remote_costs_the_manifest_only(live):
    database = register(live)
    sync(database)
    before = local_dump()
    out = incremental(database)
    assert "Fetch phase: 0 dumps, 0 bytes" in out, out
    assert "Nothing changed at the remote" in out
    assert (
        local_dump().split('"model": "dbsync.database"')[0]
        == before.split('"model": "dbsync.database"')[0]
    )
    # One change: that model's dump (and nothing of the others) is fetched.
    live.sql(
        "UPDATE hcore_timezone SET code = 'XYZ' WHERE id = %s", [first_pk(live, "hcore_timezone")]
    )
    out = incremental(database)
    assert "Fetch phase: 1 dumps" in out, out
    assert_same_graph(remote_graph(live), local_graph(database))


def test_keys_the_replica_lacks_are_fetched(live):
    """A replicated row deleted here by hand comes back at the next run: the counts of
    the manifest differ from ours, and the remote's keys listing says which."""
    from hcore.models import GentityEvent

    database = register(live)
    sync(database)
    # An object nothing refers to (what refers to a deleted object is changed here too,
    # which only a comparison of the contents, not of the keys, can find).
    gone = GentityEvent.objects.filter(original_db=database).order_by("pk").first()
    gone.delete()
    out = incremental(database)
    assert "Fetching 1 hcore.gentityevent object(s) the remote has and we lack" in out, out
    assert_same_graph(remote_graph(live), local_graph(database))


def test_a_rebuilt_remote_is_refused_and_nothing_changes(live, make_instance):
    database = register(live)
    sync(database)
    rebuilt = make_instance(hostname=live.hostname)
    rebuilt.generate(stations=8, seed=99)
    rebuilt.start()
    live.stop()
    Database.objects.filter(pk=database.pk).update(port=rebuilt.port)
    database.refresh_from_db()
    before = local_dump()
    with pytest.raises(CommandError, match="not the one synced before"):
        sync(database)
    assert local_dump() == before
    # Accepted: the old copy goes (under the delete guard), the new one comes whole.
    with pytest.raises(CommandError, match="more than allowed"):
        sync(database, "--accept-new-identity")
    assert local_dump() == before
    sync(database, "--accept-new-identity", "--max-delete=all")
    assert_same_graph(remote_graph(rebuilt), local_graph(database))
    incremental(database)


def translated(graph, mapping):
    """``graph`` (keys of an intermediate aggregate) with every key translated through
    ``mapping`` (root table -> {its pk: the pk at the first remote})."""

    def key(model, pk):
        return mapping[root_of(model)._meta.db_table][pk]

    result = {}
    for label, objects in graph.items():
        model = apps.get_model(label)
        for pk, fields in objects.items():
            out = {}
            for name, value in fields.items():
                field = model._meta.get_field(name)
                if field.many_to_many:
                    value = sorted(key(field.related_model, v) for v in value)
                elif field.is_relation and value is not None:
                    value = key(field.related_model, value)
                out[name] = value
            result.setdefault(label, {})[key(model, pk)] = out
    return result


def test_chained_aggregation_carries_a_change_through_incremental_runs(live, make_instance):
    """Remote A -> aggregate B (an instance that syncs A, and serves) -> this aggregate."""
    middle = make_instance(hostname="middle.example.org", DBSYNC_OVERLAP_SECONDS=0)
    middle.start()
    middle.manage(
        "dbsync_addremote", "--name", "a", "--hostname", live.hostname,
        "--ip", "127.0.0.1", "--port", str(live.port), "--scheme", "http",
    )  # fmt: skip
    done = middle.manage("hcore_remotesyncdb", "-r", "a", "-N", check=False)
    assert done.returncode == 0, done.stderr
    database = register(middle)
    sync(database)

    def compare():
        mapping = {}
        for model in apps.get_app_config("hcore").get_models():
            if root_of(model) is model and hasattr(model, "original_id"):
                table = model._meta.db_table
                rows = middle.sql(f"SELECT id, original_id FROM {table}")
                mapping[table] = dict(rows)
        assert_same_graph(remote_graph(live), translated(local_graph(database), mapping))

    compare()
    live.sql(
        "UPDATE hcore_gentity SET name = 'Changed at A' WHERE id = %s",
        [first_pk(live, "hcore_station", "gpoint_ptr_id")],
    )
    live.sql(
        "DELETE FROM hcore_gentityevent WHERE id = %s", [first_pk(live, "hcore_gentityevent")]
    )
    out = middle.manage("hcore_remotesyncdb", "-r", "a", "-N", "-v", "2").stdout
    assert "objects written by transaction" in out, out
    incremental(database)
    assert Station.objects.filter(original_db=database, name="Changed at A").count() == 1
    compare()
    # B's running checksums (its manifest's), kept by its triggers through both its
    # installs, are those of its rows.
    manifest = requests.get(f"{middle.url}/api/", timeout=30).json()
    for entry in manifest["models"]:
        parts = requests.get(
            f"{middle.url}{entry['checksums_url']}", {"parts": 1}, timeout=30
        ).json()["parts"]
        assert entry["checksum"] == (parts[0][2] if parts else ZERO_CHECKSUM), entry["model"]
    assert "Verified equal" in sync(database, "--verify")


@pytest.mark.slow
def test_a_remote_restored_to_an_earlier_point_is_refused_and_nothing_changes(tmp_path):
    """A real restore: the remote's PostgreSQL (a private cluster) is stopped, its data
    folder copied, changed and synced, then put back from the copy. Same cluster, same
    timeline, same database: only its transactions went back, behind our cursor."""
    import shutil
    import subprocess
    from pathlib import Path

    from tests.instance import Instance, instance_env
    from tests.pgcluster import PrivateCluster

    cluster = PrivateCluster()
    remote = Instance.__new__(Instance)
    try:
        cluster.execute('CREATE DATABASE "restored"')
        remote.db_name, remote.hostname, remote.settings = "restored", "restored.example.org", {}
        remote.var_dir = Path(tmp_path / "remote")
        remote.env = dict(
            instance_env("restored", remote.var_dir), DATABASE_URL=cluster.url("restored")
        )
        remote.port = remote.process = None
        remote.scheme = "http"
        remote.manage("migrate", "-v0")
        remote.generate(stations=6, seed=8)
        remote.start()
        database = register(remote)
        sync(database)

        remote.stop()
        cluster.pg_ctl("stop")
        backup = Path(cluster.root) / "backup"
        subprocess.run(["cp", "-a", str(cluster.data), str(backup)], check=True)
        cluster.start()
        remote.start()
        Database.objects.filter(pk=database.pk).update(port=remote.port)
        for n in range(3):
            cluster.execute(
                f"UPDATE hcore_gentity SET name = 'Changed {n}' WHERE id = "
                "(SELECT min(gentity_ptr_id) FROM hcore_gpoint)",
                db="restored",
            )
        incremental(database)
        assert Station.objects.filter(original_db=database, name="Changed 2").exists()

        remote.stop()
        cluster.pg_ctl("stop")
        shutil.rmtree(cluster.data)
        subprocess.run(["cp", "-a", str(backup), str(cluster.data)], check=True)
        cluster.start()
        remote.start()
        Database.objects.filter(pk=database.pk).update(port=remote.port)
        before = local_dump()
        with pytest.raises(CommandError, match="behind what this replica has seen"):
            sync(database)
        assert local_dump() == before
    finally:
        remote.stop()
        cluster.destroy()


@pytest.fixture
def live_files(make_instance, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    instance = make_instance(hostname="capture-files.example.org")
    instance.generate(stations=6, seed=5, records_per_series=50, files_per_station=1)
    return instance.start()


@pytest.fixture
def downloads(monkeypatch):
    """(path, params, bytes) of every body the syncer downloads to a file."""
    from dbsync.engine.remote import RemoteClient

    seen = []
    download = RemoteClient.download

    def spy(self, path, dest, params=None, is_complete=None):
        size = download(self, path, dest, params, is_complete)
        seen.append((path, dict(params or {}), size))
        return size

    monkeypatch.setattr(RemoteClient, "download", spy)
    return seen


def listings(downloads):
    return [(params, size) for path, params, size in downloads if "gentityfile/contents" in path]


def replica_files(database, media):
    """{remote pk: bytes of its file here}."""
    from hcore.models import GentityFile

    rows = GentityFile.objects.filter(original_db=database).values_list("original_id", "content")
    return {pk: (media / name).read_bytes() if name else None for pk, name in rows}


def remote_files(instance):
    rows = instance.sql("SELECT id, content FROM hcore_gentityfile")
    media = instance.var_dir / "media"
    return {pk: (media / name).read_bytes() if name else None for pk, name in rows}


def test_files_and_records_arrive_on_the_cheap_paths(live_files, downloads, settings):
    media = settings.MEDIA_ROOT
    database = register(live_files)
    sync(database)
    database.refresh_from_db()
    assert database.files_cursor == database.capture_cursor is not None
    assert replica_files(database, media) == remote_files(live_files)
    assert listings(downloads) == [({}, listings(downloads)[0][1])]  # the first: whole

    # Unchanged: the listing asks for what changed since the cursor, gets nothing, and
    # the records summary lists no series; no file and no records are fetched.
    downloads.clear()
    out = incremental(database)
    ((params, size),) = listings(downloads)
    assert params == {"changed_since": str(database.files_cursor)} and size == len(b"[\n]\n")
    summaries = [s for p, _q, s in downloads if "records-summary" in p]
    assert summaries == [len(b"[\n]\n")]
    assert [
        p for p, _q, _s in downloads if "records-summary" not in p and "contents" not in p
    ] == []
    assert "Fetched 0 files (0 bytes)" in out and "Installed 0 records" in out, out

    # A file's content rewritten through the application, one replaced by another
    # object's, one object deleted, one added; records appended to one series and
    # rewritten in another.
    pks = sorted(remote_files(live_files))
    series = [pk for (pk,) in live_files.sql("SELECT id FROM hcore_timeseries ORDER BY id")]
    live_files.shell(
        "from django.core.files.base import ContentFile\n"
        "from hcore.models import GentityFile\n"
        f"f = GentityFile.objects.get(pk={pks[0]})\n"
        "f.content.save('rewritten.txt', ContentFile(b'rewritten content'))\n"
        f"g = GentityFile.objects.get(pk={pks[1]})\n"
        f"g.content = GentityFile.objects.get(pk={pks[3]}).content.name; g.save()\n"
        f"GentityFile.objects.get(pk={pks[2]}).delete()\n"
        "n = GentityFile.objects.first(); n.pk = None; n.content.save('photo.jpg', "
        "ContentFile(b'\\xff\\xd8 new photo'))\n"
    )
    live_files.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        "SELECT timeseries_id, max(\"timestamp\") + interval '10 minutes', 1.5, '' "
        "FROM hcore_record WHERE timeseries_id = %s GROUP BY timeseries_id",
        [series[0]],
    )
    live_files.sql(
        'UPDATE hcore_record SET value = 99.25 WHERE timeseries_id = %s AND "timestamp" = '
        '(SELECT min("timestamp") FROM hcore_record WHERE timeseries_id = %s)',
        [series[1], series[1]],
    )
    downloads.clear()
    database.refresh_from_db()
    cursor = database.files_cursor
    out = incremental(database)
    ((params, _size),) = listings(downloads)
    assert params == {"changed_since": str(cursor)}
    assert "Fetched 3 files" in out, out
    assert replica_files(database, media) == remote_files(live_files)
    assert pks[2] not in replica_files(database, media)
    folder = media / "gentityfile" / str(database.pk)
    assert not (folder / str(pks[2])).exists()  # the deleted object's folder was pruned
    assert len([p for p in folder.rglob("*") if p.is_file()]) == len(remote_files(live_files))
    assert not [p for p in folder.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert_same_graph(remote_graph(live_files), local_graph(database))
    local = dict(
        Record.objects.filter(timeseries__original_db=database)
        .values("timeseries__original_id")
        .annotate(total=Sum("value"))
        .values_list("timeseries__original_id", "total")
    )
    remote = dict(live_files.sql("SELECT timeseries_id, sum(value) FROM hcore_record GROUP BY 1"))
    assert {pk: round(v, 6) for pk, v in local.items()} == {
        pk: round(v, 6) for pk, v in remote.items()
    }
    database.refresh_from_db()
    assert database.files_cursor == database.capture_cursor > cursor


def test_a_file_rewritten_behind_the_database_arrives_with_a_full_run(
    live_files, downloads, settings
):
    """The limit of the cheap path: a file rewritten in the remote's storage, its row
    not written, is not listed by an incremental run; a --full run fetches it."""
    media = settings.MEDIA_ROOT
    database = register(live_files)
    sync(database)
    pk, name = live_files.sql("SELECT id, content FROM hcore_gentityfile ORDER BY id LIMIT 1")[0]
    (live_files.var_dir / "media" / name).write_bytes(b"rewritten behind the database\n")
    incremental(database)
    assert replica_files(database, media)[pk] != b"rewritten behind the database\n"
    out = sync(database, "--full")
    assert "Fetched 1 files" in out, out
    assert replica_files(database, media) == remote_files(live_files)
