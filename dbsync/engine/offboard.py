"""Offboarding a remote: every object it replicated here purged, or detached (kept as
local objects), in the caller's transaction.

Both are counted whole first (``survey``), shown to the operator, and done only as
counted: the caller passes the counts it showed (``expected``), and a change since
then (a sync, an edit) refuses the offboarding, changing nothing.

- **Purge** deletes the remote's objects and what goes with them through the delete
  guard's own machinery: ``install.impact.Impact`` counts (cascades, parent rows,
  many-to-many links, records, files), ``install.deletions.delete`` deletes with
  Django's deletion and checks it against the count. It is refused, listing them,
  if it would reach an object of another origin (a local object, or another
  remote's, that refers or links to one of them): detaching keeps them all.
  The files of the purged objects are not deleted in the transaction (files are
  outside it): ``settle_files`` moves them into the run's journal once it committed.
- **Detach** clears the bookkeeping (``original_db``, ``original_id``) of every row
  the remote replicated: the objects, their records and their files stay, now local.
  The records' sync state of its series goes (it describes syncs that will not happen
  again). The files move out of the remote's folder (``files.folder``, which a sync
  of the remote prunes) to ``files.detached_name``: copied by ``copy_files`` before
  the transaction, the objects pointed at the copies in it; the originals go as a
  purge's files do (``settle_files``), and a revert puts them back.

Nothing here knows of runs, locks or schedules: ``dbsync.runs.offboarding`` holds
the remote's lock, opens the transaction and records the run.
"""

import logging
from dataclasses import dataclass, field

from django.apps import apps
from django.core.files import File

from hcore.models import GentityFile, Record, RecordsSyncState

from .errors import ObjectError, SyncError
from .files import detached_name, folder
from .install.deletions import delete
from .install.impact import MAX_LISTED, Impact, is_replicated
from .journal import FileJournal
from .planner import label
from .result import FILES_LABEL, RECORDS_LABEL

logger = logging.getLogger(__name__)

PURGE, DETACH = "purge", "detach"
MODES = (PURGE, DETACH)


class OffboardingChanged(SyncError):
    """What the offboarding would do is no longer what the operator confirmed."""


def replicated_roots():
    """The root models that carry replication bookkeeping (children share their rows)."""
    return [m for m in apps.get_models() if is_replicated(m) and not m._meta.get_parent_list()]


def replicated_labels():
    return {label(m) for m in apps.get_models() if is_replicated(m)}


@dataclass
class Survey:
    """What offboarding a remote in ``mode`` would do, counted whole.

    ``objects``: model label -> rows, of every model (multi-table children too; a
    purge's cascades included).
    """

    mode: str
    objects: dict = field(default_factory=dict)
    records: int = 0
    links: int = 0
    files: int = 0
    unlinked: int = 0
    outsiders: list = field(default_factory=list)
    impact: Impact | None = None  # purge: the walk, for the deletion
    roots: dict = field(default_factory=dict)  # root model -> (remote pks, local pks)
    # The files in the remote's folder that the offboarding leaves there: of the purged
    # objects, or the originals of the detached objects' copies.
    file_names: list = field(default_factory=list)

    @property
    def total_objects(self):
        """Objects, each once (counted at its root table)."""
        return sum(len(local) for _remote, local in self.roots.values())

    def counts(self):
        """The figures an operator confirms (JSON): compared again before the change."""
        return {
            "mode": self.mode,
            "objects": dict(self.objects),
            "records": self.records,
            "links": self.links,
            "files": self.files,
        }

    def lines(self):
        """What would happen, a line per model and then the totals, for the operator."""
        if self.mode == PURGE:
            lines = [f"{name}: {n}" for name, n in self.objects.items()]
            lines.append(
                f"in all {self.total_objects} objects deleted (each counted once, what "
                f"cascades included), with {self.records} records, {self.links} "
                f"many-to-many links and {self.files} files"
            )
        else:
            lines = [f"{name}: {n}" for name, n in self.objects.items()]
            lines.append(
                f"{self.total_objects} objects become local (they keep their records, "
                f"{self.records}, and their files, {self.files})"
            )
        return lines


