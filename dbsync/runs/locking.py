"""One sync of a remote at a time, and runs that outlive their process marked failed.

The lock is held by the process that works on a run and dies with it: a
PostgreSQL session advisory lock (valid across hosts), or on SQLite an exclusive
``flock`` on a file. After ``kill -9`` the lock is free at once, and the next run
marks the orphaned run record as failed.
"""

import fcntl
import logging
import os
import threading
import time
import zlib
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from dbsync.engine.errors import AlreadyRunning, RemoteRemoved
from dbsync.models import Database, SyncRun

from . import notify

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = zlib.crc32(b"dbsync.remote") & 0x7FFFFFFF
LOCK_POLL_SECONDS = 0.5


class LockBusy(AlreadyRunning):
    """The lock of the remote is held by another process (no run record was made)."""


@contextmanager
def remote_lock(database, wait=0):
    """Hold the lock of ``database`` for the duration; LockBusy if still taken after
    ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with _remote_lock(database):
                yield
            return
        except _Busy:
            if time.monotonic() >= deadline:
                raise LockBusy(busy_message(database)) from None
            time.sleep(LOCK_POLL_SECONDS)


class _Busy(Exception):
    """Raised by _remote_lock before it yields, never from the caller's block."""


@contextmanager
def _remote_lock(database):
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, database.pk])
            if not cursor.fetchone()[0]:
                raise _Busy
        session = connection.connection
        try:
            yield
        finally:
            # A lost session took its lock with it; a new one does not hold it.
            if connection.connection is session and not session.closed:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, database.pk]
                    )
        return
    lock_dir = settings.VAR_DIR / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"remote-{database.pk}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Busy from None
        yield
    finally:
        os.close(fd)


def busy_message(database):
    return (
        f"A sync of {database} is already running; wait for it to finish (see its run in "
        f"the admin, or `hcore_remotesyncdb` later)."
    )


@contextmanager
def lock_or_refuse(database, *, trigger, options, started_by=""):
    """Hold the lock of ``database``; if another process holds it, record a refused
    run and raise AlreadyRunning."""
    try:
        with remote_lock(database):
            yield
    except LockBusy:
        refuse(database, trigger=trigger, options=options, started_by=started_by)


def refuse(database, *, trigger, options, started_by=""):
    """Record a refused run of ``database`` and raise AlreadyRunning."""
    SyncRun.objects.create(
        database=database,
        status=SyncRun.REFUSED,
        trigger=trigger,
        started_by=started_by,
        options=options,
        finished_at=timezone.now(),
        message=busy_message(database),
    )
    raise AlreadyRunning(busy_message(database))


