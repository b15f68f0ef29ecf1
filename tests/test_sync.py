"""The replication engine and hcore_remotesyncdb, against a real remote over HTTP."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from dbsync.models import Database, SyncRun
from hcore.models import Gentity, Instrument, Station, Timeseries, UnitOfMeasurement
from tests.faultproxy import FaultProxy, model_path
from tests.graph import assert_same_graph, local_dump, local_graph, remote_graph
from tests.instance import ROOT, Instance

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def remote(instance_template):
    """A read-only remote with sample data (tests that change a remote make their own)."""
    instance = Instance(instance_template, hostname="static.example.org")
    instance.generate(stations=30, seed=7, files_per_station=0.2)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture
def fresh_remote(make_instance):
    instance = make_instance(hostname="live.example.org")
    instance.generate(stations=25, seed=3)
    return instance.start()


def register(instance, name=None, port=None):
    return Database.objects.create(
        name=name or instance.hostname,
        hostname=instance.hostname,
        ip_address="127.0.0.1",
        port=port or instance.port,
    )


def sync(database, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


def test_full_sync_replicates_the_whole_graph(remote):
    database = register(remote)
    out, _ = sync(database)
    assert_same_graph(remote_graph(remote), local_graph(database))
    assert "Successfully installed" in out
    run = last_run(database)
    assert run.status == SyncRun.SUCCEEDED
    remote_count = int(remote.sql("SELECT count(*) FROM hcore_station")[0][0])
    assert Station.objects.filter(original_db=database).count() == remote_count
    # keys to user accounts are never replicated
    assert not Station.objects.exclude(creator=None).exists()
    assert not Station.maintainers.through.objects.exists()
    database.refresh_from_db()
    assert database.last_sync is not None and database.sync_cursor is not None


def test_rerun_without_changes_changes_nothing(remote):
    database = register(remote)
    sync(database)
    before = local_dump()
    out, _ = sync(database)
    totals = last_run(database).totals()
    assert totals["created"] == totals["updated"] == totals["deleted"] == 0
    assert "0 created, 0 updated" in out
    # nothing was touched: not even last_modified moved
    assert json.loads(local_dump())[:-1] == json.loads(before)[:-1]
    # a forced full run also finds nothing to change
    sync(database, "--full")
    totals = last_run(database).totals()
    assert totals["created"] == totals["updated"] == totals["deleted"] == 0
    assert totals["unchanged"] > 100


def test_changes_additions_and_deletions_at_the_remote_arrive(fresh_remote):
    database = register(fresh_remote)
    sync(database)
    fresh_remote.shell(
        "from hcore.models import *\n"
        "s = Station.objects.order_by('pk')[0]\n"
        "s.name = 'Renamed'; s.altitude = 1234.5; s.save()\n"
        "Station.objects.order_by('pk')[1].delete()\n"
        "Timeseries.objects.order_by('pk')[0].delete()\n"
        "u = UnitOfMeasurement.objects.order_by('pk')[0]; u.variables.clear()\n"
        "v = Variable.objects.create(descr='New variable')\n"
        "u.variables.add(v)\n"
        "p = Person.objects.create(last_name='Newcomer')\n"
        "s2 = Station.objects.order_by('pk')[2]\n"
        "Overseer.objects.create(station=s2, person=p, is_current=True)\n"
        "wb = WaterBasin.objects.order_by('pk')[0]\n"
        "Station.objects.create(name='Brand new', owner=p, type=StationType.objects.first(),"
        " water_basin=wb, abscissa=1.0, ordinate=2.0)\n"
    )
    out, _ = sync(database)
    assert_same_graph(remote_graph(fresh_remote), local_graph(database))
    totals = last_run(database).totals()
    assert totals["created"] >= 4 and totals["updated"] >= 2 and totals["deleted"] >= 2
    assert Station.objects.filter(name="Renamed", altitude=1234.5).count() == 1
    assert UnitOfMeasurement.objects.filter(variables__descr="New variable").exists()


def test_two_remotes_and_local_objects_coexist(remote, fresh_remote):
    local_station = Station.objects.create(
        name="Local", owner=_local_person(), type=_local_station_type()
    )
    one, two = register(remote), register(fresh_remote)
    sync(one)
    sync(two)
    sync(one)
    assert_same_graph(remote_graph(remote), local_graph(one))
    assert_same_graph(remote_graph(fresh_remote), local_graph(two))
    local_station.refresh_from_db()
    assert local_station.name == "Local" and local_station.original_db is None


def _local_person():
    from hcore.models import Person

    return Person.objects.create(last_name="Local person")


def _local_station_type():
    from hcore.models import StationType

    return StationType.objects.create(descr="Local type")


def test_dry_run_reports_and_changes_nothing(remote):
    database = register(remote)
    before = local_dump()
    out, _ = sync(database, "--dry-run")
    assert "Would install" in out
    assert "hcore.station" in out
    assert Gentity.objects.count() == 0
    assert json.loads(local_dump()) == json.loads(before)


def test_fetch_only_then_resume(remote, tmp_path):
    database = register(remote)
    sync(database, "--fetch-only", "-w", str(tmp_path))
    assert Gentity.objects.count() == 0
    assert (tmp_path / "hcore.station.json").exists()
    out, _ = sync(database, "--resume", "-w", str(tmp_path))
    assert_same_graph(remote_graph(remote), local_graph(database))


def test_resume_from_the_remotes_own_dumpdata(remote, tmp_path):
    database = register(remote, name="airgapped")
    dumped = remote.manage("dumpdata", "hcore", "--indent", "2").stdout
    (tmp_path / "everything.json").write_text(dumped)
    sync(database, "--resume", "-w", str(tmp_path))
    assert_same_graph(remote_graph(remote), local_graph(database))


def test_backup_is_taken_before_changes(remote, tmp_path, settings):
    settings.DBSYNC_BACKUP_DIR = tmp_path
    database = register(remote)
    out = io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "--pg-dump", stdout=out)
    backups = list(tmp_path.glob("*.pgdump"))
    assert len(backups) == 1 and backups[0].stat().st_size > 1000
    assert str(backups[0]) in out.getvalue()
    assert last_run(database).backup_path == str(backups[0])


def test_exclusions(remote):
    database = register(remote)
    with pytest.raises(CommandError, match="needs hcore.lentity"):
        sync(database, "-e", "Lentity")
    with pytest.raises(CommandError, match="unknown model"):
        sync(database, "-e", "Nonsense")
    sync(database, "-e", "GentityFile,GentityEvent", "-e", "UserProfile")
    from hcore.models import GentityEvent, GentityFile

    assert Station.objects.exists()
    assert not GentityFile.objects.exists() and not GentityEvent.objects.exists()


def test_unknown_remote_lists_the_registered_ones(remote):
    register(remote)
    with pytest.raises(CommandError, match="static.example.org.*dbsync_addremote"):
        call_command("hcore_remotesyncdb", "-r", "nowhere.example.org")


# --- bad input: clear error, nothing changed -------------------------------------------


@pytest.fixture
def proxied(remote):
    proxy = FaultProxy(remote.url)
    yield proxy
    proxy.close()


def first_sync_then_snapshot(remote, proxy, settings):
    """Sync once through the proxy (so there is data to lose), then snapshot."""
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.01
    database = register(remote, port=proxy.port)
    sync(database)
    Database.objects.filter(pk=database.pk).update(sync_cursor=None)  # next run is full
    return database, local_dump()


def replace_body(transform):
    def action(path, status, headers, body):
        return status, headers, transform(body)

    return action


def objects_of(body):
    return [json.loads(line.rstrip(",")) for line in body.decode().splitlines()[1:-1] if line]


def as_body(objects):
    return ("[\n" + ",\n".join(json.dumps(o) for o in objects) + "\n]\n").encode()


def edit_first(body, **changes):
    objects = objects_of(body)
    objects[0]["fields"].update(changes)
    return as_body(objects)


BAD_INPUTS = {
    "http 500": (
        "station",
        lambda p, s, h, b: (500, {"Content-Type": "application/json"}, b'{"error": "boom"}'),
        "HTTP 500",
    ),
    "truncated": ("station", replace_body(lambda b: b[: len(b) // 2]), "truncated"),
    "malformed json": (
        "timeseries",
        replace_body(lambda b: b.replace(b'"fields"', b'"fields" ::', 1)),
        "malformed JSON",
    ),
    "foreign model": (
        "station",
        replace_body(
            lambda b: as_body(
                objects_of(b)
                + [
                    {
                        "model": "auth.user",
                        "pk": 1,
                        "fields": {"username": "x", "is_superuser": True},
                    }
                ]
            )
        ),
        "auth.user",
    ),
    "unknown field": ("gpoint", replace_body(lambda b: edit_first(b, colour="blue")), "'colour'"),
    "wrong type": (
        "gpoint",
        replace_body(lambda b: edit_first(b, altitude={"a": 1})),
        "altitude",
    ),
    "dangling key": (
        "timeseries",
        replace_body(lambda b: edit_first(b, gentity=999999)),
        r"hcore.gentity\(pk=999999\)",
    ),
    "deletion above the guard": (
        "timeseries",
        replace_body(lambda b: b"[\n]\n"),
        "would delete",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_changes_nothing(case, remote, proxied, settings):
    database, before = first_sync_then_snapshot(remote, proxied, settings)
    model, action, message = BAD_INPUTS[case]
    proxied.on(model_path(model), action)
    with pytest.raises(CommandError, match=message):
        sync(database)
    assert local_dump() == before
    run = last_run(database)
    assert run.status == SyncRun.FAILED
    assert run.message


def test_unreachable_remote(remote, settings):
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.01
    database = register(remote, port=1)
    before = local_dump()
    with pytest.raises(CommandError, match="cannot reach.*Connection refused"):
        sync(database)
    assert local_dump() == before


def test_deletion_guard_can_be_lifted(remote, proxied, settings):
    database, _ = first_sync_then_snapshot(remote, proxied, settings)
    proxied.on(model_path("timeseries"), replace_body(lambda b: b"[\n]\n"))
    sync(database, "--max-delete", "all")
    assert not Timeseries.objects.filter(original_db=database).exists()


def test_skip_installs_the_good_and_lists_the_bad(remote, proxied, settings):
    settings.DBSYNC_HTTP_RETRIES = 1
    database = register(remote, port=proxied.port)

    def break_one_station(body):
        objects = objects_of(body)
        objects[0]["fields"]["start_date"] = "not a date"
        return as_body(objects)

    bad_pk = objects_of(__import__("requests").get(remote.url + "/api/hcore/station/").content)[0][
        "pk"
    ]
    proxied.on(model_path("station"), replace_body(break_one_station))
    out, err = sync(database, "--skip")
    assert f"hcore.station(pk={bad_pk})" in err and "start_date" in err
    remote_graph_ = remote_graph(remote)
    assert (
        Station.objects.filter(original_db=database).count()
        == len(remote_graph_["hcore.station"]) - 1
    )
    # what needs the skipped station was skipped too, and said so
    ts_of_bad = [
        pk for pk, f in remote_graph_["hcore.timeseries"].items() if f["gentity"] == bad_pk
    ]
    assert not Timeseries.objects.filter(original_db=database, original_id__in=ts_of_bad).exists()
    # and so on down the chain: the station's instruments, the series that use them
    instruments_of_bad = [
        pk for pk, f in remote_graph_["hcore.instrument"].items() if f["station"] == bad_pk
    ]
    ts_of_instruments = [
        pk
        for pk, f in remote_graph_["hcore.timeseries"].items()
        if f["instrument"] in instruments_of_bad
    ]
    assert instruments_of_bad and ts_of_instruments
    assert not Instrument.objects.filter(
        original_db=database, original_id__in=instruments_of_bad
    ).exists()
    run = last_run(database)
    assert run.status == SyncRun.SUCCEEDED
    reported = {(e["model"], e["pk"]) for e in run.errors}
    assert ("hcore.station", bad_pk) in reported
    assert {("hcore.instrument", pk) for pk in instruments_of_bad} <= reported
    assert {("hcore.timeseries", pk) for pk in ts_of_bad + ts_of_instruments} <= reported


def test_second_sync_of_the_same_remote_is_refused(remote):
    database = register(remote)
    from dbsync.runs.locking import remote_lock

    with remote_lock(database):
        # the lock is per connection; a second process is what a real clash looks like
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "hcore_remotesyncdb",
                "-r",
                database.name,
                "-N",
            ],
            env=_local_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert "already running" in done.stderr


def _local_env():
    env = dict(os.environ)
    db = settings.DATABASES["default"]
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_kill_9_during_install_leaves_nothing_and_releases_the_lock(make_instance):
    big = make_instance(hostname="big.example.org")
    big.generate(stations=3000, seed=5)
    big.start()
    database = register(big)
    before = local_dump()
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "hcore_remotesyncdb",
            "-r",
            database.name,
            "-N",
            "-v",
            "1",
        ],
        env=_local_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_at = None
    for line in process.stdout:
        if line.startswith("Installing fixtures from file hcore.gentity"):
            time.sleep(0.2)
            process.send_signal(signal.SIGKILL)
            killed_at = line
            break
    process.wait(timeout=60)
    assert killed_at, "the install phase was never reached"
    assert process.returncode == -signal.SIGKILL
    assert local_dump() == before
    # the lock died with the process: the next run goes ahead, and records the old one
    sync(database)
    runs = list(SyncRun.objects.filter(database=database).order_by("pk"))
    assert [r.status for r in runs] == [SyncRun.FAILED, SyncRun.SUCCEEDED]
    assert "Interrupted" in runs[0].message
    assert_same_graph(remote_graph(big), local_graph(database))
