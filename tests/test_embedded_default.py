"""The embedded default: a local instance with no settings at all (SQLite in its
DBSYNC_VAR_DIR, the sync in the command's own process), syncing a real remote.

The local is driven as a user drives it (README, bin/demo): ``manage.py`` in a
subprocess whose environment is built from scratch, so that no DATABASE_URL of the
test run can leak in: ``migrate``, ``dbsync_addremote --scheme http``,
``hcore_remotesyncdb -r NAME``. Both sides are read back the same way, by one script
in ``manage.py shell`` (``SNAPSHOT``), the local keyed by the remote's pks.

The remote comes in both kinds, each test running once against each:

- ``postgresql``: tests/instance.py's Instance, the shape of a production Enhydris,
  whose API takes its PostgreSQL paths (record summaries kept by triggers);
- ``sqlite``: bin/demo's remote, itself on the embedded default, whose API computes
  the summaries and serves the dumps through its SQLite paths. bin/demo (run by
  .ci/run) only looks at the closing lines; here every record and file is compared.
"""

import fcntl
import json
import os
import re
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.instance import Instance, manage

NAME = "sample"
STATIONS = 12
RECORDS_PER_SERIES = 200
CLOSING = re.compile(
    r"^Successfully installed (?P<objects>\d+) objects from \d+ fixtures "
    r"\((?P<created>\d+) created, (?P<updated>\d+) updated, (?P<unchanged>\d+) unchanged, "
    r"(?P<deleted>\d+) deleted, (?P<skipped>\d+) skipped\)\. "
    r"Records: (?P<records_added>\d+) added, (?P<records_changed>\d+) changed, "
    r"(?P<records_removed>\d+) removed, (?P<records_unchanged>\d+) unchanged\. "
    r"Files: (?P<files_fetched>\d+) fetched, (?P<files_removed>\d+) removed, "
    r"(?P<files_unchanged>\d+) unchanged, (?P<files_skipped>\d+) skipped\.$"
)

# What a user would look at, the same on either side: every object's count, the
# stations, every series with its records (count, first, last and a digest of all),
# and every file's bytes. KEY is "pk" on the remote, "original_id" on the replica.
SNAPSHOT = r"""
import hashlib, json
from django.apps import apps
from hcore.models import GentityFile, Record, Station, Timeseries

KEY = %(key)r
IGNORED = {"userprofile", "recordssummary", "recordssyncstate"}


def key(obj):
    return getattr(obj, KEY)


def record(row):
    moment, value, flags = row
    return [moment.isoformat(), repr(value), flags]


counts = {
    model._meta.label_lower: model._base_manager.count()
    for model in apps.get_app_config("hcore").get_models()
    if model._meta.model_name not in IGNORED
}
stations = {
    key(s): [s.name, s.altitude, s.abscissa, s.ordinate, key(s.owner), s.type.descr]
    for s in Station.objects.select_related("owner", "type")
}
series = {}
for ts in Timeseries.objects.select_related("gentity"):
    rows = [
        record(row)
        for row in Record.objects.filter(timeseries=ts)
        .order_by("timestamp")
        .values_list("timestamp", "value", "flags")
    ]
    series[key(ts)] = {
        "gentity": key(ts.gentity),
        "name": ts.name,
        "records": len(rows),
        "first": rows[0] if rows else None,
        "last": rows[-1] if rows else None,
        "digest": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
    }
files = {}
for f in GentityFile.objects.select_related("gentity"):
    data = None
    if f.content.name:
        with f.content.storage.open(f.content.name, "rb") as fh:
            data = fh.read()
    files[key(f)] = {
        "gentity": key(f.gentity),
        "descr": f.descr,
        "size": None if data is None else len(data),
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(),
        "path": f.content.path if f.content.name else None,
    }
print(json.dumps({"counts": counts, "stations": stations, "series": series, "files": files}))
"""


def snapshot(run, key):
    done = run("shell", "-c", SNAPSHOT % {"key": key})
    data = json.loads(done.stdout.strip().splitlines()[-1])
    # JSON keys are strings; the paths differ by nature between the two sides.
    return {
        "counts": data["counts"],
        "stations": {int(k): v for k, v in data["stations"].items()},
        "series": {int(k): v for k, v in data["series"].items()},
        "files": {
            int(k): {n: v for n, v in f.items() if n != "path"} for k, f in data["files"].items()
        },
        "paths": {int(k): f["path"] for k, f in data["files"].items()},
    }


