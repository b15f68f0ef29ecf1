"""Resources: what a remote can make a sync use (memory, disk), and what a sync needs
of the machine (its database, the remote's clock).

Each scenario runs a real remote instance over HTTP on loopback; where a real remote
cannot misbehave on cue (a manifest of millions of objects), ``servers.FaultyFront``
stands in front of it and answers instead, and the docstring says so.
"""

import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from dbsync.engine.workdir import default_work_dir
from dbsync.models import Database, SyncRun
from hcore import models as m
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.instance import PG_BASE, ROOT, Instance, instance_env, manage
from tests.pgcluster import PrivateCluster

from . import servers

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1 << 20
MANIFEST = "/api/"
CLOCK_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "clock_offset"


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="resources.example.org")
    instance.generate(stations=4, seed=41, records_per_series=10, files_per_station=0.5)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture
def front(remote):
    front = servers.FaultyFront(remote.url)
    yield front
    front.close()


@pytest.fixture
def folders(settings, tmp_path):
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.01
    return tmp_path


def register(instance, port):
    return Database.objects.create(
        name=instance.hostname, hostname=instance.hostname, ip_address="127.0.0.1", port=port
    )


@pytest.fixture
def synced(remote, front, folders):
    """The remote registered through the front, synced once (the front answering truly)."""
    database = register(remote, front.port)
    sync(database)
    front.forget()
    return database


