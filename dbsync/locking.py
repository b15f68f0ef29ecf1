"""One sync of a remote at a time, and runs that outlive their process marked failed.

The lock is held by the process that works on a run and dies with it: a
PostgreSQL session advisory lock (valid across hosts), or on SQLite an exclusive
``flock`` on a file. After ``kill -9`` the lock is free at once, and the next run
marks the orphaned run record as failed.
"""

import fcntl
import logging
import os
import zlib
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .errors import AlreadyRunning
from .models import SyncRun

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = zlib.crc32(b"dbsync.remote") & 0x7FFFFFFF


@contextmanager
def remote_lock(database):
    """Hold the lock of ``database`` for the duration; AlreadyRunning if taken."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, database.pk])
            if not cursor.fetchone()[0]:
                raise AlreadyRunning(busy_message(database))
        try:
            yield
        finally:
            if connection.connection is not None:
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
            raise AlreadyRunning(busy_message(database)) from None
        yield
    finally:
        os.close(fd)


def busy_message(database):
    return (
        f"A sync of {database} is already running; wait for it to finish (see its run in "
        f"the admin, or `hcore_remotesyncdb` later)."
    )


def reap_orphans(database, lock_held=True):
    """Mark failed the active runs of ``database`` whose process is gone.

    A run in the RUNNING state holds the lock, so with the lock in our hands it is
    dead; a FETCHING run (the Celery fetch phase, which holds no lock) is dead when
    its heartbeat is older than DBSYNC_STALE_SECONDS.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.DBSYNC_STALE_SECONDS)
    reaped = 0
    for run in SyncRun.objects.filter(database=database, status__in=SyncRun.ACTIVE):
        beat = run.heartbeat or run.started_at
        dead = (run.status == SyncRun.RUNNING and lock_held) or beat < stale_before
        if dead:
            run.status = SyncRun.FAILED
            run.finished_at = timezone.now()
            run.message = (
                f"Interrupted: the process working on this run stopped (last sign of life "
                f"{beat:%Y-%m-%d %H:%M:%S %Z}). Nothing of it was installed."
            )
            run.save(update_fields=["status", "finished_at", "message"])
            logger.error("Sync run %s of %s was interrupted; marked failed", run.pk, database)
            reaped += 1
    return reaped


def claim(database, *, status, trigger, options, started_by="", lock_held=True):
    """Create the run record, or record a refusal and raise AlreadyRunning."""
    with transaction.atomic():
        type(database).objects.select_for_update().get(pk=database.pk)
        reap_orphans(database, lock_held=lock_held)
        if SyncRun.objects.filter(database=database, status__in=SyncRun.ACTIVE).exists():
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
        return SyncRun.objects.create(
            database=database,
            status=status,
            trigger=trigger,
            started_by=started_by,
            options=options,
            heartbeat=timezone.now(),
        )