def embedded_env(var_dir, **extra):
    """The environment of a user's shell with no dbsync settings at all: no
    DATABASE_URL, no broker, only DJANGO_DEBUG (no secret key) and a folder of its own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(var_dir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DJANGO_DEBUG": "1",
        "DBSYNC_VAR_DIR": str(var_dir),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


class SqliteRemote(Instance):
    """bin/demo's remote: an instance on its own SQLite file, served by gunicorn."""

    def __init__(self, var_dir, hostname, migrated):  # no PostgreSQL database to clone
        self.db_name = None
        self.hostname = hostname
        self.var_dir = Path(var_dir)
        self.settings = {}
        self.env = embedded_env(var_dir, DJANGO_ALLOWED_HOSTS="*")
        self.port = None
        self.process = None
        self.scheme = "http"
        shutil.copyfile(migrated, self.var_dir / "db.sqlite3")

    def drop(self):
        self.stop()


class Local:
    """The local instance, on the embedded default."""

    def __init__(self, var_dir):
        self.var_dir = Path(var_dir)
        self.env = embedded_env(var_dir)

    @property
    def db_file(self):
        return self.var_dir / "db.sqlite3"

    def manage(self, *args, check=True):
        done = manage(self.env, *args, check=False, timeout=300)
        if check:
            assert done.returncode == 0, (
                f"manage.py {' '.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def sync(self):
        done = self.manage("hcore_remotesyncdb", "-r", NAME)
        return closing(done.stdout)

    def sql(self, query, params=()):
        with sqlite3.connect(self.db_file) as conn:
            return conn.execute(query, params).fetchall()


def closing(stdout):
    """The counts of a run's closing line (the last one on stdout)."""
    last = stdout.strip().splitlines()[-1]
    match = CLOSING.match(last)
    assert match, f"unexpected closing line: {last!r}"
    return {k: int(v) for k, v in match.groupdict().items()}


class World:
    def __init__(self, remote, local, first):
        self.remote, self.local, self.first = remote, local, first

    def remote_snapshot(self):
        return snapshot(self.remote.manage, "pk")

    def local_snapshot(self):
        return snapshot(self.local.manage, "original_id")

    def assert_in_step(self):
        """The local holds exactly what the remote holds; returns both snapshots."""
        with ThreadPoolExecutor(2) as pool:
            remote = pool.submit(self.remote_snapshot)
            local = pool.submit(self.local_snapshot)
            remote, local = remote.result(), local.result()
        assert local["counts"] == remote["counts"]
        assert local["stations"] == remote["stations"]
        assert local["series"] == remote["series"]
        assert local["files"] == remote["files"]
        return remote, local


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory):
    """A SQLite database as ``manage.py migrate`` leaves it on the embedded default,
    migrated once and copied (a migration run costs seconds)."""
    folder = tmp_path_factory.mktemp("migrated")
    Local(folder).manage("migrate", "-v0")
    return folder / "db.sqlite3"


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def world(request, tmp_path_factory, migrated_sqlite):
    """A remote with sample data (records and files) and a local synced from it once."""
    hostname = f"{request.param}.example.org"
    if request.param == "postgresql":
        remote = Instance(request.getfixturevalue("instance_template"), hostname=hostname)
    else:
        remote = SqliteRemote(tmp_path_factory.mktemp("remote"), hostname, migrated_sqlite)
    try:
        remote.generate(
            stations=STATIONS,
            seed=11,
            records_per_series=RECORDS_PER_SERIES,
            files_per_station=0.5,
        )
        remote.start()
        local = Local(tmp_path_factory.mktemp("local"))
        shutil.copyfile(migrated_sqlite, local.db_file)
        # what a user runs first (here it finds the copy up to date)
        local.manage("migrate", "-v0")
        local.manage(
            "dbsync_addremote",
            "--name",
            NAME,
            "--hostname",
            hostname,
            "--ip",
            "127.0.0.1",
            "--port",
            str(remote.port),
            "--scheme",
            "http",
        )
        first = local.manage("hcore_remotesyncdb", "-r", NAME)
        yield World(remote, local, first)
    finally:
        remote.drop()


