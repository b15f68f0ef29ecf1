"""Offboarding a remote as a run: the one path of ``manage.py dbsync_removeremote`` and
of the admin's "Remove (purge)…" and "Remove (detach)…" actions.

``survey_remote`` counts what would happen (nothing is changed: what the command
prints and the admin's confirmation page lists); ``offboard_remote`` does it:

1. under the remote's lock (refused, as a sync is, while a run of it is going);
2. as a run of its own (``SyncRun``, trigger "offboard"), so that its history, and
   its journal, say what was done and by whom;
3. in one transaction, recorded by the run's journal (``journal.recording``): the
   engine purges or detaches the remote's objects (``dbsync.engine.offboard``), only
   as counted when the operator confirmed; the remote's row is marked offboarded
   (``removed_at``, ``removal``, inactive) and its Beat schedule removed;
4. once committed, the files it left in the remote's folder are moved into the run's
   journal (``engine.offboard.settle_files``), and a detach's copies noted as the
   run's.

The remote's row is kept, not deleted: deleting it would take its runs (and the
offboarding's journal) with it, so nothing could be reverted. ``dbsync_revert`` of the
offboarding run brings the objects, their files and the row back as they were (the
schedule stays paused until an operator resumes it). Deleting the remote for good
(the admin's delete) is possible once it has no objects, and removes its folder.
"""

import logging
from contextlib import contextmanager

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from dbsync.engine import journal
from dbsync.engine import offboard as engine
from dbsync.engine.errors import SyncError
from dbsync.engine.result import SyncResult
from dbsync.models import Database, SyncRun

from .locking import claim, lock_or_refuse
from .reverts import prune_journals
from .schedules import remove_schedule
from .service import failures_recorded, finish

logger = logging.getLogger(__name__)

PURGE, DETACH = engine.PURGE, engine.DETACH
REMOVAL = {PURGE: Database.PURGED, DETACH: Database.DETACHED}


def start_journal(run):
    """The offboarding's journal: its run's id, or None where there is none (SQLite:
    then it cannot be reverted, and the files of purged objects are deleted)."""
    if not journal.supported():
        return None
    run.journal = SyncRun.JOURNAL_KEPT
    run.save(update_fields=["journal"])
    return run.pk


def find_remote(name):
    """The registered remote named ``name`` (or with that hostname); SyncError, listing
    the registered ones, if there is none or several."""
    found = list(Database.objects.filter(Q(name=name) | Q(hostname=name)))
    if len(found) == 1:
        return found[0]
    registered = ", ".join(f"{d.name} ({d.hostname})" for d in Database.objects.all())
    if not found:
        raise SyncError(
            f"No registered remote is named {name!r}. Registered: {registered or 'none'}."
        )
    raise SyncError(f"{name!r} matches several remotes ({registered}); use its name.")


def check_not_removed(database):
    if database.is_removed:
        raise SyncError(database.removed_message())


def survey_remote(database, mode):
    """What offboarding ``database`` in ``mode`` would do (``engine.offboard.Survey``);
    changes nothing. SyncError if it was offboarded already."""
    check_not_removed(database)
    return engine.survey(database, mode)


def offboard_remote(database, mode, *, started_by="", via="command", expected=None):
    """Purge or detach ``database`` (see the module's docstring); return the run and
    the Survey of what was done, or raise SyncError (AlreadyRunning if a run of the
    remote is going; nothing is changed then).

    ``expected``: the ``Survey.counts()`` the operator confirmed; if the remote's
    objects changed since, the offboarding is refused.
    """
    check_not_removed(database)
    options = {"offboard": mode, "via": via}
    with lock_or_refuse(
        database, trigger=SyncRun.OFFBOARD, options=options, started_by=started_by
    ):
        run = claim(
            database,
            status=SyncRun.RUNNING,
            trigger=SyncRun.OFFBOARD,
            options=options,
            started_by=started_by,
        )
        result = SyncResult(remote=str(database))
        with failures_recorded(run, result):
            journal_run = start_journal(run)
            with (
                detach_copies(database, mode) as copies,
                transaction.atomic(),
                journal.recording(journal_run),
            ):
                found = engine.offboard(database, mode, result, expected=expected, files=copies)
                mark_removed(database, mode)
            settle_files(found, copies, journal_run, result)
        finish(run, SyncRun.SUCCEEDED, result, describe(database, found, run, journal_run, result))
    prune_journals(database)
    logger.warning("%s offboarded %s (%s): run %s", started_by or via, database, mode, run.pk)
    return run, found


def settle_files(found, copies, journal_run, result):
    """Once the transaction committed: the files go into the run's journal. The
    offboarding is done whatever happens to them: a failure here is logged and noted
    on the run (the files then stay in the remote's folder, which nothing serves)."""
    try:
        engine.settle_files(found, copies, journal_run)
    except (OSError, DatabaseError) as exc:
        logger.error("Offboarding run %s: could not journal its files: %s", journal_run, exc)
        result.notes.append(f"its files could not all be moved into the journal: {exc}")


@contextmanager
def detach_copies(database, mode):
    """A detach's copies of the remote's files, made before its transaction (files are
    not in it); deleted again if the transaction does not commit."""
    if mode != DETACH:
        yield {}
        return
    copies = engine.copy_files(database)
    try:
        yield copies
    except BaseException:
        engine.delete_files(copies.values())
        raise


def mark_removed(database, mode):
    """The remote's row, offboarded: inactive, never synced, its schedule removed (the
    row keeps its schedule's fields: a revert brings them back, paused)."""
    now = timezone.now()
    Database.objects.filter(pk=database.pk).update(
        removed_at=now, removal=REMOVAL[mode], is_active=False
    )
    database.removed_at, database.removal, database.is_active = now, REMOVAL[mode], False
    remove_schedule(database)


def describe(database, found, run, journal_run, result):
    """The closing sentence of an offboarding run."""
    if found.mode == PURGE:
        did = (
            f"purged: {found.total_objects} objects deleted, with {found.records} records, "
            f"{found.links} many-to-many links and {found.files} files"
        )
    else:
        did = (
            f"detached: {found.total_objects} objects are now local, with their "
            f"{found.records} records and {found.files} files"
        )
    undo = (
        f"To undo it: manage.py dbsync_revert {run.pk}."
        if journal_run
        else "It has no journal (the database cannot keep one): it cannot be reverted."
    )
    notes = "".join(f" Note: {note}." for note in result.notes)
    return (
        f"Offboarded {database}, {did}. It is never synced again; its schedule is removed. "
        f"{undo}{notes}"
    )


def before_delete(sender, instance, **kwargs):
    """A remote deleted for good (possible once no object of it is left) takes its runs
    with it: their journals, and its folder of files, go too once the deletion commits
    (nothing could revert them any more)."""
    runs = list(SyncRun.objects.filter(database=instance).values_list("pk", flat=True))

    def forget():
        journal.discard(runs)
        engine.remove_folder(instance)

    transaction.on_commit(forget)
