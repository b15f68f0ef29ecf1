"""The deletions: objects this remote no longer has, deleted under a guard.

Runs last, after every model is written, in the install's transaction. What would go
is counted first, whole (``impact.Impact``: the unlisted objects, what cascades from
them through every relation, the many-to-many links, the records, the files), and
then, in this order, the deletion is refused, changing nothing:

1. if the remote contradicts itself: an object it still lists would go in a cascade
   from one its listing lacks, or lose its key to one (``SET_NULL``: a series'
   instrument, a gentity's water basin) while it still refers to it
   (``InconsistentRemote``: a cut or wrong listing is not a deletion);
2. if it would reach or change an object of another origin (``ObjectError``);
3. if it would delete, of any model, more than ``deletion_allowance(max_delete, this
   remote's replicated rows of that model)`` (``DeleteGuardError``, listing what
   would go), unless an approval covers every object that would go.

Only then is it done, by Django's deletion, whose counts must match the guard's.

An object whose concrete type changed at the remote under the same pk (a station
made a water basin: its ``hcore_station`` and ``hcore_gpoint`` rows deleted there,
``hcore_garea`` and ``hcore_waterbasin`` rows inserted for the same gentity) still
has its root row, so it is no deletion of the object: its old child rows go, with
what cascades from them (the station's instruments, overseers, links), and its
parent rows stay, linked to the new child rows that the install wrote for the same
local pk (``changed_types``). The remote tells which child rows it no longer has by
the child model's own listing: its tombstones under change capture, the dumps under
a full run. The same walk counts them, under the same three refusals.
"""

from django.apps import apps
from django.db import connection
from django.db.models.deletion import Collector

from ..errors import DeleteGuardError, InconsistentRemote, ObjectError, SyncError
from ..guard import deletion_allowance
from ..planner import label, root_of
from ..result import RECORDS_LABEL
from .impact import MAX_LISTED, Impact

APPROVE_HINT = (
    "If the remote really deleted them, run the command again with --max-delete=all "
    '(or a larger --max-delete), or approve these deletions once in the admin ("Sync '
    'runs", select this run, action "Approve these deletions once"): the next run may '
    "then delete exactly these, and no more."
)


def delete_missing(
    roots,
    remote_keys,
    keys,
    written,
    *,
    max_delete,
    planned,
    database,
    result,
    log,
    approval=None,
    children=(),
):
    """Delete the objects of this remote that ``remote_keys`` (model label -> remote
    pks, or no entry: not known, delete nothing) no longer lists, with what goes with
    them, unless a guard refuses (see the module's docstring); and the child rows of
    ``children`` (the plan's models that are not roots) that their model's listing
    lacks while the object stays (its type changed).

    ``keys``: the run's ``KeyMaps``; ``written``: model label -> local pks written in
    this run; ``planned``: the labels of the plan's models (the deletions counted in
    ``result``); ``approval``: an ``Approval`` or None. Returns whether the deletion
    needed the approval.
    """
    gone = missing_objects(roots, remote_keys, keys, written)
    gone.update(changed_types(children, remote_keys, keys, written, gone, database))
    if not gone:
        return False
    impact = Impact(database, remote_keys)
    for model, (_remote, local) in gone.items():
        impact.add(model, local, keep_parents=is_child(model))
    if impact.contradictions:
        raise InconsistentRemote(
            f"{database}: the remote contradicts itself, so nothing was deleted or "
            f"changed: {'; '.join(str(c) for c in impact.contradictions)}. Its key "
            f"listing is probably cut or wrong; the next run will ask again."
        )
    if impact.outsiders:
        count = sum(len(remote) for remote, _local in gone.values())
        raise ObjectError(
            f"{database}: deleting {count} object(s) that the remote no longer has "
            f"would also change objects that do not come from this remote: "
            f"{'; '.join(impact.outsiders[:MAX_LISTED])}"
        )
    used = check_allowance(impact, gone, max_delete, approval, database)
    delete(impact, gone, planned, result)
    for model, (remote, _local) in gone.items():
        if is_child(model):
            log(
                f"Deleted the {label(model)} rows of {len(remote)} object(s) whose type "
                f"changed at the remote",
                2,
            )
        else:
            log(f"Deleted {len(remote)} {label(model)} object(s) the remote no longer has", 2)
    return used


def descendants(model):
    """The models that inherit from ``model`` (multi-table), deepest first."""
    found = [m for m in apps.get_models() if model in m._meta.get_parent_list()]
    return sorted(found, key=lambda m: -len(m._meta.get_parent_list()))


def is_child(model):
    """A multi-table child model (a station is a gpoint is a gentity)."""
    return bool(model._meta.parents)


