"""A sync as a run: the record of it (``SyncRun``), its lock, and its steps as Celery
runs them. The sync itself is ``dbsync.engine.sync``; this module claims the remote,
records the run's end whatever it is, and hands the dumps from task to task through
``dbsync.runs.storage``:

    claim_run -> plan_run -> fetch_for_run (one per model) -> install_for_run

``run_sync`` is the command's: claim, sync in one process, record.
"""

import logging
import shutil
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dbsync.engine.deadlines import RunDeadline
from dbsync.engine.errors import SyncError
from dbsync.engine.planner import make_plan
from dbsync.engine.progress import quiet
from dbsync.engine.remote import RemoteClient
from dbsync.engine.result import SyncResult
from dbsync.engine.sync import (
    FetchPlan,
    SyncOptions,
    fetch_job,
    install_dumps,
    plan_fetch,
    sync,
)
from dbsync.models import SyncRun

from . import notify, storage
from .locking import (
    LockBusy,
    claim,
    keep_alive,
    lock_or_refuse,
    mark_interrupted,
    reap_all,
    remote_lock,
)

logger = logging.getLogger(__name__)

MAX_RECORDED_ERRORS = 1000


def run_sync(database, options, log=quiet):
    """Sync ``database`` (a registered remote); return the SyncResult or raise SyncError."""
    plan = make_plan(options.app_label, [name for name in options.exclude if name])
    with lock_or_refuse(
        database,
        trigger=options.trigger,
        options=options.as_json(),
        started_by=options.started_by,
    ):
        run = claim(
            database,
            status=SyncRun.RUNNING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
        )
        result = SyncResult(remote=str(database), dry_run=options.dry_run)
        with recorded(run, result):
            sync(
                database,
                plan,
                options,
                result,
                log,
                on_fetch_planned=lambda server_time, full: _record_fetch(run, server_time, full),
                deadline=RunDeadline.since(run.started_at),
            )
        return result


def _record_fetch(run, server_time, full):
    run.remote_time = server_time
    run.full = full
    run.save(update_fields=["remote_time", "full"])


@contextmanager
def recorded(run, result):
    """Record the run's end, whatever it is, and re-raise a failure."""
    with failures_recorded(run, result):
        yield
    finish(run, SyncRun.SUCCEEDED, result, result.summary())


@contextmanager
def failures_recorded(run, result):
    """Record a failure of the block as the run's end, and re-raise it."""
    try:
        yield
    except SyncError as exc:
        finish(run, SyncRun.FAILED, result, str(exc))
        logger.error("Sync of %s failed: %s", run.database, exc)
        raise
    except SoftTimeLimitExceeded:
        finish(
            run,
            SyncRun.FAILED,
            result,
            f"Stopped: the run took longer than its time limit (DBSYNC_TASK_TIME_LIMIT="
            f"{settings.DBSYNC_TASK_TIME_LIMIT} s). Nothing was installed.",
        )
        logger.error("Sync of %s stopped at its time limit", run.database)
        raise
    except BaseException as exc:
        finish(run, SyncRun.FAILED, result, f"Unexpected error: {exc!r}")
        logger.exception("Sync of %s failed unexpectedly", run.database)
        raise


def finish(run, status, result, message):
    run.status = status
    run.finished_at = timezone.now()
    run.model_counts = result.counts
    run.errors = [p.as_dict() for p in result.problems[:MAX_RECORDED_ERRORS]]
    run.message = message
    run.backup_path = result.backup_path
    run.dry_run = result.dry_run
    run.progress = ""
    run.save()
    notify.run_finished(run)


