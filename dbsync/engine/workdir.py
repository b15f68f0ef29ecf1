"""The folder where a remote's dumps are fetched to and installed from."""

import json
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.utils.text import slugify

from protocol.schema import NEVER_SERVED_MODELS

from .dumps import dump_name, iter_objects, read_key_set
from .errors import PayloadError
from .fetch import read_fetch_record


def work_dir_for(database, explicit=None):
    """``-w DIR`` is used as given; by default each remote has its own subfolder."""
    path = Path(explicit) if explicit else default_work_dir(database)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_work_dir(database):
    return Path(settings.DBSYNC_WORK_DIR) / f"{slugify(database.name) or 'remote'}-{database.pk}"


def folder_usage(path):
    """(bytes, newest modification time) of the files under ``path``; (0, 0) if none."""
    size, newest = 0, 0.0
    for item in Path(path).rglob("*"):
        try:
            stat = item.lstat()
        except FileNotFoundError:
            continue
        if item.is_file():
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return size, newest


def prune_work_dirs(folders, older_than, max_bytes):
    """Empty the given work folders (of remotes not running: the caller knows which)
    whose dumps, kept after a failed run for ``--resume``, were written more than
    ``older_than`` seconds ago; then, oldest first, until they take ``max_bytes`` at
    most together (0: no bound). Returns the folders emptied. A folder that a failed
    run did not leave is never emptied: one a ``--fetch-only`` run filled (its fetch
    record says so), or one with no fetch record (files put there by hand, e.g. a
    remote's ``dumpdata``); both wait for an operator's ``--resume``."""
    folders = [path for path in folders if Path(path).is_dir() and _left_by_failed_run(path)]
    usage = {path: folder_usage(path) for path in folders}
    usage = {path: used for path, used in usage.items() if used[0]}
    total = sum(size for size, _mtime in usage.values())
    cutoff = time.time() - older_than
    emptied = []
    for path, (size, mtime) in sorted(usage.items(), key=lambda item: item[1][1]):
        if mtime < cutoff or (max_bytes and total > max_bytes):
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            emptied.append(path)
    return emptied


def _left_by_failed_run(path):
    try:
        record = read_fetch_record(path)
    except PayloadError:
        return False  # unreadable: not ours to judge
    return record is not None and not record.get("fetch_only")


def load_for_resume(work, plan):
    """The dumps already in ``work``: (files, remote keys or "present", server time).

    A folder written by an earlier ``--fetch-only`` run has a fetch record; in any
    other, every ``*.json`` (e.g. from the remote's ``manage.py dumpdata``) is taken as
    a full dump and split by model.
    """
    record = read_fetch_record(work)
    if record is not None:
        files = {
            lbl: [_inside(work, p) for p in paths if Path(p).exists()]
            for lbl, paths in record["files"].items()
            if lbl in plan.labels
        }
        keys = "present"
        if not record.get("full"):
            keys = {
                root: read_key_set(_inside(work, path)) for root, path in record["keys"].items()
            }
        return files, keys, record.get("server_time")
    # Split into the line layout the install reads (it never reads a dump whole).
    others = sorted(
        p for p in work.glob("*.json") if ".keys" not in p.name and ".deleted" not in p.name
    )
    files = {lbl: [path] for lbl, path in _split(others, work, plan).items()} if others else {}
    if not files:
        raise PayloadError(
            f"--resume: no dumps in {work}; fetch them first (--fetch-only) or put the "
            f"remote's `manage.py dumpdata {plan.app_label}` output there."
        )
    return files, "present", None


def _inside(work, path):
    """A dump named by the fetch record, which must be in the work folder."""
    if Path(work).resolve() not in Path(path).resolve().parents:
        raise PayloadError(
            f"{Path(work) / 'fetch.json'}: names {str(path)[:200]!r}, outside the work "
            f"folder; refusing to resume from it"
        )
    return path


def _split(paths, work, plan):
    """Split whole-app dumps into one file per planned model."""
    split_dir = work / "split"
    split_dir.mkdir(exist_ok=True)
    handles, written = {}, {}
    dropped = set(NEVER_SERVED_MODELS) | set(plan.excluded)
    try:
        for path in paths:
            for obj in iter_objects(str(path), skip=dropped):
                model_label = obj["model"].lower()
                if model_label in dropped:
                    continue
                if model_label not in plan.labels:
                    raise PayloadError(
                        f"{path.name}: object of {obj['model'][:100]!r} (pk={obj['pk']}) is not "
                        f"a model of {plan.app_label} being synced"
                    )
                if model_label not in handles:
                    target = split_dir / dump_name(model_label)
                    written[model_label] = str(target)
                    handles[model_label] = open(target, "w", encoding="utf-8")  # noqa: SIM115
                    handles[model_label].write("[\n")
                    first = True
                else:
                    first = False
                handles[model_label].write(("" if first else ",\n") + json.dumps(obj))
    finally:
        for handle in handles.values():
            handle.write("\n]\n")
            handle.close()
    return {lbl: written[lbl] for lbl in plan.labels if lbl in written}
