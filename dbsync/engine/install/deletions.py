"""The deletions: objects this remote no longer has, deleted under a guard.

Runs last, after every model is written. Only objects whose key map says they came
from this remote are deleted (``KeyMaps``); a deletion that would cascade to, or
change, an object of another origin is refused whole. One run may delete at most
``deletion_allowance(max_delete, objects replicated before the run)`` objects of a
root model, or it raises ``DeleteGuardError`` and deletes nothing.
"""

import math

from django.conf import settings
from django.db import connection
from django.db.models.deletion import Collector

from ..errors import DeleteGuardError, ObjectError
from ..planner import label

MAX_LISTED_PROBLEMS = 20


def delete_missing(
    roots, remote_keys, keys, written, *, max_delete, planned, database, result, log
):
    """Delete, per root model (children first: ``roots`` in reverse plan order), the
    objects of this remote that ``remote_keys`` (root label -> remote pks, or no entry:
    not known, delete nothing) no longer lists.

    ``keys``: the run's ``KeyMaps``; ``written``: model label -> local pks written in
    this run; ``planned``: the labels of the plan's models (the deletions counted in
    ``result``).
    """
    for root in reversed(roots):
        root_label = label(root)
        remote = remote_keys.get(root_label)
        if remote is None:
            continue
        # Installed before and no longer listed, or installed in this run (an object
        # re-fetched as a reference) and not listed either.
        loaded, allocated = keys.loaded[root_label], keys.allocated[root_label]
        mine = written[root_label]
        gone = loaded.keys().difference(remote)
        gone += [pk for pk in allocated.keys().difference(remote) if allocated[pk] in mine]
        if not gone:
            continue
        gone.sort()
        allowed = deletion_allowance(max_delete, len(loaded))
        if len(gone) > allowed:
            raise DeleteGuardError(
                f"{database}: the sync would delete {len(gone)} of "
                f"{len(loaded)} replicated {root_label} objects, more "
                f"than allowed ({allowed}; --max-delete / DBSYNC_MAX_DELETE="
                f"{max_delete}). If the remote really deleted them, run again with "
                f"--max-delete=all."
            )
        local = [keys.known_local_pk(root_label, pk) for pk in gone]
        delete_objects(root, root_label, local, len(gone), planned, database, result, log)


def delete_objects(root, root_label, local, count, planned, database, result, log):
    """Delete the ``root`` objects of local pks ``local`` and what cascades from them,
    unless that reaches objects of another origin."""
    queryset = root._base_manager.filter(pk__in=local)
    collector = Collector(using=connection.alias)
    collector.collect(queryset)
    outsiders = outside_objects(collector, database)
    if outsiders:
        raise ObjectError(
            f"{database}: deleting {count} {root_label} object(s) that the remote "
            f"no longer has would also change objects that do not come from this remote: "
            f"{'; '.join(outsiders[:MAX_LISTED_PROBLEMS])}"
        )
    _total, per_model = collector.delete()
    for model_label, n in per_model.items():
        if model_label.lower() in planned:
            result.add(model_label.lower(), "deleted", n)
    log(f"Deleted {count} {root_label} object(s) the remote no longer has", 2)


def outside_objects(collector, database):
    """Objects a deletion would reach that are not this remote's own."""
    found = []
    for model, instances in collector.data.items():
        for obj in instances:
            if hasattr(obj, "original_db_id") and obj.original_db_id != database.pk:
                found.append(f"{label(model)}(pk={obj.pk})")
    for qs in collector.fast_deletes:
        if hasattr(qs, "model") and hasattr(qs.model, "original_db_id"):
            outside = qs.exclude(original_db_id=database.pk).values_list("pk", flat=True)
            found.extend(f"{label(qs.model)}(pk={pk})" for pk in outside[:MAX_LISTED_PROBLEMS])
    for (field, _value), instances in collector.field_updates.items():
        for obj in instances:
            if getattr(obj, "original_db_id", database.pk) != database.pk:
                found.append(f"{label(field.model)}(pk={obj.pk}).{field.name}")
    return found


def deletion_allowance(max_delete, existing):
    """How many of ``existing`` replicated objects one run may delete.

    ``max_delete`` is "all", a count ("100") or a share ("50%"); a share always
    allows DBSYNC_MAX_DELETE_MIN objects, so that a small table can lose its last few.
    """
    text = str(max_delete).strip().lower()
    if text in {"all", "any", "unlimited"}:
        return math.inf
    if text.endswith("%"):
        share = math.floor(existing * float(text[:-1]) / 100)
        return max(share, settings.DBSYNC_MAX_DELETE_MIN)
    return int(text)


def validate_max_delete(value):
    """Raise ValueError unless ``value`` is "all", a count or a percentage."""
    text = str(value).strip().lower()
    if text in {"all", "any", "unlimited"}:
        return text
    number = text[:-1] if text.endswith("%") else text
    try:
        if float(number) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{value!r} is not a number of objects, a percentage (e.g. 10%) or 'all'"
        ) from None
    return text