def missing_objects(roots, remote_keys, keys, written):
    """Root model -> (remote pks, local pks) of the objects the remote no longer lists:
    installed before and no longer listed, or installed in this run (an object
    re-fetched as a reference) and not listed either."""
    gone = {}
    for root in roots:
        root_label = label(root)
        remote = remote_keys.get(root_label)
        if remote is None:
            continue
        loaded, allocated = keys.loaded[root_label], keys.allocated[root_label]
        mine = written[root_label]
        if hasattr(remote, "gone"):
            # Tombstones (engine.capture.AllBut): those of our objects, unless written
            # in this run (deleted, then made again at the remote).
            missing = [pk for pk in remote.gone if pk in loaded and loaded[pk] not in mine]
            if missing:
                gone[root] = (missing, [keys.known_local_pk(root_label, pk) for pk in missing])
            continue
        missing = loaded.keys().difference(remote)
        missing += [pk for pk in allocated.keys().difference(remote) if allocated[pk] in mine]
        if missing:
            missing.sort()
            gone[root] = (missing, [keys.known_local_pk(root_label, pk) for pk in missing])
    return gone


def changed_types(children, remote_keys, keys, written, gone, database):
    """Child model -> (remote pks, local pks) of this remote's child rows that the
    model's own listing in ``remote_keys`` lacks, of objects installed before the run
    (``keys.loaded``: a first sync has nothing old) that stay (not in ``gone``, the
    objects deleted whole): their concrete type changed. A row written in this run
    stays (deleted and made again at the remote)."""
    found = {}
    for model in children:
        listing = remote_keys.get(label(model))
        loaded = keys.loaded[label(root_of(model))]
        if listing is None or not loaded:
            continue
        rows = model._base_manager.filter(original_db=database)
        mine = written[label(model)]
        if hasattr(listing, "gone"):  # tombstones (engine.capture.AllBut)
            if not listing.gone:
                continue
            rows = rows.filter(original_id__in=list(listing.gone))
        elif rows.count() == len(mine):
            continue  # a full run wrote every row of this remote here: none is old
        whole = set(gone.get(root_of(model), ((), ()))[0])
        missing = sorted(
            (remote, local)
            for remote, local in rows.values_list("original_id", "pk").iterator()
            if remote not in listing
            and loaded.get(remote) == local
            and local not in mine
            and remote not in whole
        )
        if missing:
            found[model] = ([r for r, _l in missing], [local for _r, local in missing])
    return found


def check_allowance(impact, gone, max_delete, approval, database):
    """Raise DeleteGuardError if any model would lose more than allowed and no approval
    covers the whole deletion; return whether the approval was needed."""
    lines, over = [], False
    for model, pks in sorted(impact.rows.items(), key=lambda item: label(item[0])):
        held = model._base_manager.filter(original_db=database).count()
        allowed = deletion_allowance(max_delete, held)
        direct = len(gone.get(model, ((), ()))[1])
        how = "" if direct == len(pks) else f" ({len(pks) - direct} by cascade)"
        line = f"{label(model)}: {len(pks)} of {held}{how}"
        if len(pks) > allowed:
            over = True
            line += f", more than allowed ({allowed})"
        lines.append(line)
    if not over:
        return False
    keys = impact.root_remote_pks()
    if approval is not None and all(approval.covers_objects(n, pks) for n, pks in keys.items()):
        approval.used_objects = True
        return True
    totals = impact.totals()
    counts = {**impact.objects(), **totals}
    raise DeleteGuardError(
        f"{database}: refused: the sync would delete more than allowed "
        f"(--max-delete / DBSYNC_MAX_DELETE={max_delete}, of this remote's replicated "
        f"objects of each model): {'; '.join(lines)}; with them {totals['records']} "
        f"records, {totals['links']} many-to-many links and {totals['files']} files "
        f"({totals['objects']} objects in all){unlinked(impact)}. Nothing was changed. "
        f"{APPROVE_HINT}",
        deletions={"objects": keys, "counts": counts},
    )


def unlinked(impact):
    """The objects that stay but lose a key, as a clause of the refusal."""
    kept = [f"{name} emptied in {n}" for name, n in sorted(impact.unlinked.items()) if n]
    return f"; objects kept but unlinked: {', '.join(kept)}" if kept else ""


def delete(impact, gone, planned, result):
    """Delete the objects of ``gone`` and what goes with them (Django's deletion, the
    same walk), and count it; its counts must be the guard's."""
    collector = Collector(using=connection.alias)
    for model, (_remote, local) in gone.items():
        if not is_child(model):
            collector.collect(model._base_manager.filter(pk__in=local))
            continue
        # A type change: the child rows go without their parent rows. Deepest first,
        # each keeping its parents: a child row that Django reaches by cascade instead
        # takes the relations of its parents along (a water basin reached from its
        # garea would take the gentity's series).
        for member in [*descendants(model), model]:
            collector.collect(member._base_manager.filter(pk__in=local), keep_parents=True)
    _total, per_model = collector.delete()
    deleted = {name.lower(): n for name, n in per_model.items()}
    expected = impact.expected_counts()
    differ = sorted(
        f"{name}: counted {expected.get(name, 0)}, deleted {deleted.get(name, 0)}"
        for name in set(expected) | {n for n in deleted if n in planned}
        if expected.get(name, 0) != deleted.get(name, 0)
    )
    if differ:
        # Rolled back with the transaction: what was counted is what may go.
        raise SyncError(f"The deletion reached more than the guard counted: {'; '.join(differ)}")
    for name, n in deleted.items():
        if name in planned:
            result.add(name, "deleted", n)
    if impact.records:
        result.add(RECORDS_LABEL, "deleted", impact.records)
