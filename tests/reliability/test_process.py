"""Process faults of ``hcore_remotesyncdb``: kill -9 during the fetch, the install and the
final commit, the local database connection dropped mid-install, a full work folder.

A scenario does not race the command with a timer. It holds the command at the point
under test with a real lock and waits until PostgreSQL shows the command waiting there:
a table of the remote's database locked by the test (the remote's API then stalls in
the middle of one model's dump, as a busy remote does), or a table or a row of the
local database (the install stalls on it). Then it injects its fault, and checks what
an operator would: the local database exactly as before (``integrity``) or equal to the
remote (``assert_same_graph``), the run's status and message saying which, the remote's
lock free, and the next run succeeding.
"""

import signal
import subprocess
import sys
from contextlib import contextmanager

import psycopg
import pytest
from django.core.management.base import CommandError
from django.db import connection

from dbsync.models import SyncRun
from dbsync.runs import service
from dbsync.runs.locking import LOCK_NAMESPACE, remote_lock
from hcore.models import Record, UnitOfMeasurement, Variable
from tests.celery_helpers import local_env
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.instance import PG_BASE, ROOT, Instance
from tests.test_sync import last_run, register, sync
from tests.test_tasks import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 60
STALLED = "hcore.unitofmeasurement"  # the model whose dump remote_dump_stalled holds


@pytest.fixture(scope="module")
def remote(instance_template):
    """A small remote that the scenarios only read."""
    instance = Instance(instance_template, hostname="process.example.org")
    instance.generate(stations=20, seed=17)
    instance.start()
    yield instance
    instance.drop()


# --- holding a sync at a known point ------------------------------------------------------------


@contextmanager
def holding(url, statement):
    """Run ``statement`` in a transaction of a session of the test's own, and keep the
    transaction (and the locks it took) open for the block."""
    with psycopg.connect(url) as conn:
        conn.execute(statement)
        try:
            yield
        finally:
            conn.rollback()


def local_url():
    return local_env()["DATABASE_URL"]


@contextmanager
def remote_dump_stalled(instance):
    """The remote serves its manifest but stalls in its dump of units of measurement:
    the table of their many-to-many links (which the manifest does not read) is locked
    in the remote's own database."""
    table = UnitOfMeasurement.variables.through._meta.db_table
    lock = f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE'
    with holding(f"{PG_BASE}/{instance.db_name}", lock):
        yield


def wait_remote_stalled(instance):
    """Until a request of the remote waits for the lock of ``remote_dump_stalled``."""
    wait_until(
        lambda: instance.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )[0][0],
        WAIT,
    )


@contextmanager
def install_stalled():
    """The install stalls when it reaches the stations (the models before them are
    written, uncommitted): the test holds a SHARE lock on their table."""
    with holding(local_url(), "LOCK TABLE hcore_station IN SHARE MODE"):
        yield


@contextmanager
def commit_stalled(database, variable):
    """The install's COMMIT stalls: PostgreSQL checks the foreign keys at commit, and the
    test holds a row lock on the variable (remote pk ``variable``) that a changed series
    now points at."""
    local = Variable.objects.get(original_db=database, original_id=variable).pk
    with holding(local_url(), f"SELECT 1 FROM hcore_variable WHERE id = {local} FOR UPDATE"):
        yield