def survey(database, mode):
    """Count what offboarding ``database`` in ``mode`` would do; change nothing."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    roots = {}
    for root in replicated_roots():
        rows = root._base_manager.filter(original_db=database).order_by("pk")
        pks = dict(rows.values_list("pk", "original_id"))
        if pks:
            roots[root] = (sorted(pks.values()), sorted(pks))
    if mode == DETACH:
        every = sorted(
            (label(model), model._base_manager.filter(original_db=database).count())
            for model in apps.get_models()
            if is_replicated(model)
        )
        return Survey(
            mode,
            objects={name: n for name, n in every if n},
            records=Record.objects.filter(timeseries__original_db=database).count(),
            files=GentityFile._base_manager.filter(original_db=database)
            .exclude(content="")
            .count(),
            roots=roots,
            file_names=sorted(files_in_folder(database).values()),
        )
    impact = Impact(database, links_of_others=True)
    for root, (_remote, local) in roots.items():
        impact.add(root, local)
    totals = impact.totals()
    return Survey(
        mode,
        objects=impact.objects(),
        records=totals["records"],
        links=totals["links"],
        files=totals["files"],
        unlinked=totals["unlinked"],
        outsiders=list(impact.outsiders),
        impact=impact,
        roots=roots,
        file_names=sorted(files_in_folder(database).values()),
    )


def refusal(database, found):
    """Why a purge cannot be done (``found``: its Survey), or None."""
    if found.mode != PURGE or not found.outsiders:
        return None
    listed = "; ".join(found.outsiders[:MAX_LISTED])
    more = (
        f" (and more: {len(found.outsiders)} listed)" if len(found.outsiders) > MAX_LISTED else ""
    )
    return (
        f"{database}: refused: purging its objects would also change objects that do not "
        f"come from it: {listed}{more}. Nothing was changed. Detach it instead "
        f"(dbsync_removeremote --detach, or the admin's 'Remove (detach)'): every object "
        f"stays, as a local one, and so do these links."
    )


def offboard(database, mode, result, *, expected=None, files=None):
    """Purge or detach ``database``'s objects, in the caller's transaction, counted in
    ``result`` (a SyncResult); return the Survey of what was done.

    ``expected``: the ``Survey.counts()`` the operator confirmed (None: anything);
    ``files``: detach: local pk -> the copy's name, from ``copy_files``.
    """
    found = survey(database, mode)
    if expected is not None and found.counts() != expected:
        raise OffboardingChanged(
            f"{database}: what the offboarding would do changed since it was shown (a sync "
            f"or an edit in between?): now {'; '.join(found.lines())}. Nothing was changed; "
            f"look at it again and confirm anew."
        )
    if mode == PURGE:
        problem = refusal(database, found)
        if problem:
            raise ObjectError(problem)
        purge(found, result)
    else:
        detach(database, found, result, files or {})
    return found


def purge(found, result):
    if found.impact is None or not found.roots:
        return
    delete(found.impact, found.roots, replicated_labels(), result)
    if found.files:
        result.add(FILES_LABEL, "deleted", found.files)


def detach(database, found, result, copies):
    """Clear the bookkeeping of every row of ``database``; point its files at their
    copies outside the remote's folder."""
    for local_pk, name in copies.items():
        GentityFile._base_manager.filter(pk=local_pk, original_db=database).update(content=name)
    if copies:
        result.add(FILES_LABEL, "updated", len(copies))
    RecordsSyncState.objects.filter(timeseries__original_db=database).delete()
    for root in found.roots:
        n = root._base_manager.filter(original_db=database).update(
            original_db=None, original_id=None
        )
        result.add(label(root), "updated", n)
    if found.records:
        result.add(RECORDS_LABEL, "unchanged", found.records)


def files_in_folder(database):
    """Local pk -> file name, of ``database``'s objects whose file is in its folder."""
    prefix = folder(database) + "/"
    rows = (
        GentityFile._base_manager.filter(original_db=database, content__startswith=prefix)
        .order_by("pk")
        .values_list("pk", "content")
    )
    return dict(rows)


def copy_files(database, storage=None):
    """Before a detach's transaction: copy the files of ``database``'s objects out of
    its folder; return local pk -> the copy's name. A file missing from the storage is
    left where the object says (logged): there is nothing to copy."""
    storage = storage or GentityFile._meta.get_field("content").storage
    copies = {}
    for local_pk, name in files_in_folder(database).items():
        if not storage.exists(name):
            logger.warning(
                "%s: gentityfile pk=%s: its file %s is missing", database, local_pk, name
            )
            continue
        wanted = detached_name(database, local_pk, name)
        if storage.exists(wanted):  # a leftover of an earlier attempt: made again
            storage.delete(wanted)
        with storage.open(name, "rb") as fh:
            copies[local_pk] = storage.save(wanted, File(fh, name=wanted.rsplit("/", 1)[-1]))
    return copies


def delete_files(names, storage=None):
    """Delete ``names`` from the storage (copies of a detach that did not happen);
    return how many went."""
    storage = storage or GentityFile._meta.get_field("content").storage
    gone = 0
    for name in names:
        try:
            storage.delete(name)
        except OSError as exc:
            logger.warning("Could not delete %s: %s", name, exc)
            continue
        gone += 1
    return gone


def settle_files(found, copies, journal_run=None, storage=None):
    """After the offboarding's transaction committed: the files it left in the remote's
    folder (``found.file_names``) go, moved aside into the run's journal when it has
    one (a revert puts them back; the journal's retention discards them), deleted
    otherwise; a detach's ``copies`` are noted as the run's (a revert deletes them).
    Returns how many files went. A file that cannot be moved is logged and left."""
    storage = storage or GentityFile._meta.get_field("content").storage
    files = FileJournal(journal_run, storage)
    for name in copies.values():
        files.stored(name)
    gone = 0
    for name in found.file_names:
        try:
            if storage.exists(name):
                files.delete(name)
                gone += 1
        except OSError as exc:
            logger.warning("Could not remove %s: %s", name, exc)
    return gone


def remove_folder(database, storage=None):
    """Remove ``database``'s folder of files with all it holds (the remote itself is
    deleted for good: no object of it is left to point there); return the files
    removed."""
    storage = storage or GentityFile._meta.get_field("content").storage
    return _remove_tree(storage, folder(database))


def _remove_tree(storage, path):
    try:
        dirs, files = storage.listdir(path)
    except (FileNotFoundError, NotImplementedError):
        return 0
    removed = delete_files([f"{path}/{name}" for name in files], storage)
    for name in dirs:
        removed += _remove_tree(storage, f"{path}/{name}")
    try:
        storage.delete(path)  # the folder itself (FileSystemStorage)
    except OSError as exc:
        logger.warning("Could not remove the folder %s: %s", path, exc)
    return removed
