"""The backup taken before a sync (dbsync/engine/backup.py): restored with pg_restore
into a scratch database, it is the local database as it was before the run, table by
table; a dump that fails its check is refused and the sync does not start; backups are
kept per remote and by age."""

import io
import os
import shutil
import sqlite3
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from dbsync.engine.backup import STAMP_FORMAT, BackupError, check_sqlite_copy, prune, remote_slug
from dbsync.models import SyncRun
from tests.instance import PG_BASE, Instance, admin_execute
from tests.reliability.conftest import snapshot
from tests.test_sync import last_run, register, sync

with_database = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="backup.example.org")
    instance.generate(stations=8, seed=11, files_per_station=0)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture
def backup_dir(settings, tmp_path):
    settings.DBSYNC_BACKUP_DIR = tmp_path / "backups"
    return settings.DBSYNC_BACKUP_DIR


@pytest.fixture
def scratch_database():
    """The name of an empty PostgreSQL database, dropped afterwards."""
    name = f"dbsync_restore_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    yield name
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sync_with_backup(database, *args):
    out = io.StringIO()
    call_command(
        "hcore_remotesyncdb",
        "-r",
        database.name,
        "--pg-dump",
        *args,
        stdout=out,
        stderr=io.StringIO(),
    )
    return out.getvalue()


@with_database
def test_the_backup_restored_is_the_database_before_the_run(remote, backup_dir, scratch_database):
    first = register(remote, name="first")
    sync(first)  # the local database holds replicated data before the run under test
    second = register(remote, name="second")
    before = snapshot()

    out = sync_with_backup(second)

    assert snapshot() != before  # the run changed the database...
    path = last_run(second).backup_path
    assert path in out and os.path.basename(path).endswith("-before-second.pgdump")
    subprocess.run(
        ["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={PG_BASE}/{scratch_database}"]
        + [path],
        check=True,
        capture_output=True,
    )
    with psycopg.connect(f"{PG_BASE}/{scratch_database}") as restored:
        # ...and the backup holds it as it was before, every hcore and dbsync table
        assert snapshot(cursor=restored.cursor()) == before
    assert before["hcore_station"][0] > 0


def pg_dump_that(tmp_path, monkeypatch, script):
    """A ``pg_dump`` first on PATH that runs the real one, then does ``script`` to the
    file it wrote (``$f``): a fake, because a real pg_dump that exits 0 does not leave
    a short or incomplete file on demand (a full disk or a killed process does)."""
    real = shutil.which("pg_dump")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --file=*) f="${a#--file=}";; esac; done\n'
        f'{real} "$@" $EXTRA || exit $?\n'
        f"{script}\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize(
    "script, extra, error",
    [
        # the table of contents (at the start) survives, so --list does not see the end cut
        (
            'head -c $(($(wc -c < "$f") - 100)) "$f" > "$f.cut" && mv "$f.cut" "$f"',
            "",
            f"(pg_restore --file={os.devnull}): pg_restore: error: could not read",
        ),
        ("", "--exclude-table-data=hcore_station", "no data of 1 table(s): hcore_station"),
    ],
    ids=["cut-short", "a-table-without-data"],
)
@with_database
def test_a_backup_that_fails_its_check_is_removed_and_the_sync_does_not_start(
    remote, backup_dir, tmp_path, monkeypatch, script, extra, error
):
    first = register(remote, name="first")
    sync(first, "-e", "hcore.Timeseries")
    pg_dump_that(tmp_path, monkeypatch, script)
    monkeypatch.setenv("EXTRA", extra)
    second = register(remote, name="second")
    before = snapshot()

    with pytest.raises(CommandError) as raised:
        sync_with_backup(second)

    assert "The backup failed its check" in str(raised.value) and error in str(raised.value)
    assert list(backup_dir.iterdir()) == []  # nothing looks like a backup, nothing half
    assert snapshot() == before
    run = last_run(second)
    assert run.status == SyncRun.FAILED and "failed its check" in run.message