def test_first_run_replicates_stations_series_records_and_files(world):
    local = world.local
    counts = closing(world.first.stdout)
    remote, mine = world.assert_in_step()
    # there was something to replicate: records in every series, files with bytes
    assert len(mine["stations"]) == STATIONS
    assert mine["series"] and all(
        s["records"] == RECORDS_PER_SERIES for s in mine["series"].values()
    )
    assert any(f["size"] for f in mine["files"].values())
    assert counts["created"] == counts["objects"] > 0
    assert counts["records_added"] == RECORDS_PER_SERIES * len(remote["series"])
    assert counts["files_fetched"] == sum(1 for f in remote["files"].values() if f["size"])
    # ...into the SQLite file in the local's own folder, nowhere else
    assert local.sql("SELECT count(*) FROM hcore_station") == [(STATIONS,)]
    # and monitoring calls the replica fresh
    status = local.manage("dbsync_status")
    assert status.stdout.strip() == f"{NAME}: last success 0 min ago"


def test_sqlite_runs_unjournaled_and_backs_up_the_whole_file_when_asked(world):
    # the journal needs PostgreSQL: the run says so, and works
    assert "not journaled: the journal needs PostgreSQL" in world.first.stdout
    assert "Backed up" not in world.first.stdout
    stations = world.local.sql("SELECT count(*) FROM hcore_station")[0][0]
    again = world.local.manage("hcore_remotesyncdb", "-r", NAME, "--pg-dump")
    found = re.search(r"Backed up the local database to (\S+)", again.stdout)
    assert found, again.stdout[-2000:]
    backup = Path(found.group(1))
    assert backup.parent == world.local.var_dir / "backups"
    assert backup.suffix == ".sqlite3" and backup.is_file()
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # a migrated database as it was before the first run changed anything
        assert conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0] > 10
        assert conn.execute("SELECT count(*) FROM hcore_station").fetchone()[0] == stations > 0
        assert conn.execute("SELECT name FROM dbsync_database").fetchall() == [(NAME,)]


def test_a_station_renamed_at_the_remote_arrives(world):
    pk = int(
        world.remote.shell(
            "from hcore.models import Station\n"
            "s = Station.objects.order_by('pk').first()\n"
            "s.name = 'Renamed at the remote'; s.save()\n"
            "print(s.pk)"
        ).split()[-1]
    )
    counts = world.local.sync()
    assert counts["updated"] >= 1
    assert counts["created"] == counts["deleted"] == 0
    assert counts["records_added"] == counts["records_changed"] == 0
    assert counts["files_fetched"] == counts["files_removed"] == 0
    _, local = world.assert_in_step()
    assert local["stations"][pk][0] == "Renamed at the remote"


def test_a_station_deleted_at_the_remote_goes_with_what_hangs_on_it(world):
    # a station with records and a file, so that the deletion has something to take
    pk = int(
        world.remote.shell(
            "from hcore.models import GentityFile, Record\n"
            "f = GentityFile.objects.exclude(content='').order_by('-pk')\n"
            "ids = set(Record.objects.values_list('timeseries__gentity', flat=True))\n"
            "print(next(x.gentity_id for x in f if x.gentity_id in ids))"
        ).split()[-1]
    )
    before = world.local_snapshot()
    assert pk in before["stations"]
    series = {k for k, s in before["series"].items() if s["gentity"] == pk}
    files = {k for k, f in before["files"].items() if f["gentity"] == pk}
    assert series and files
    world.remote.shell(f"from hcore.models import Station\nStation.objects.get(pk={pk}).delete()")

    counts = world.local.sync()
    assert counts["deleted"] > 0 and counts["created"] == 0
    assert counts["files_removed"] == len(files)
    _, after = world.assert_in_step()
    assert pk not in after["stations"]
    assert not series & after["series"].keys()
    assert not files & after["files"].keys()
    # the files are gone from the local's storage too
    assert not any(Path(before["paths"][k]).exists() for k in files)
    # and nothing else moved
    assert {k: v for k, v in before["stations"].items() if k != pk} == after["stations"]
    assert {k: v for k, v in before["series"].items() if k not in series} == after["series"]
    assert {k: v for k, v in before["files"].items() if k not in files} == after["files"]
    assert all(Path(after["paths"][k]).exists() for k in after["files"] if after["paths"][k])