def sync_session(database):
    """(pid, wait event type, query) of the local session that holds the remote's lock:
    the one syncing it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.pid, a.wait_event_type, a.query FROM pg_locks l "
            "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
            "AND a.datname = current_database() "  # advisory locks are per database
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            [LOCK_NAMESPACE, database.pk],
        )
        return cursor.fetchone()


def wait_stalled(database, query=None):
    """The pid of the session syncing ``database``, once it waits for a lock (in the
    statement ``query``, if given)."""

    def stalled():
        session = sync_session(database)
        if session and session[1] == "Lock" and query in (None, session[2].strip()):
            return session[0]
        return None

    return wait_until(stalled, WAIT)


def wait_session_gone(pid):
    def gone():
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            return cursor.fetchone()[0] == 0

    wait_until(gone, WAIT)


def terminate(pid):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone()[0]


class Command:
    """``manage.py hcore_remotesyncdb -r <remote> -N -v 2 ...`` in a process of its own."""

    def __init__(self, database, tmp_path, *args, **env):
        self.out, self.err = tmp_path / "command.out", tmp_path / "command.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "hcore_remotesyncdb"]
                + ["-r", database.name, "-N", "-v", "2", *map(str, args)],
                env=local_env(**env),
                cwd=ROOT,
                stdout=out,
                stderr=err,
            )

    def output(self):
        return self.out.read_text()

    def errors(self):
        return self.err.read_text()

    def wait(self):
        return self.process.wait(timeout=WAIT)

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        assert self.wait() == -signal.SIGKILL


# --- what every scenario checks at its end ------------------------------------------------------


def assert_lock_free(database):
    """No session holds the remote's lock once PostgreSQL has seen a dead process's
    connection close (at once, normally), and a new run can take it."""
    wait_until(lambda: sync_session(database) is None, 10)
    with remote_lock(database):
        pass


def assert_says_interrupted(run, installed=False):
    """The run failed as interrupted, and says whether its objects were installed."""
    assert run.status == SyncRun.FAILED, run.message
    assert run.message.startswith("Interrupted: "), run.message
    expected = "Its objects were installed" if installed else "Nothing of it was installed"
    assert expected in run.message, run.message


def assert_reaped(database, installed=False):
    """The dead command's run, still RUNNING, is ended by the periodic reaper."""
    assert last_run(database).status == SyncRun.RUNNING  # nobody recorded its end
    service.reap_stale_runs()
    assert_says_interrupted(last_run(database), installed)