def fail_run(run_id, message):
    """Mark a run failed unless it has already ended (errbacks, failed fetches)."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().select_related("database").filter(pk=run_id)
        run = run.first()
        if run is None or not run.is_active:  # ended, or deleted with its remote
            return False
        result = SyncResult(remote=str(run.database), dry_run=run.dry_run)
        result.counts = run.model_counts
        finish(run, SyncRun.FAILED, result, message)
    logger.error("Sync run %s of %s failed: %s", run_id, run.database, message)
    return True


# --- the Celery pipeline: the same steps, one task each -------------------------------------


def claim_run(database, options):
    """A new run of ``database`` in the FETCHING state; a refusal is recorded and
    raised (AlreadyRunning) when the remote is busy.

    The lock is taken only for the claim: with it in hand, a RUNNING run of the
    remote is known dead and is reaped. The fetch phase holds no lock (it changes
    nothing here) and shows it is alive through the run's heartbeat.
    """
    with lock_or_refuse(
        database,
        trigger=options.trigger,
        options=options.as_json(),
        started_by=options.started_by,
    ):
        return claim(
            database,
            status=SyncRun.FETCHING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
        )


def plan_run(run_id, log=quiet):
    """Read the manifest and decide the run's fetches; return the FetchPlan, or None
    when the run is not waiting for its plan (a duplicate delivery)."""
    run = _get_run(run_id)
    if run is None or run.status != SyncRun.FETCHING or run.fetch_plan:
        logger.warning("Run %s is gone, has ended or is planned; not planning it", run_id)
        return None
    database = run.database
    options = SyncOptions(**run.options)
    with failures_recorded(run, SyncResult(remote=str(database))):
        plan = make_plan(options.app_label, options.exclude)
        client = RemoteClient(
            database, port=options.port, run_deadline=RunDeadline.since(run.started_at)
        )
        fetch_plan = plan_fetch(database, plan, options, client, log)
    run.fetch_plan = fetch_plan.as_json()
    run.heartbeat = timezone.now()
    run.progress = f"fetching {len(fetch_plan.jobs)} dumps"
    run.save(update_fields=["fetch_plan", "heartbeat", "progress"])
    _record_fetch(run, fetch_plan.server_time, fetch_plan.full)
    return fetch_plan


def fetch_for_run(run_id, model_label, kind):
    """Fetch one dump of a run into storage; return its metadata (small, JSON).

    Idempotent: the same run and model always give the same storage name, which a
    repeated delivery overwrites. A run that has already ended fetches nothing.
    """
    run = _get_run(run_id)
    if run is None or run.status != SyncRun.FETCHING:
        return {"model": model_label, "kind": kind, "skipped": "the run has ended"}
    fetch_plan = FetchPlan.from_json(run.fetch_plan)
    options = SyncOptions(**run.options)
    client = RemoteClient(
        run.database,
        port=options.port,
        retries=settings.DBSYNC_TASK_HTTP_RETRIES,
        run_deadline=RunDeadline.since(run.started_at),
    )
    started = timezone.now()
    with keep_alive(run_id), _temp_dir(f"run{run_id}-fetch-") as tmp:
        path, _size = fetch_job(client, fetch_plan, model_label, kind, tmp)
        stored = storage.save_dump(run_id, path)
    meta = {
        "model": model_label,
        "kind": kind,
        **stored,
        "started": started.isoformat(),
        "finished": timezone.now().isoformat(),
    }
    _record_stored(run_id, meta)
    return meta


def _record_stored(run_id, meta):
    """Note a stored dump in the run's fetch plan, so that the reaper can still send
    the install of a run whose chord Celery lost (``locking.lost_install``). Under a
    row lock: a run's fetches finish concurrently."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or not run.fetch_plan:
            return
        key = (meta["model"], meta["kind"])
        stored = [m for m in run.fetch_plan.get("stored", []) if (m["model"], m["kind"]) != key]
        run.fetch_plan["stored"] = [*stored, meta]
        run.save(update_fields=["fetch_plan"])


def install_for_run(run_id, fetched, log=quiet):
    """Install a run's fetched dumps: the same install as the command's.

    Holds the remote's lock. A run that has already ended is left alone (a repeated
    delivery after success is a no-op); a run found RUNNING was being installed by
    a worker that died (its transaction rolled back): it is marked failed, and not
    retried, so that an install that kills its worker cannot loop.
    """
    run = _get_run(run_id)
    if run is None:
        return None
    database = run.database
    try:
        with remote_lock(database, wait=settings.DBSYNC_LOCK_WAIT_SECONDS):
            run.refresh_from_db()
            if run.status == SyncRun.RUNNING:
                mark_interrupted(run)
                return None
            if run.status != SyncRun.FETCHING:
                logger.warning(
                    "Run %s of %s is %s; nothing to install", run_id, database, run.status
                )
                return None
            run.status = SyncRun.RUNNING
            run.heartbeat = timezone.now()
            run.progress = "installing"
            run.save(update_fields=["status", "heartbeat", "progress"])
            result = _install_run(run, fetched, log)
    except LockBusy:
        logger.warning(
            "Run %s of %s: the remote is locked by another process; not installing",
            run_id,
            database,
        )
        return None
    storage.delete_run(run_id)
    return result


def _get_run(run_id):
    run = SyncRun.objects.select_related("database").filter(pk=run_id).first()
    if run is None:
        logger.warning("Run %s no longer exists (its remote was deleted?)", run_id)
    return run


def _install_run(run, fetched, log):
    database = run.database
    options = SyncOptions(**run.options)
    result = SyncResult(remote=str(database), dry_run=options.dry_run)
    run.fetch_plan = dict(run.fetch_plan, fetched=fetched)
    with recorded(run, result):
        fetch_plan = FetchPlan.from_json(run.fetch_plan)
        result.full = fetch_plan.full
        _check_complete(fetch_plan, fetched)
        plan = make_plan(options.app_label, options.exclude)
        with _temp_dir(f"run{run.pk}-install-") as work:
            local = storage.local_copies(run.pk, fetched, work)
            paths = {(meta["model"], meta["kind"]): local[meta["name"]] for meta in fetched}
            client = RemoteClient(
                database, port=options.port, run_deadline=RunDeadline.since(run.started_at)
            )
            install_dumps(database, plan, options, result, fetch_plan, paths, work, client, log)
    return result


def _check_complete(fetch_plan, fetched):
    got = {(meta["model"], meta["kind"]) for meta in fetched if "name" in meta}
    missing = [f"{m} ({kind})" for m, kind in fetch_plan.jobs if (m, kind) not in got]
    if missing:
        raise SyncError(f"The fetch is incomplete: no dump of {', '.join(missing)}.")


@contextmanager
def _temp_dir(prefix):
    root = Path(settings.DBSYNC_WORK_DIR)
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reap_stale_runs():
    """Mark failed the runs whose worker died (periodic task), and prune old dumps."""
    reaped = reap_all()
    active = set(SyncRun.objects.filter(status__in=SyncRun.ACTIVE).values_list("pk", flat=True))
    pruned = storage.prune(timedelta(days=settings.DBSYNC_STORAGE_KEEP_DAYS), keep=active)
    return {"reaped": reaped, "pruned": pruned}
