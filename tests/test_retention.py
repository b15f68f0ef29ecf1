"""Failed runs' dumps are kept within an age and a total size, oldest removed first:
in the storage (the Celery pipeline, ``runs.storage.prune`` through the reaper) and in
the command's work folders (``runs.service.prune_work_dirs``, after every run and by
the reaper). Real local storage, real folders, real PostgreSQL."""

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from dbsync.engine.workdir import default_work_dir
from dbsync.models import Database, SyncRun
from dbsync.runs import service, storage

pytestmark = pytest.mark.django_db

KB = 1024


@pytest.fixture
def local_storage(settings, tmp_path):
    settings.DBSYNC_STORAGE = "local"
    settings.DBSYNC_STORAGE_ROOT = tmp_path / "storage"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_STORAGE_KEEP_DAYS = 7
    storage.get_storage.cache_clear()
    yield
    storage.get_storage.cache_clear()


def remote(name):
    return Database.objects.create(name=name, hostname=f"{name}.example.org")


def failed_run(database, days_ago, size, tmp_path, status=SyncRun.FAILED):
    """A run started ``days_ago`` days ago with one stored dump of ``size`` bytes."""
    run = SyncRun.objects.create(database=database, status=status, heartbeat=timezone.now())
    SyncRun.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(days=days_ago))
    dump = tmp_path / f"hcore.station-{run.pk}.json"
    dump.write_bytes(b"x" * size)
    storage.save_dump(run.pk, dump)
    return run.pk


def stored_runs():
    try:
        dirs, _files = storage.get_storage().listdir(storage.RUNS)
    except FileNotFoundError:
        return set()
    return {int(d) for d in dirs}


def test_storage_keeps_failed_runs_dumps_within_age_and_size_oldest_first(
    local_storage, settings, tmp_path
):
    settings.DBSYNC_STORAGE_KEEP_BYTES = 250 * KB
    db = remote("a")
    too_old = failed_run(db, 9, 10 * KB, tmp_path)
    oldest = failed_run(db, 3, 100 * KB, tmp_path)
    middle = failed_run(db, 2, 100 * KB, tmp_path)
    newest = failed_run(db, 1, 100 * KB, tmp_path)
    active = failed_run(db, 4, 500 * KB, tmp_path, status=SyncRun.FETCHING)
    result = service.reap_stale_runs()
    # 300 KB of failed runs within the age, over 250 KB: the oldest goes; the active
    # run's dumps are neither removed nor counted.
    assert stored_runs() == {middle, newest, active}
    assert result["pruned"] == 2
    assert too_old not in stored_runs() and oldest not in stored_runs()


def test_no_size_bound_keeps_every_recent_run(local_storage, settings, tmp_path):
    settings.DBSYNC_STORAGE_KEEP_BYTES = 0
    db = remote("a")
    runs = {failed_run(db, days, 100 * KB, tmp_path) for days in (1, 2, 3)}
    service.reap_stale_runs()
    assert stored_runs() == runs


def fill(folder, size, age_days):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fetch.json").write_text("{}")
    (folder / "hcore.station.json").write_bytes(b"x" * size)
    when = time.time() - age_days * 86400
    for item in folder.iterdir():
        os.utime(item, (when, when))


def test_work_folders_are_kept_within_age_and_size_but_not_of_a_running_remote(
    local_storage, settings
):
    settings.DBSYNC_STORAGE_KEEP_BYTES = 250 * KB
    old, older, recent, newest, busy = (remote(n) for n in "old older recent newest busy".split())
    fill(default_work_dir(old), 10 * KB, 8)
    fill(default_work_dir(older), 100 * KB, 3)
    fill(default_work_dir(recent), 100 * KB, 2)
    fill(default_work_dir(newest), 100 * KB, 1)
    fill(default_work_dir(busy), 500 * KB, 30)
    SyncRun.objects.create(database=busy, status=SyncRun.RUNNING)
    stranger = Path(settings.DBSYNC_WORK_DIR) / "run7-fetch-abcd1234"  # not a remote's folder
    fill(stranger, 10 * KB, 30)
    emptied = service.prune_work_dirs()
    assert set(emptied) == {default_work_dir(old), default_work_dir(older)}
    kept = [recent, newest, busy]
    assert all((default_work_dir(db) / "hcore.station.json").exists() for db in kept)
    assert not default_work_dir(old).exists() and not default_work_dir(older).exists()
    assert (stranger / "hcore.station.json").exists()


def test_folders_a_failed_run_did_not_leave_are_kept_for_resume(local_storage, settings):
    """A --fetch-only run's dumps and files put there by hand (a remote's dumpdata) wait
    for an operator's --resume, however old or large: only a failed run's are pruned."""
    settings.DBSYNC_STORAGE_KEEP_BYTES = 1 * KB
    failed, fetched, handmade = (remote(n) for n in ("failed", "fetched", "handmade"))
    for database in (failed, fetched, handmade):
        fill(default_work_dir(database), 100 * KB, 30)
    (default_work_dir(fetched) / "fetch.json").write_text('{"fetch_only": true}')
    (default_work_dir(handmade) / "fetch.json").unlink()
    assert service.prune_work_dirs() == [default_work_dir(failed)]
    assert (default_work_dir(fetched) / "hcore.station.json").exists()
    assert (default_work_dir(handmade) / "hcore.station.json").exists()
