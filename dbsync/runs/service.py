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
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from dbsync.engine import workdir
from dbsync.engine.deadlines import RunDeadline
from dbsync.engine.diskbudget import DiskBudget
from dbsync.engine.errors import DeleteGuardError, SyncError
from dbsync.engine.guard import Approval
from dbsync.engine.planner import make_plan
from dbsync.engine.progress import FETCH, quiet
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
from dbsync.engine.workdir import default_work_dir
from dbsync.models import Database, SyncRun

from . import notify, progress, storage
from .diskbudget import RunDiskBudget
from .locking import (
    LockBusy,
    claim,
    keep_alive,
    lock_or_refuse,
    mark_interrupted,
    reap_all,
    remote_lock,
)
from .reverts import prune_journals, start_journal

logger = logging.getLogger(__name__)

MAX_RECORDED_ERRORS = 1000
RECORD_ATTEMPTS = 10  # seconds apart: a restart of the local database takes a few


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
        try:
            # The progress writer stops before the run's end is recorded.
            with (
                recorded(run, result),
                approval_in_hand(run, result) as approval,
                progress.recording(run.pk, log) as run_log,
            ):
                start_journal(run, options, result, run_log)
                sync(
                    database,
                    plan,
                    options,
                    result,
                    run_log,
                    on_fetch_planned=lambda server_time, full: _record_fetch(
                        run, server_time, full
                    ),
                    approval=approval,
                    deadline=RunDeadline.since(run.started_at),
                )
        finally:
            # A command has no reaper to do it (cron), and its failed run may have
            # left dumps (for --resume): the retention is applied after every run.
            try:
                prune_work_dirs()
            except (DatabaseError, OSError) as exc:
                logger.warning("Could not apply the retention to the work folders: %s", exc)
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
        if isinstance(exc, DeleteGuardError):
            run.deletions = exc.deletions  # an operator may approve them once
        finish_failed(run, result, str(exc))
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
        finish_failed(run, result, f"Unexpected error: {exc!r}")
        logger.exception("Sync of %s failed unexpectedly", run.database)
        raise