def assert_next_run_succeeds(remote, database, *args):
    out, _ = sync(database, *args)
    run = last_run(database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert "Successfully installed" in out
    assert_same_graph(remote_graph(remote), local_graph(database))


# --- kill -9 ------------------------------------------------------------------------------------


def test_kill_9_during_the_fetch_changes_nothing_and_the_next_run_succeeds(
    remote, integrity, tmp_path
):
    """Killed while a dump is half downloaded: the local database is as it was, the
    lock died with the process, the run is reaped as interrupted, and the next run in
    the same work folder (where the half dump was left) installs everything and leaves
    the folder clean."""
    database = register(remote)
    work = tmp_path / "work"
    before = integrity.snapshot()
    with remote_dump_stalled(remote):
        command = Command(database, tmp_path, "-w", work)
        wait_remote_stalled(remote)
        wait_until(lambda: (work / f"{STALLED}.json.part").exists(), WAIT)
        command.kill9()
    assert not (work / f"{STALLED}.json").exists()
    integrity.assert_unchanged(before)
    assert_lock_free(database)
    assert_reaped(database)
    assert_next_run_succeeds(remote, database, "-w", work)
    assert sorted(p.name for p in work.iterdir()) == []


def test_kill_9_during_the_install_changes_nothing_and_the_next_run_succeeds(
    remote, integrity, tmp_path
):
    """Killed in the middle of the install's transaction (the models before the
    stations written): nothing of it is left, the run is reaped as interrupted, the
    next run installs everything."""
    database = register(remote)
    before = integrity.snapshot()
    with install_stalled():
        command = Command(database, tmp_path)
        session = wait_stalled(database)
        # Models written before it stalled: which ones depends on the install's path
        # (the server's writes a model once its key maps are built, and says so after).
        assert "Installing fixtures from file hcore.politicaldivision.json" in command.output()
        command.kill9()
    wait_session_gone(session)
    integrity.assert_unchanged(before)
    assert_lock_free(database)
    assert_reaped(database)
    assert_next_run_succeeds(remote, database)


def change_a_series_variable(instance):
    """Point the first time series of ``instance`` at another variable, as an edit at
    the remote would; return the remote pk of that variable."""
    series, variable = instance.sql(
        "SELECT id, variable_id FROM hcore_timeseries ORDER BY id LIMIT 1"
    )[0]
    other = instance.sql(
        "SELECT id FROM hcore_variable WHERE id <> %s ORDER BY id LIMIT 1", [variable]
    )[0][0]
    instance.sql(
        "UPDATE hcore_timeseries SET variable_id = %s, last_modified = now() WHERE id = %s",
        [other, series],
    )
    return other


def test_kill_9_during_the_final_commit_leaves_all_or_nothing_and_the_run_says_which(
    make_instance, integrity, tmp_path
):
    """Killed while PostgreSQL executes the install's COMMIT (held on a foreign-key
    check). PostgreSQL finishes a COMMIT whose client has gone, so the objects are
    installed although the process never recorded it: the reaped run must say that
    its objects were installed (not "nothing"), the data equals the remote's, and the
    next run succeeds. (Had the commit not happened, the database must be as before and
    the run say so: both outcomes are checked.)"""
    instance = make_instance(hostname="commit.example.org")
    instance.generate(stations=8, seed=19)
    instance.start()
    database = register(instance)
    sync(database)
    variable = change_a_series_variable(instance)
    cursor_before = type(database).objects.get(pk=database.pk).sync_cursor
    before = integrity.snapshot()
    with commit_stalled(database, variable):
        # No overlap: the incremental run fetches the changed series only, not the
        # variable whose row the test holds.
        command = Command(database, tmp_path, DBSYNC_OVERLAP_SECONDS=0)
        session = wait_stalled(database, query="COMMIT")
        command.kill9()
    wait_session_gone(session)
    assert_lock_free(database)
    database.refresh_from_db()
    installed = database.sync_cursor != cursor_before
    if installed:
        assert_same_graph(remote_graph(instance), local_graph(database))
    else:
        integrity.assert_unchanged(before)
    assert_reaped(database, installed=installed)
    assert_next_run_succeeds(instance, database)


# --- the database connection, the disk --------------------------------------------------------


def test_dropped_database_connection_during_the_install_fails_clearly_and_changes_nothing(
    remote, integrity, tmp_path
):
    """The install's PostgreSQL session is terminated mid-install (as a DBA's
    pg_terminate_backend or a restart of PostgreSQL would): the command exits 1 with a
    message saying so (no traceback), the run records it, nothing changed, the lock is
    free and the next run succeeds."""
    database = register(remote)
    before = integrity.snapshot()
    with install_stalled():
        command = Command(database, tmp_path)
        terminate(wait_stalled(database))
        assert command.wait() == 1
    errors = command.errors()
    assert "connection to the local database was lost" in errors, errors
    assert "Nothing of this run was installed" in errors and "Traceback" not in errors
    integrity.assert_unchanged(before)
    assert_lock_free(database)
    run = last_run(database)
    assert run.status == SyncRun.FAILED
    assert "connection to the local database was lost" in run.message
    assert_next_run_succeeds(remote, database)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a tmpfs of 16 KiB, less than the remote's dumps; unmounted after."""
    path = tmp_path / "small-disk"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_full_work_folder_fails_clearly_changes_nothing_and_the_next_run_succeeds(
    remote, integrity, small_disk
):
    """The work folder (-w) runs out of space mid-fetch: the command fails naming the
    folder and the lack of space, nothing is installed, no partial dump is left there;
    with space again, the next run in the same folder succeeds."""
    database = register(remote)
    before = integrity.snapshot()
    with pytest.raises(CommandError) as failure:
        sync(database, "-w", str(small_disk))
    message = str(failure.value)
    assert "No space left on device" in message and str(small_disk) in message, message
    integrity.assert_unchanged(before)
    assert_lock_free(database)
    run = last_run(database)
    assert run.status == SyncRun.FAILED and run.message in message
    assert not list(small_disk.glob("*.part"))
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert_next_run_succeeds(remote, database, "-w", str(small_disk))
    assert sorted(p.name for p in small_disk.iterdir()) == []


def test_full_work_folder_during_the_records_fails_clearly_and_installs_no_record(
    make_instance, integrity, small_disk, settings, tmp_path
):
    """The records' batches, all written to the work folder before their transaction
    opens, fill it (DBSYNC_WORK_DIR on a 16 KiB tmpfs; the dumps elsewhere, -w): the
    run fails naming the folder and the lack of space, no record is installed (the
    objects, committed before, stay), nothing is left in the folder; with space again,
    the next run brings every record."""
    instance = make_instance(hostname="records-disk.example.org")
    instance.generate(stations=20, seed=17, records_per_series=200)
    instance.start()
    database = register(instance)
    dumps = tmp_path / "dumps"
    sync(database, "--no-records", "-w", str(dumps))
    objects_done = ("dbsync_syncrun", "dbsync_database")
    before = integrity.snapshot(exclude=objects_done)
    settings.DBSYNC_WORK_DIR = small_disk
    with pytest.raises(CommandError) as failure:
        sync(database, "-w", str(dumps))
    message = str(failure.value)
    for words in ("No space left on device", str(small_disk), "records' batches"):
        assert words in message, message
    integrity.assert_unchanged(before, exclude=objects_done)
    assert not Record.objects.exists()
    assert_lock_free(database)
    assert last_run(database).status == SyncRun.FAILED
    assert list(small_disk.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert_next_run_succeeds(instance, database, "-w", str(dumps))
    assert Record.objects.count() == instance.sql("SELECT count(*) FROM hcore_record")[0][0] > 0