def sync(database, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failed_sync(database, *args):
    with pytest.raises(CommandError) as info:
        sync(database, *args)
    return str(info.value)


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


# --- a manifest of millions of tiny objects ----------------------------------------------------

TINY_OBJECTS = 3_000_000


def flood_manifest():
    """A manifest whose list of models is three million empty objects (9 MB)."""
    moment = timezone.now().isoformat().encode()
    return b'{"server_time": "' + moment + b'", "models": [' + b"{}," * TINY_OBJECTS + b"{}]}"


# What the memory probe runs in a process of its own: the client's parse of the manifest
# (tracemalloc's peak, and the growth of the process' peak resident size, Linux), then, for
# comparison, the whole body parsed at once by json.loads (what the client did before).
PROBE = """
import json, sys, time, tracemalloc
import django
django.setup()
import requests
from dbsync.engine.errors import PayloadError
from dbsync.engine.remote import RemoteClient
from dbsync.models import Database

def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

client = RemoteClient(Database.objects.get(pk=int(sys.argv[1])), retries=0)
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
base = status_mb("VmRSS")
tracemalloc.start()
started = time.monotonic()
try:
    client.manifest()
    error = None
except PayloadError as exc:
    error = str(exc)
capped = {
    "seconds": time.monotonic() - started,
    "traced_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20,
    "rss_growth_mb": status_mb("VmHWM") - base,
}
body = requests.get(client.url("/api/"), timeout=60).content
tracemalloc.reset_peak()
held = tracemalloc.get_traced_memory()[0]
started = time.monotonic()
value = json.loads(body)
whole = {
    "seconds": time.monotonic() - started,
    "traced_peak_mb": (tracemalloc.get_traced_memory()[1] - held) / 2**20,
}
print(json.dumps({"error": error, "capped": capped, "whole": whole, "wire": len(body)}))
"""


def probe_manifest_parse(database):
    """Run PROBE against ``database`` in a child process (on this test's database)."""
    env = dict(
        os.environ,
        DATABASE_URL=f"{PG_BASE}/{connection.settings_dict['NAME']}",
        DJANGO_DEBUG="1",
        DJANGO_SETTINGS_MODULE="project.settings",
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(database.pk)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("encoding", ["plain", "gzip"])
def test_a_manifest_of_millions_of_tiny_objects_is_refused_by_the_cap_on_values(
    synced, front, remote, integrity, capsys, encoding
):
    """The front answers the manifest with three million empty objects (9 MB; gzipped,
    about 20 kB on the wire), under every cap on bytes: the run is refused by the cap
    on JSON values (DBSYNC_MAX_JSON_ITEMS), naming the remote, its address and the
    path, and changes nothing. The parse's peak memory, measured in a child process,
    is printed with that of the same body parsed whole (as it was before the cap).
    The front answering truly again, the next run succeeds."""
    body = flood_manifest()
    headers = {"Content-Type": "application/json"}
    if encoding == "gzip":
        body = gzip.compress(body, 9)
        headers["Content-Encoding"] = "gzip"
    front.on(
        lambda path: path.split("?")[0] == MANIFEST,
        lambda exchange, n: exchange.send(200, headers, body),
    )
    before = integrity.snapshot()
    message = failed_sync(synced, "--full")
    address = f"{synced.hostname} (http://127.0.0.1:{front.port})"
    assert f"{address}: {MANIFEST}: more than 100000 JSON values" in message
    assert "DBSYNC_MAX_JSON_ITEMS" in message and "Traceback" not in message
    integrity.assert_unchanged(before)
    assert last_run(synced).status == SyncRun.FAILED

    measured = probe_manifest_parse(synced)
    with capsys.disabled():
        print(
            f"\n[{encoding} manifest of {TINY_OBJECTS:,} empty objects, {len(body):,} bytes "
            f"on the wire] capped parse: refused in {measured['capped']['seconds']:.2f} s, "
            f"traced peak {measured['capped']['traced_peak_mb']:.1f} MB, peak RSS growth "
            f"{measured['capped']['rss_growth_mb']:.1f} MB; json.loads of the whole body: "
            f"{measured['whole']['seconds']:.2f} s, traced peak "
            f"{measured['whole']['traced_peak_mb']:.1f} MB"
        )
    assert "more than 100000 JSON values" in measured["error"]
    # The body (9 MB) is held, as bytes, while it is parsed; the values parsed stop at
    # the cap. Parsed whole, the same body takes over 150 MB.
    assert measured["capped"]["traced_peak_mb"] < 64
    assert measured["whole"]["traced_peak_mb"] > 3 * measured["capped"]["traced_peak_mb"]

    # The front answering truly again, the next run succeeds: the replica is the remote.
    front.clear()
    sync(synced)
    assert last_run(synced).status == SyncRun.SUCCEEDED
    assert_same_graph(remote_graph(remote), local_graph(synced))


# --- the disk budget ----------------------------------------------------------------------------

MODEL_DUMP = re.compile(r"^/api/hcore/[a-z]+/(\?|$)")


def test_a_run_over_its_disk_budget_stops_installs_nothing_and_removes_its_dumps(
    synced, front, remote, integrity, settings
):
    """With a budget of half the bytes of the remote's dumps, a full run stops while it
    fetches, with an error naming the budget; nothing is installed and no dump is left
    in its work folder. With the budget back, the next run installs everything."""
    sync(synced, "--full")
    dumps = sum(size for path, size in front.sent if MODEL_DUMP.match(path))
    settings.DBSYNC_RUN_DISK_BUDGET = dumps // 2
    remote.shell(
        "from hcore.models import Station; s = Station.objects.order_by('pk').first(); "
        "s.name = 'Renamed under a budget'; s.save()"
    )
    before = integrity.snapshot()
    message = failed_sync(synced, "--full")
    assert f"over its disk budget of {dumps // 2} bytes (DBSYNC_RUN_DISK_BUDGET)" in message
    integrity.assert_unchanged(before)
    assert last_run(synced).status == SyncRun.FAILED
    left = sorted(p.name for p in default_work_dir(synced).iterdir())
    assert not [name for name in left if name.endswith((".json", ".part"))], left

    settings.DBSYNC_RUN_DISK_BUDGET = 50 * 1024**3
    sync(synced)
    assert last_run(synced).status == SyncRun.SUCCEEDED
    assert_same_graph(remote_graph(remote), local_graph(synced))


# --- a remote whose clock is an hour off ---------------------------------------------------------

# A rename, a new station (a copy of the last), a deletion.
CHANGE = (
    "from hcore.models import Station\n"
    "first = Station.objects.order_by('pk').first(); first.name = 'Renamed'; first.save()\n"
    "new = Station.objects.order_by('pk').last(); new.pk = new.id = new.gentity_ptr_id = None\n"
    "new._state.adding = True\n"
    "new.name = 'New'; new.save()\n"
    "Station.objects.order_by('pk')[1].delete()\n"
)


@pytest.mark.parametrize("offset", [3600, -3600], ids=["ahead", "behind"])
def test_incremental_runs_of_a_remote_an_hour_off_get_every_change(
    instance_template, folders, offset
):
    """The remote's clock is an hour ahead, or behind (a fake: its Django's
    ``timezone.now`` is shifted, tests/fixtures/clock_offset; its PostgreSQL keeps the
    true time, so only the objects are compared, not the records, whose changes the
    database stamps). A full run, changes at the remote (a rename, a new station, a
    deletion), an incremental run: the local copy equals the remote, because the cursor
    is the remote's own clock (with the local clock, an hour behind would lose them)."""
    path = os.pathsep.join(filter(None, [str(CLOCK_DIR), os.environ.get("PYTHONPATH")]))
    instance = Instance(
        instance_template,
        hostname="clock.example.org",
        PYTHONPATH=path,
        DBSYNC_TEST_CLOCK_OFFSET=offset,
    )
    try:
        instance.generate(stations=3, seed=51, records_per_series=5)
        instance.start()
        served = requests.get(f"{instance.url}{MANIFEST}", timeout=30).json()["server_time"]
        skew = (datetime.fromisoformat(served) - timezone.now()).total_seconds()
        assert abs(skew - offset) < 120, f"the remote's clock is {skew:.0f} s off"
        database = register(instance, instance.port)
        sync(database)
        instance.shell(CHANGE)
        sync(database)
        run = last_run(database)
        assert run.status == SyncRun.SUCCEEDED and not run.full
        assert abs((run.remote_time - run.started_at).total_seconds() - offset) < 120
        assert_same_graph(remote_graph(instance), local_graph(database))
    finally:
        instance.drop()


# --- the local PostgreSQL restarted during the install ------------------------------------------

LOCAL_DB = "dbsync_local"


@pytest.fixture
def private_local(remote, tmp_path):
    """A local instance on a private PostgreSQL cluster (migrated, the remote
    registered), for a test that restarts its server."""
    cluster = PrivateCluster()
    try:
        cluster.execute(f'CREATE DATABASE "{LOCAL_DB}"')
        env = instance_env(LOCAL_DB, tmp_path / "var", DATABASE_URL=cluster.url(LOCAL_DB))
        manage(env, "migrate", "-v0")
        manage(
            env,
            "dbsync_addremote",
            "--name",
            remote.hostname,
            "--hostname",
            remote.hostname,
            "--ip",
            "127.0.0.1",
            "--port",
            str(remote.port),
            "--scheme",
            "http",
        )
        yield cluster, env
    finally:
        cluster.destroy()


def private_snapshot(cluster):
    """{table: (rows, md5)} of the hcore tables and the registered remotes' cursors."""
    tables = [
        name
        for (name,) in cluster.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename LIKE 'hcore%%' ORDER BY 1",
            db=LOCAL_DB,
        )
    ]
    result = {}
    for table in tables:
        ((rows, digest),) = cluster.execute(
            "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
            f'FROM "{table}" t',
            db=LOCAL_DB,
        )
        result[table] = (rows, digest)
    result["cursor"] = cluster.execute(
        "SELECT sync_cursor, last_sync FROM dbsync_database", db=LOCAL_DB
    )
    return result


def names(rows):
    return sorted(name for (name,) in rows)


def wait_for_install_blocked(cluster, timeout=120):
    """Wait until a session of the sync, inside a transaction that has written (it has a
    transaction id), waits for the table lock this test holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = cluster.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
            "AND backend_xid IS NOT NULL",
            [LOCAL_DB],
        )
        if waiting:
            return
        time.sleep(0.05)
    activity = cluster.execute(
        "SELECT state, wait_event_type, backend_xid, left(query, 200) FROM pg_stat_activity "
        "WHERE datname = %s",
        [LOCAL_DB],
    )
    raise AssertionError(f"the sync never reached the locked table in its install: {activity}")


@pytest.mark.slow
def test_a_postgresql_restart_during_the_install_fails_cleanly_and_the_next_run_succeeds(
    remote, private_local
):
    """The local instance's PostgreSQL is a private cluster (initdb, pg_ctl). After a
    first sync the remote changes; during the next run's install (its transaction has
    written, and waits to write the time series table, which this test locks) the server
    is restarted. The run exits non-zero with a message saying nothing was installed,
    the local tables are exactly as before, the run is recorded as failed once the server
    is back, and the next run installs the changes."""
    cluster, env = private_local
    manage(env, "hcore_remotesyncdb", "-r", remote.hostname, "-N")
    remote.shell(
        "from hcore.models import Station, Timeseries\n"
        "for s in Station.objects.all(): s.name = s.name + ' (restart)'; s.save()\n"
        "for t in Timeseries.objects.all(): t.name = (t.name or '') + ' (restart)'; t.save()\n"
    )
    before = private_snapshot(cluster)

    blocker = psycopg.connect(cluster.url(LOCAL_DB))
    try:
        # EXCLUSIVE: the sync may read the table, not write it
        blocker.execute("LOCK TABLE hcore_timeseries IN EXCLUSIVE MODE")
        syncing = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "hcore_remotesyncdb"]
            + ["-r", remote.hostname, "-N"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_install_blocked(cluster)
            cluster.restart()
            out, err = syncing.communicate(timeout=180)
        finally:
            if syncing.poll() is None:
                syncing.kill()
                syncing.wait()
    finally:
        blocker.close()  # the restart has ended its session (and released the lock)
    assert syncing.returncode != 0, out
    assert "Traceback" not in err, err
    assert "Nothing of this run was installed" in err, err
    assert private_snapshot(cluster) == before
    # The failure is recorded once the server is back (the run is not left RUNNING).
    last_status = "SELECT status, message FROM dbsync_syncrun ORDER BY id DESC LIMIT 1"
    ((status, recorded),) = cluster.execute(last_status, db=LOCAL_DB)
    assert status == SyncRun.FAILED and "Nothing of this run was installed" in recorded

    manage(env, "hcore_remotesyncdb", "-r", remote.hostname, "-N")
    assert cluster.execute(last_status, db=LOCAL_DB)[0][0] == SyncRun.SUCCEEDED
    station_names = (
        "SELECT name FROM hcore_gentity WHERE id IN (SELECT gpoint_ptr_id FROM hcore_station)"
    )
    assert names(cluster.execute(station_names, db=LOCAL_DB)) == names(remote.sql(station_names))
    series_names = "SELECT name FROM hcore_timeseries"
    assert names(cluster.execute(series_names, db=LOCAL_DB)) == names(remote.sql(series_names))
    assert all(name.endswith("(restart)") for name in names(remote.sql(series_names)))


def test_records_appended_at_a_remote_whose_django_runs_an_hour_ahead_of_its_database(
    instance_template, folders
):
    """The remote's Django clock is an hour ahead and its PostgreSQL's is true (the two
    on different hosts, clocks apart): records appended after a sync reach the next
    incremental run."""
    instance = Instance(
        instance_template,
        hostname="skewed.example.org",
        PYTHONPATH=os.pathsep.join(filter(None, [str(CLOCK_DIR), os.environ.get("PYTHONPATH")])),
        DBSYNC_TEST_CLOCK_OFFSET=3600,
    )
    try:
        instance.generate(stations=2, seed=52, records_per_series=5)
        instance.start()
        database = register(instance, instance.port)
        sync(database)
        ((series,),) = instance.sql("SELECT min(id) FROM hcore_timeseries")
        instance.shell(
            "import datetime as dt\n"
            "from hcore.models import Record, Timeseries\n"
            f"t = Timeseries.objects.get(pk={series})\n"
            "Record.objects.bulk_create(Record(timeseries=t, value=k, timestamp=dt.datetime("
            "2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=k)) for k in range(10))\n"
        )
        sync(database)
        assert last_run(database).status == SyncRun.SUCCEEDED
        ((remote_count,),) = instance.sql(
            "SELECT count(*) FROM hcore_record WHERE timeseries_id = %s", [series]
        )
        local = m.Timeseries.objects.get(original_db=database, original_id=series)
        assert local.record_set.count() == remote_count
    finally:
        instance.drop()