def test_records_appended_at_the_remote_arrive(world):
    pk = int(
        world.remote.shell(
            "import datetime as dt\n"
            "from hcore.models import Record, Timeseries\n"
            "ts = Timeseries.objects.filter(record__isnull=False).order_by('pk').first()\n"
            "last = Record.objects.filter(timeseries=ts).order_by('-timestamp').first()\n"
            "Record.objects.bulk_create(Record(timeseries=ts, value=100.5 + i, flags='NEW',"
            " timestamp=last.timestamp + dt.timedelta(minutes=10 * (i + 1))) for i in range(6))\n"
            "print(ts.pk)"
        ).split()[-1]
    )
    before = world.local_snapshot()
    counts = world.local.sync()
    assert counts["records_added"] == 6
    assert counts["records_changed"] == counts["records_removed"] == 0
    assert counts["created"] == counts["updated"] == counts["deleted"] == 0
    _, after = world.assert_in_step()
    assert after["series"][pk]["records"] == before["series"][pk]["records"] + 6
    assert after["series"][pk]["last"][1:] == ["105.5", "NEW"]
    assert {k: v for k, v in after["series"].items() if k != pk} == {
        k: v for k, v in before["series"].items() if k != pk
    }


def test_a_file_changed_at_the_remote_arrives(world):
    """The bytes change in place: same name, same object, nothing else to notice. From
    a remote with change capture (PostgreSQL) the files listing of an incremental run
    holds only the objects written since (it hashes no other file): the change is not
    seen, ``--verify`` finds it (exit 1) and ``--full`` fetches it. From a SQLite
    remote every run lists every file, so the next run fetches it."""
    new = b"Field notes, corrected at the remote.\n" * 20
    pk = int(
        world.remote.shell(
            "from hcore.models import GentityFile\n"
            "f = GentityFile.objects.exclude(content='').order_by('pk').first()\n"
            f"open(f.content.path, 'wb').write({new!r})\n"
            "print(f.pk)"
        ).split()[-1]
    )
    before = world.local_snapshot()
    counts = world.local.sync()
    if isinstance(world.remote, Instance) and counts["files_fetched"] == 0:
        # Not listed (it is, if a transaction still open when the last run read held the
        # capture's cursor back before its row's write: then it has arrived).
        assert Path(before["paths"][pk]).read_bytes() != new
        verified = world.local.manage("hcore_remotesyncdb", "-r", NAME, "--verify", check=False)
        assert verified.returncode == 1, verified.stdout + verified.stderr
        counts = closing(world.local.manage("hcore_remotesyncdb", "-r", NAME, "--full").stdout)
    assert counts["files_fetched"] == 1
    assert counts["created"] == counts["deleted"] == 0
    _, after = world.assert_in_step()
    assert after["files"][pk]["size"] == len(new)
    assert Path(after["paths"][pk]).read_bytes() == new
    # the earlier version is not kept
    assert not Path(before["paths"][pk]).exists()
    assert {k: v for k, v in after["files"].items() if k != pk} == {
        k: v for k, v in before["files"].items() if k != pk
    }


def test_a_second_sync_is_refused_while_one_holds_the_lock(world):
    """On SQLite the lock is a flock on a file in the local's folder (dbsync.runs.locking):
    hold it as a running sync would, and a second sync refuses, changing nothing."""
    (remote_pk,) = world.local.sql("SELECT id FROM dbsync_database WHERE name = ?", [NAME])[0]
    lock_dir = world.local.var_dir / "locks"
    lock_dir.mkdir(exist_ok=True)
    runs = world.local.sql("SELECT count(*) FROM dbsync_syncrun")[0][0]
    fd = os.open(lock_dir / f"remote-{remote_pk}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = world.local.manage("hcore_remotesyncdb", "-r", NAME, "-N", check=False)
    finally:
        os.close(fd)
    assert done.returncode != 0
    assert "already running" in done.stderr
    assert world.local.sql("SELECT status FROM dbsync_syncrun ORDER BY id DESC LIMIT 1") == [
        ("refused",)
    ]
    assert world.local.sql("SELECT count(*) FROM dbsync_syncrun")[0][0] == runs + 1
    # and once it is free, the next sync goes ahead
    world.local.sync()