def reap_orphans(database, lock_held=True):
    """Mark failed the active runs of ``database`` whose process is gone.

    A run in the RUNNING state holds the lock, so with the lock in our hands it is
    dead (without the lock nothing can be said of it); a FETCHING or QUEUED run (the
    Celery fetch phase, which holds no lock) is dead when its heartbeat is older than
    DBSYNC_STALE_SECONDS.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.DBSYNC_STALE_SECONDS)
    reaped = 0
    for run in SyncRun.objects.filter(database=database, status__in=SyncRun.ACTIVE):
        beat = run.heartbeat or run.started_at
        if run.status == SyncRun.RUNNING:
            dead = lock_held
        else:
            dead = beat < stale_before
        if dead and run.status == SyncRun.FETCHING and lost_install(run):
            continue
        if dead:
            mark_interrupted(run, beat)
            reaped += 1
    return reaped


def lost_install(run):
    """A FETCHING run whose every dump is in storage was left by Celery without its
    install (a worker killed after storing a fetch's result, before the chord counted
    it; or the install waited in the queue past DBSYNC_STALE_SECONDS): send the install
    again, once the caller's transaction commits. The install itself is idempotent
    (``service.install_for_run``). Returns whether it was sent."""
    plan = run.fetch_plan or {}
    stored = plan.get("stored", [])
    jobs = {tuple(job) for job in plan.get("jobs", [])}
    if not jobs or not jobs <= {(meta["model"], meta["kind"]) for meta in stored}:
        return False
    from celery import current_app

    run.heartbeat = timezone.now()
    run.progress = "installing (its install was lost; sent again)"
    run.save(update_fields=["heartbeat", "progress"])
    logger.warning(
        "Sync run %s of %s has every dump stored but no install; sending it again",
        run.pk,
        run.database,
    )
    transaction.on_commit(
        lambda: current_app.send_task(
            "dbsync.tasks.install_run", args=[stored], kwargs={"run_id": run.pk}
        )
    )
    return True


def mark_interrupted(run, last_sign_of_life=None):
    beat = last_sign_of_life or run.heartbeat or run.started_at
    # The objects' transaction moves the remote's last_sync: a process killed during
    # (or after) that COMMIT may have installed them without recording it.
    installed = (
        Database.objects.filter(pk=run.database_id, last_sync__gte=run.started_at)
        .values_list("last_sync", flat=True)
        .first()
    )
    if installed:
        outcome = (
            f"Its objects were installed (committed {installed:%Y-%m-%d %H:%M:%S %Z}); its "
            f"records and files may not all be synced: the next run completes them."
        )
    else:
        outcome = "Nothing of it was installed."
    stopped = "the process working on this run stopped"
    if run.trigger != "command":  # Celery: a worker died, or the broker lost the tasks
        stopped = "the worker working on this run stopped, or its tasks were lost"
    run.status = SyncRun.FAILED
    run.finished_at = timezone.now()
    run.message = (
        f"Interrupted: {stopped} (last sign of life {beat:%Y-%m-%d %H:%M:%S %Z}). {outcome}"
    )
    run.save(update_fields=["status", "finished_at", "message"])
    logger.error("Sync run %s of %s was interrupted; marked failed", run.pk, run.database)
    notify.run_finished(run)


def reap_all():
    """Reap the orphaned runs of every remote (the periodic reap_stale_runs task).

    The lock of a remote is taken only to look: if it is busy, a process is working
    on the remote, and only its lock-less (fetching) runs can be judged.
    """
    reaped = 0
    remotes = Database.objects.filter(runs__status__in=SyncRun.ACTIVE).distinct()
    for database in remotes:
        try:
            with remote_lock(database), transaction.atomic():
                type(database).objects.select_for_update().get(pk=database.pk)
                reaped += reap_orphans(database, lock_held=True)
        except LockBusy:
            with transaction.atomic():
                type(database).objects.select_for_update().get(pk=database.pk)
                reaped += reap_orphans(database, lock_held=False)
    return reaped


def claim(database, *, status, trigger, options, started_by="", lock_held=True, kind=None):
    """Create the run record (a sync, or ``kind``), or record a refusal and raise
    AlreadyRunning; an offboarded remote raises RemoteRemoved (nothing is recorded: it
    has no runs any more)."""
    with transaction.atomic():
        current = type(database).objects.select_for_update().get(pk=database.pk)
        if current.is_removed:
            raise RemoteRemoved(current.removed_message())
        reap_orphans(database, lock_held=lock_held)
        if not SyncRun.objects.filter(database=database, status__in=SyncRun.ACTIVE).exists():
            return SyncRun.objects.create(
                database=database,
                status=status,
                trigger=trigger,
                started_by=started_by,
                options=options,
                heartbeat=timezone.now(),
                kind=kind or SyncRun.SYNC,
            )
    # Outside the transaction, which an exception would roll back with the record.
    refuse(database, trigger=trigger, options=options, started_by=started_by)


@contextmanager
def keep_alive(run_id, every=None):
    """Touch the run's heartbeat now, then every DBSYNC_HEARTBEAT_SECONDS until the
    block ends, so that a long download is not taken for a dead worker."""
    every = every or settings.DBSYNC_HEARTBEAT_SECONDS
    _touch(run_id)
    stop = threading.Event()

    def beat():
        try:
            while not stop.wait(every):
                _touch(run_id)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _touch(run_id)


def _touch(run_id):
    SyncRun.objects.filter(pk=run_id, status__in=SyncRun.ACTIVE).update(heartbeat=timezone.now())