def make_backups(folder, remote, ages_in_days, now):
    paths = []
    for age in ages_in_days:
        stamp = (now - timedelta(days=age)).strftime(STAMP_FORMAT)
        path = folder / f"test-dbsync-{stamp}-before-{remote}.pgdump"
        path.write_bytes(b"x")
        paths.append(path)
    return paths


def test_retention_is_per_remote_and_by_age(tmp_path):
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    a = make_backups(tmp_path, "a", [0, 1, 2, 3], now)
    a_b = make_backups(tmp_path, "a-b", [0.5, 1.5, 2.5, 40], now)
    b = make_backups(tmp_path, "b", [0.2, 31], now)
    foreign = [
        tmp_path / "mine-20201010T101010000000-before-a.pgdump.txt",
        tmp_path / "x-20201310T101010000000-before-a.pgdump",  # no 13th month
        tmp_path / "notes",
    ]
    for path in foreign:
        path.write_text("not a backup")
    stale, fresh = tmp_path / "x.pgdump.partial", tmp_path / "y.pgdump.partial"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    two_days_ago = (now - timedelta(days=2)).timestamp()
    os.utime(stale, (two_days_ago, two_days_ago))
    os.utime(fresh, (now.timestamp(), now.timestamp()))

    deleted = prune(tmp_path, "a", keep=2, max_age_days=30, now=now)

    # "a" keeps its 2 newest; "a-b" (not "a"'s) loses only what is over 30 days old
    assert sorted(deleted) == sorted([a[2], a[3], a_b[3], b[1], stale])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in [a[0], a[1], *a_b[:3], b[0], *foreign, fresh])


def test_no_age_bound_with_zero_and_the_newest_backup_always_stays(tmp_path):
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    old = make_backups(tmp_path, "a", [100, 200], now)
    assert prune(tmp_path, "a", keep=7, max_age_days=0, now=now) == []
    # the age bound never takes the remote's newest one (its clock may be behind)
    assert prune(tmp_path, "a", keep=7, max_age_days=30, now=now) == [old[1]]


@with_database
def test_two_remotes_keep_their_own_newest_backups(remote, backup_dir, settings):
    settings.DBSYNC_BACKUP_KEEP = 1
    a, a_b = register(remote, name="a"), register(remote, name="a-b")
    sync_with_backup(a_b, "-e", "hcore.Timeseries")
    sync_with_backup(a, "-e", "hcore.Timeseries")
    sync_with_backup(a, "-e", "hcore.Timeseries")

    newest = {last_run(a).backup_path, last_run(a_b).backup_path}
    assert {str(p) for p in backup_dir.iterdir()} == newest


def test_remotes_named_in_other_scripts_keep_their_own_backups(tmp_path):
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    assert remote_slug("Αθήνα") != remote_slug("Πάτρα")
    athens = make_backups(tmp_path, remote_slug("Αθήνα"), [0, 1], now)
    patras = make_backups(tmp_path, remote_slug("Πάτρα"), [0, 1], now)
    assert prune(tmp_path, "Αθήνα", keep=1, max_age_days=30, now=now) == [athens[1]]
    assert all(p.exists() for p in patras)


def test_a_damaged_sqlite_copy_fails_its_check(tmp_path):
    """A real SQLite file, damaged on disk as a failing disk would (bytes overwritten)."""
    path = tmp_path / "copy.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE hcore_station (id integer primary key, name text)")
        db.executemany("INSERT INTO hcore_station (name) VALUES (?)", [("x" * 500,)] * 200)
        db.execute("CREATE INDEX station_name ON hcore_station (name)")
    db.close()
    check_sqlite_copy(path, ["hcore_station"])  # whole, it passes
    with pytest.raises(BackupError, match="no table dbsync_database"):
        check_sqlite_copy(path, ["hcore_station", "dbsync_database"])
    with path.open("r+b") as damaged:
        damaged.seek(4096 * 3 + 100)
        damaged.write(b"\xff" * 2000)

    with pytest.raises(BackupError, match=r"failed its check \(PRAGMA integrity_check\): "):
        check_sqlite_copy(path, ["hcore_station"])
