"""The Celery pipeline of a sync: thin tasks around ``dbsync.runs.service``.

    sync_remote(database_id)          claim the remote (or record a refusal)
      -> start_run(run_id)            manifest, schema check, full or incremental
        -> chord(fetch_dump(run_id, model, kind) per model [+ key listings],
                 install_run(run_id)) with run_failed as its error callback

Arguments are ids and plain values; dumps travel through ``dbsync.runs.storage``, only
their metadata through the result backend. The decorators hold the delivery
policy: a fetch retries transient HTTP failures itself and may run twice (it
overwrites its own dump); an install may be redelivered after its worker died (its
transaction rolled back; the run is then marked failed, and a run that already
ended is left alone).
"""

import inspect
import logging

from celery import Task, chord, group, shared_task
from celery.exceptions import Retry
from celery.utils import uuid
from django.conf import settings

from dbsync.engine.errors import (
    AlreadyRunning,
    DeadlineExceeded,
    RemoteError,
    RemoteRemoved,
    SyncError,
    TransientRemoteError,
)
from dbsync.engine.sync import DUMP, SyncOptions
from dbsync.models import Database, SyncRun

from . import service, verification

logger = logging.getLogger(__name__)


def run_log(run_id):
    """The install's progress messages, as log records of the worker."""

    def log(message, level=1):
        logger.log(logging.INFO if level <= 1 else logging.DEBUG, "run %s: %s", run_id, message)

    return log


class RunTask(Task):
    """A task that works on one run: when it gives up, the run ends with the reason.

    Recorded here, before the result backend hears of the failure, so that the
    run's message names the model and the error rather than the chord's summary.
    A retry is not a failure (Retry passes through).
    """

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            self.record_failure(exc, args, kwargs)
            raise

    def record_failure(self, exc, args, kwargs):
        try:
            arguments = inspect.signature(self.run).bind(*args, **kwargs).arguments
        except TypeError:
            return
        run_id = arguments.get("run_id")
        if run_id is None:
            return
        what = f"Fetching {arguments['model_label']}" if "model_label" in arguments else self.name
        reason = str(exc) if isinstance(exc, SyncError) else repr(exc)
        service.fail_run(run_id, f"{what} failed: {reason}")


@shared_task(name="dbsync.tasks.sync_remote", throws=(SyncError,))
def sync_remote(database_id, trigger="beat", started_by="", full=False, backup=None):
    """Sync one remote: claim it, then start the fetch-and-install pipeline (``backup``
    None: back up as ``DBSYNC_TASK_BACKUP`` says)."""
    database = Database.objects.filter(pk=database_id).first()
    if database is None or not database.is_active:
        logger.warning("Remote %s is gone or inactive; not syncing it", database_id)
        return {"status": "skipped", "database": database_id}
    options = SyncOptions.for_task(database, trigger, started_by, full, backup)
    try:
        run = service.claim_run(database, options)
    except AlreadyRunning as exc:
        logger.warning("Not syncing %s: %s", database, exc)
        return {"status": SyncRun.REFUSED, "database": database_id, "message": str(exc)}
    try:
        return start_run(run.pk)
    except Exception as exc:
        service.fail_run(run.pk, f"Could not start the sync: {exc}")  # no-op if recorded
        raise


@shared_task(name="dbsync.tasks.start_run", base=RunTask, throws=(SyncError,))
def start_run(run_id):
    """Plan a claimed run's fetches and start them, with the install as their chord."""
    fetch_plan = service.plan_run(run_id, log=run_log(run_id))
    if fetch_plan is None:
        return {"run": run_id, "status": "already started"}
    install_id = uuid()
    SyncRun.objects.filter(pk=run_id).update(task_id=install_id)
    body = install_run.s(run_id=run_id).set(task_id=install_id)
    if not fetch_plan.jobs:
        # Nothing changed at a capture remote: no fetch, the install moves the cursors
        # (a chord needs a header).
        body.clone(args=([],)).on_error(run_failed.s(run_id=run_id)).apply_async()
    else:
        header = group(fetch_dump.si(run_id, model, kind) for model, kind in fetch_plan.jobs)
        chord(header)(body.on_error(run_failed.s(run_id=run_id)))
    logger.info("Run %s: %d fetches started", run_id, len(fetch_plan.jobs))
    return {"run": run_id, "status": SyncRun.FETCHING, "install_task": install_id}


