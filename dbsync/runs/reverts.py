"""Runs journaled, their journals kept within the retention, and a run reverted.

A run that backs up (not ``-N``, not a dry run) on PostgreSQL is journaled under its
own id (``start_journal``: ``SyncOptions.journal_run``, ``SyncRun.journal``). After
each run the journals of its remote are kept for the newest ``DBSYNC_JOURNAL_KEEP``
runs and none older than ``DBSYNC_JOURNAL_MAX_AGE_DAYS`` (``prune_journals``).

``revert_run`` is the one path of the command (``dbsync_revert``) and the admin's
action: under the remote's lock, in one transaction, it refuses a run that was
reverted already, that has no journal, or whose rows a later run changed (those are
reverted first, newest first), then puts every row back, marks the run reverted and
pauses the remote's schedule (``SchedulePause``) until an operator resumes it
(``resume_schedule``); the files come back once the transaction has committed.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from dbsync.engine import journal
from dbsync.engine.errors import SyncError
from dbsync.engine.journal.files import run_folder as journal_folder
from dbsync.models import Database, SchedulePause, SyncRun
from hcore.models import GentityFile

from .locking import LockBusy, remote_lock
from .schedules import sync_schedule, sync_verify_schedule

logger = logging.getLogger(__name__)

UNJOURNALED = (
    "it has no journal: it was run with -N (--no-backups), as a dry run, or on a database "
    "that cannot journal (SQLite)"
)


def start_journal(run, options, result, log):
    """Journal ``run`` if its options back up and the database can: sets
    ``options.journal_run`` and ``run.journal``; says once when it cannot."""
    if not options.backup or options.dry_run or options.fetch_only:
        return
    if not journal.supported():
        note = "not journaled: the journal needs PostgreSQL; this run cannot be reverted"
        result.notes.append(note)
        log(note, 1)
        return
    options.journal_run = journal_run(run)


def journal_run(run):
    """Mark ``run`` journaled and return the id its changes are journaled under, or
    None where nothing can be (SQLite). Other work that changes replicated data (e.g.
    offboarding a remote) journals itself so: a SyncRun of its own, then
    ``with transaction.atomic(), journal.recording(journal_run(run)):``, and files
    through ``journal.FileJournal``; ``revert_run`` undoes it like a sync."""
    if not journal.supported():
        return None
    run.journal = SyncRun.JOURNAL_KEPT
    run.save(update_fields=["journal"])
    return run.pk


def prune_journals(database, now=None):
    """Drop the journals of ``database``'s runs past the retention; return their ids."""
    now = now or timezone.now()
    kept = SyncRun.objects.filter(
        database=database, journal=SyncRun.JOURNAL_KEPT, reverted_at__isnull=True
    ).order_by("-pk")
    ids = list(kept.values_list("pk", "started_at"))
    doomed = [pk for pk, _started in ids[max(settings.DBSYNC_JOURNAL_KEEP, 1) :]]
    if settings.DBSYNC_JOURNAL_MAX_AGE_DAYS > 0:
        oldest = now - timedelta(days=settings.DBSYNC_JOURNAL_MAX_AGE_DAYS)
        doomed += [pk for pk, started in ids[1:] if started < oldest and pk not in doomed]
    if doomed:
        # A revert reading one of these journals holds its run's row (FOR UPDATE): that
        # one is skipped, not discarded under it; the next prune takes it if still due.
        with transaction.atomic():
            doomed = list(
                SyncRun.objects.select_for_update(skip_locked=True)
                .filter(pk__in=doomed, journal=SyncRun.JOURNAL_KEPT, reverted_at__isnull=True)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            SyncRun.objects.filter(pk__in=doomed).update(journal=SyncRun.JOURNAL_PRUNED)
            journal.discard(doomed)  # the kept files: once this has committed
    if doomed:
        logger.info("Pruned the journals of runs %s of %s (retention)", doomed, database)
    return doomed


def refusal(run):
    """Why ``run`` cannot be reverted, before looking at later runs; None if it can."""
    if run.reverted_at is not None:
        by = f" by {run.reverted_by}" if run.reverted_by else ""
        return f"Run #{run.pk} was already reverted{by} on {run.reverted_at:%Y-%m-%d %H:%M}."
    if run.is_active:
        return f"Run #{run.pk} of {run.database} is still {run.status}; wait for it to end."
    if run.journal == SyncRun.JOURNAL_PRUNED:
        return (
            f"Run #{run.pk} cannot be reverted: its journal was pruned (DBSYNC_JOURNAL_KEEP="
            f"{settings.DBSYNC_JOURNAL_KEEP} runs, DBSYNC_JOURNAL_MAX_AGE_DAYS="
            f"{settings.DBSYNC_JOURNAL_MAX_AGE_DAYS})."
        )
    if run.journal != SyncRun.JOURNAL_KEPT or not journal.supported():
        return f"Run #{run.pk} cannot be reverted: {UNJOURNALED}."
    return None


def unjournaled_later_runs(run):
    """Later runs of the same remote that changed data with no journal: what they
    did cannot be told apart from what ``run`` did."""
    later = SyncRun.objects.filter(
        database=run.database,
        pk__gt=run.pk,
        status__in=(SyncRun.SUCCEEDED, SyncRun.FAILED),
        dry_run=False,
    ).exclude(journal=SyncRun.JOURNAL_KEPT)
    found = []
    for other in later.exclude(reverted_at__isnull=False):
        changed = any(
            counts.get(key, 0)
            for counts in other.model_counts.values()
            for key in ("created", "updated", "deleted")
        )
        if changed:
            found.append(other.pk)
    return found


def revert_run(run, by="command", pause=True):
    """Bring the database back to its state before ``run``; return a sentence for the
    user. Raises SyncError (nothing changed) when it may not; see the module's
    docstring."""
    why = refusal(run)
    if why:
        raise SyncError(why)
    database = run.database
    try:
        with remote_lock(database, wait=settings.DBSYNC_LOCK_WAIT_SECONDS):
            done, files = _revert_locked(run, by, pause)
    except LockBusy as exc:
        raise SyncError(
            f"Run #{run.pk} was not reverted: a sync of {database} is running; revert it "
            f"once that run has ended."
        ) from exc
    storage = GentityFile._meta.get_field("content").storage
    try:
        deleted, restored = journal.revert_files(run.pk, files, storage)
    except OSError as exc:  # the rows are back; the files kept aside stay where they are
        raise SyncError(
            f"Run #{run.pk} of {database}: its rows were reverted, but its files could not "
            f"all be put back ({exc}); the files it kept aside are in "
            f"{journal_folder(run.pk)}, and its notes were: {files[:20]}"
        ) from exc
    journal.discard([run.pk])
    # The row came back by SQL, with no post_save: its periodic tasks follow it here
    # (paused, or back after an offboarding's revert with --keep-schedule).
    reverted = Database.objects.get(pk=database.pk)
    sync_schedule(reverted)
    sync_verify_schedule(reverted)
    rows = sum(d for d, _r in done.values()), sum(r for _d, r in done.values())
    message = (
        f"Reverted run #{run.pk} of {database}: {rows[0]} rows removed, {rows[1]} put back "
        f"as they were, {deleted} files removed, {restored} put back."
    )
    if pause:
        message += (
            f" The schedule of {database} is paused until you resume it (admin: the remote's "
            f'action "Resume the schedule", or manage.py dbsync_revert --resume {database.name}).'
        )
    logger.warning("%s (by %s)", message, by)
    return message


def _revert_locked(run, by, pause):
    try:
        with transaction.atomic():
            run = SyncRun.objects.select_for_update().select_related("database").get(pk=run.pk)
            why = refusal(run)  # again, under the lock: another revert may have won
            if why:
                raise SyncError(why)
            # A Celery run queued or fetching holds no remote lock, but it planned its
            # fetch from the cursor this revert puts back: its install would then move
            # the cursor past what the revert removed. Runs are claimed under this row's
            # lock (locking.claim), so none can start while it is held.
            Database.objects.select_for_update().get(pk=run.database_id)
            busy = list(
                SyncRun.objects.filter(database_id=run.database_id, status__in=SyncRun.ACTIVE)
                .exclude(pk=run.pk)
                .values_list("pk", flat=True)
            )
            if busy:
                raise SyncError(
                    f"Run #{run.pk} was not reverted: run(s) "
                    f"{', '.join(f'#{pk}' for pk in busy)} of {run.database} are queued or "
                    f"running; revert it once they have ended."
                )
            blind = unjournaled_later_runs(run)
            if blind:
                raise SyncError(
                    f"Run #{run.pk} cannot be reverted: later run(s) "
                    f"{', '.join(f'#{pk}' for pk in blind)} of {run.database} changed data "
                    f"without a journal (-N), so what they changed cannot be told apart."
                )
            later = SyncRun.objects.filter(
                pk__gt=run.pk, journal=SyncRun.JOURNAL_KEPT, reverted_at__isnull=True
            ).values_list("pk", flat=True)
            clash = journal.conflicts(run.pk, list(later))
            if clash:
                listed = "; ".join(
                    f"#{pk} ({', '.join(sorted(tables))})" for pk, tables in sorted(clash.items())
                )
                raise journal.JournalConflict(
                    f"Run #{run.pk} cannot be reverted: later run(s) changed some of the same "
                    f"rows: {listed}. Revert those first, newest first."
                )
            done, files = journal.revert(run.pk)
            run.reverted_at = timezone.now()
            run.reverted_by = by
            run.save(update_fields=["reverted_at", "reverted_by"])
            if pause:
                SchedulePause.objects.update_or_create(
                    database=run.database,
                    defaults={
                        "paused_at": timezone.now(),
                        "reason": f"run #{run.pk} reverted by {by}",
                    },
                )
    except DatabaseError as exc:  # at COMMIT: a deferred key that does not hold
        raise SyncError(
            f"Run #{run.pk} could not be reverted ({' '.join(str(exc).split())[:300]}); "
            f"nothing was changed."
        ) from exc
    return done, files


def resume_schedule(database):
    """End the pause of ``database``'s schedule; return a sentence for the user."""
    deleted, _ = SchedulePause.objects.filter(database=database).delete()
    resumed = Database.objects.get(pk=database.pk)
    sync_schedule(resumed)
    sync_verify_schedule(resumed)
    if not deleted:
        return f"The schedule of {database} was not paused."
    return f"Resumed the schedule of {database}."