def finish_failed(run, result, message):
    """Record a run's failure. A failure may come from the local database itself (it
    restarted, and may still be starting): the record is tried again for up to
    RECORD_ATTEMPTS seconds, on a new connection; then the run is left as it is, for the
    next run of the remote (or the reaper) to mark interrupted, and the original error
    goes on, not this one."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            finish(run, SyncRun.FAILED, result, message)
            return
        except (OperationalError, InterfaceError) as exc:  # the connection, not the data
            if connection.in_atomic_block or attempt == RECORD_ATTEMPTS:
                logger.error(
                    "Could not record the failure of run %s of %s: %s; the next run of the "
                    "remote (or the reaper) will mark it interrupted",
                    run.pk,
                    run.database,
                    exc,
                )
                return
            connection.close()  # not reused: the next attempt connects again
            time.sleep(1)


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
    try:
        prune_journals(run.database)
    except (DatabaseError, OSError) as exc:  # the run's end is recorded: that stands
        logger.warning("Could not apply the retention to the journals: %s", exc)


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
    run.progress = progress.describe(FETCH, 0, len(fetch_plan.jobs), {})
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
    budget = RunDiskBudget(run_id)  # shared with the run's other fetch tasks
    client = RemoteClient(
        run.database,
        port=options.port,
        retries=settings.DBSYNC_TASK_HTTP_RETRIES,
        budget=budget,
        run_deadline=RunDeadline.since(run.started_at),
    )
    started = timezone.now()
    with keep_alive(run_id), budget, _temp_dir(f"run{run_id}-fetch-") as tmp:
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
        run.progress = progress.describe(
            FETCH,
            len(run.fetch_plan["stored"]),
            len(run.fetch_plan.get("jobs", [])),
            {"bytes": sum(m.get("bytes", 0) for m in run.fetch_plan["stored"])},
        )
        run.save(update_fields=["fetch_plan", "progress"])


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
    with recorded(run, result), progress.recording(run.pk, log) as log:
        fetch_plan = FetchPlan.from_json(run.fetch_plan)
        result.full = fetch_plan.full
        _check_complete(fetch_plan, fetched)
        start_journal(run, options, result, log)
        plan = make_plan(options.app_label, options.exclude)
        with _temp_dir(f"run{run.pk}-install-") as work:
            local = storage.local_copies(run.pk, fetched, work)
            paths = {(meta["model"], meta["kind"]): local[meta["name"]] for meta in fetched}
            client = RemoteClient(
                database,
                port=options.port,
                budget=DiskBudget(spent=run.disk_spent),  # the fetch tasks' bytes
                run_deadline=RunDeadline.since(run.started_at),
            )
            with approval_in_hand(run, result) as approval:
                install_dumps(
                    database, plan, options, result, fetch_plan, paths, work, client, log, approval
                )
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


# --- deletions approved once -----------------------------------------------------------------


def pending_approval(database):
    """The newest approved run of ``database`` whose approval no run has had yet."""
    return (
        SyncRun.objects.filter(
            database=database, approved_at__isnull=False, approval_used_at__isnull=True
        )
        .order_by("-approved_at", "-pk")
        .first()
    )


@contextmanager
def approval_in_hand(run, result):
    """The approval (``Approval``) a run of the remote may use, or None; spent by this
    run once its objects are installed, whether or not it needed it (it was for the
    next run only)."""
    approved = pending_approval(run.database)
    approval = Approval.from_json(approved.deletions) if approved else None
    try:
        yield approval
    finally:
        if approval is not None and approval.installed:
            # This one, and any older one it superseded: none is left for a later run.
            SyncRun.objects.filter(
                database=run.database,
                approved_at__lte=approved.approved_at,
                approval_used_at__isnull=True,
            ).update(approval_used_at=timezone.now(), approval_used_by=run)
            what = [
                part
                for part, used in (
                    ("objects", approval.used_objects),
                    ("records", approval.used_records),
                )
                if used
            ]
            applied = f"applied ({' and '.join(what)})" if what else "not needed"
            SyncRun.objects.filter(pk=approved.pk).update(
                deletions=dict(approved.deletions, applied=applied)
            )
            result.notes.append(
                f"the deletions of run #{approved.pk} approved by {approved.approved_by}: "
                f"{applied}; the approval is spent"
            )
            logger.info("Run %s: %s", run.pk, result.notes[-1])


def approve_deletions(run, user):
    """Approve once the deletions a guard refused ``run`` (as it listed them): the next
    run of its remote may remove those and no more. Returns a sentence for the user;
    raises SyncError if the run has no refused deletions or was approved already."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().select_related("database").get(pk=run.pk)
        if not run.deletions or run.status != SyncRun.FAILED:
            raise SyncError(
                f"Run #{run.pk} was not refused by a deletion guard: nothing to approve."
            )
        if run.approved_at is not None:
            raise SyncError(
                f"The deletions of run #{run.pk} were already approved by {run.approved_by} "
                f"on {run.approved_at:%Y-%m-%d %H:%M}."
            )
        run.approved_by = user
        run.approved_at = timezone.now()
        run.save(update_fields=["approved_by", "approved_at"])
    counts = run.deletions.get("counts", {})
    listed = ", ".join(f"{name}: {n}" for name, n in counts.items() if n) or "nothing"
    logger.warning("%s approved the deletions of run %s of %s", user, run.pk, run.database)
    return (
        f"Approved once the deletions of run #{run.pk} of {run.database} ({listed}): the "
        f"next run of {run.database} may delete them, and no more."
    )


def reap_stale_runs():
    """Mark failed the runs whose worker died (periodic task), and prune old dumps."""
    reaped = reap_all()
    active = set(SyncRun.objects.filter(status__in=SyncRun.ACTIVE).values_list("pk", flat=True))
    pruned = storage.prune(
        timedelta(days=settings.DBSYNC_STORAGE_KEEP_DAYS),
        keep=active,
        max_bytes=settings.DBSYNC_STORAGE_KEEP_BYTES,
    )
    return {"reaped": reaped, "pruned": pruned, "work_dirs": len(prune_work_dirs())}


def prune_work_dirs():
    """Keep the command's work folders (a failed run's dumps, for --resume) within
    DBSYNC_STORAGE_KEEP_DAYS and DBSYNC_STORAGE_KEEP_BYTES; those of remotes with a run
    in progress are left alone."""
    busy = set(
        SyncRun.objects.filter(status__in=SyncRun.ACTIVE).values_list("database_id", flat=True)
    )
    folders = [default_work_dir(db) for db in Database.objects.exclude(pk__in=busy)]
    emptied = workdir.prune_work_dirs(
        folders,
        older_than=settings.DBSYNC_STORAGE_KEEP_DAYS * 86400,
        max_bytes=settings.DBSYNC_STORAGE_KEEP_BYTES,
    )
    for path in emptied:
        logger.info("Removed the dumps kept in %s (retention)", path)
    return emptied