@shared_task(
    name="dbsync.tasks.fetch_dump",
    base=RunTask,
    throws=(SyncError,),
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(TransientRemoteError,),
    max_retries=settings.DBSYNC_TASK_MAX_RETRIES,
    retry_backoff=settings.DBSYNC_TASK_RETRY_BACKOFF,
    retry_backoff_max=600,
    retry_jitter=True,
)
def fetch_dump(run_id, model_label, kind=DUMP):
    """Fetch one model's dump (or key listing) of a run into storage."""
    try:
        meta = service.fetch_for_run(run_id, model_label, kind)
    except RemoteError as exc:
        # The client has retried at once and given up for now; the task retries later.
        # Not past a deadline: a remote that slow would only use the run's time again.
        if isinstance(exc.__cause__, TransientRemoteError) and not isinstance(
            exc, TransientRemoteError | DeadlineExceeded
        ):
            raise TransientRemoteError(str(exc)) from exc
        raise
    return dict(meta, worker=fetch_dump.request.hostname or "")


@shared_task(
    name="dbsync.tasks.install_run",
    base=RunTask,
    throws=(SyncError,),
    acks_late=True,
    reject_on_worker_lost=True,
)
def install_run(fetched, run_id):
    """Install a run's fetched dumps (the chord's body: ``fetched`` is the fetches'
    metadata)."""
    result = service.install_for_run(run_id, fetched, log=run_log(run_id))
    if result is None:
        return {"run": run_id, "installed": False}
    return {"run": run_id, "installed": True, "summary": result.summary()}


@shared_task(name="dbsync.tasks.run_failed")
def run_failed(request, exc, traceback, run_id):
    """Error callback of the pipeline: the run failed (unless already recorded)."""
    service.fail_run(run_id, f"The sync pipeline failed: {exc}")


@shared_task(name="dbsync.tasks.verify_remote", throws=(SyncError,))
def verify_remote(database_id, trigger="beat", started_by="", repair=False):
    """Verify (or repair) one remote's replica in this worker: ``verification.run_verify``,
    the path of ``hcore_remotesyncdb --verify``."""
    database = Database.objects.filter(pk=database_id).first()
    if database is None or not database.is_active:
        logger.warning("Remote %s is gone or inactive; not verifying it", database_id)
        return {"status": "skipped", "database": database_id}
    options = SyncOptions.for_task(database, trigger, started_by)
    try:
        result = verification.run_verify(database, options, repair=repair, log=run_log("verify"))
    except AlreadyRunning as exc:
        logger.warning("Not verifying %s: %s", database, exc)
        return {"status": SyncRun.REFUSED, "database": database_id, "message": str(exc)}
    return {"database": database_id, "state": result.state, "summary": result.summary()}


def enqueue_verify(database, trigger="admin", started_by="", repair=False):
    """Queue a verification (or repair) of ``database`` now (the admin's action)."""
    if not database.is_active:
        raise SyncError(f"The remote {database} is inactive; activate it first.")
    try:
        return verify_remote.delay(database.pk, trigger, started_by, repair)
    except Exception as exc:  # noqa: BLE001 - any broker failure: tell the user
        raise SyncError(
            f"Could not queue the verification of {database}: the task queue is unreachable "
            f"({exc})."
        ) from exc


@shared_task(name="dbsync.tasks.reap_stale_runs")
def reap_stale_runs():
    """Mark failed the runs whose worker died; prune dumps of old failed runs."""
    return service.reap_stale_runs()


def enqueue_sync(database, trigger="admin", started_by="", full=False, backup=None):
    """Start a Celery sync of ``database`` now (the admin's "Sync now"); ``backup``
    True takes a backup first even if ``DBSYNC_TASK_BACKUP`` is off.

    Returns the AsyncResult of the task that starts the pipeline. If the remote is
    busy, the refusal is recorded and AlreadyRunning raised, with a message for the
    user. If the broker cannot be reached, the run is recorded as failed.
    """
    if database.is_removed:
        raise RemoteRemoved(database.removed_message())
    if not database.is_active:
        raise SyncError(f"The remote {database} is inactive; activate it first.")
    options = SyncOptions.for_task(database, trigger, started_by, full, backup)
    run = service.claim_run(database, options)
    try:
        return start_run.delay(run.pk)
    except Exception as exc:  # noqa: BLE001 - any broker failure: record it, tell the user
        service.fail_run(run.pk, f"Could not queue the sync: {exc}")
        raise SyncError(
            f"Could not queue the sync of {database}: the task queue is unreachable ({exc})."
        ) from exc
