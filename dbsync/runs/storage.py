"""Where fetched dumps live between the fetch tasks and the install task.

Django's Storage API: a local folder (DBSYNC_STORAGE_ROOT) by default, enough when
every worker sees the same filesystem, or an S3-compatible bucket through
django-storages (DBSYNC_STORAGE=s3) when fetch and install workers run on
different hosts. A run's dumps are ``runs/<run id>/<model label>[.keys].json``;
each is stored with its SHA-256, checked before it is installed.
"""

import hashlib
import logging
import shutil
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone

from dbsync.engine.errors import SyncError

logger = logging.getLogger(__name__)

RUNS = "runs"
CHUNK = 1 << 20


class StorageError(SyncError):
    """A stored dump is missing or differs from what its fetch task stored."""


@lru_cache(maxsize=1)
def get_storage():
    if settings.DBSYNC_STORAGE == "s3":
        from storages.backends.s3 import S3Storage

        options = {
            "bucket_name": settings.DBSYNC_S3_BUCKET,
            "location": settings.DBSYNC_S3_PREFIX,
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": False,
            "addressing_style": settings.DBSYNC_S3_ADDRESSING_STYLE or None,
        }
        optional = {
            "endpoint_url": settings.DBSYNC_S3_ENDPOINT_URL,
            "region_name": settings.DBSYNC_S3_REGION,
            "access_key": settings.DBSYNC_S3_ACCESS_KEY_ID,
            "secret_key": settings.DBSYNC_S3_SECRET_ACCESS_KEY,
        }
        options.update({key: value for key, value in optional.items() if value})
        return S3Storage(**options)
    return FileSystemStorage(location=settings.DBSYNC_STORAGE_ROOT, allow_overwrite=True)


@receiver(setting_changed)
def _reset(setting, **kwargs):
    if setting.startswith("DBSYNC_S3_") or setting.startswith("DBSYNC_STORAGE"):
        get_storage.cache_clear()


def is_local(storage):
    try:
        storage.path("x")
    except NotImplementedError:
        return False
    return True


def run_dir(run_id):
    return f"{RUNS}/{int(run_id)}"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_dump(run_id, path):
    """Store a fetched file as ``runs/<run>/<its name>``, overwriting; return
    {"name", "bytes", "sha256"}."""
    path = Path(path)
    name = f"{run_dir(run_id)}/{path.name}"
    storage = get_storage()
    checksum = sha256_of(path)
    try:
        with open(path, "rb") as fh:
            saved = storage.save(name, File(fh, name=path.name))
    except OSError as exc:  # a full disk: what was written of the dump is of no use
        try:
            storage.delete(name)
        except OSError:
            logger.warning("Could not remove the partial %s from the storage", name)
        raise StorageError(
            f"Cannot store {name} in the storage ({describe(storage)}): "
            f"{exc.strerror or exc}. Free some space there."
        ) from exc
    if saved != name:  # an overwrite is what makes a repeated fetch harmless
        storage.delete(saved)
        raise StorageError(f"the storage saved {name} as {saved}; it must allow overwriting")
    return {"name": name, "bytes": path.stat().st_size, "sha256": checksum}


def local_copies(run_id, fetched, work_dir):
    """Local paths of a run's stored dumps, checked against their checksums.

    A local storage's files are used where they are; from other storages they are
    copied into ``work_dir``. Returns {storage name: local path}.
    """
    storage = get_storage()
    local = is_local(storage)
    paths = {}
    for meta in fetched:
        name = meta["name"]
        if not name.startswith(f"{run_dir(run_id)}/"):
            raise StorageError(f"{name} is not a dump of run {run_id}")
        if not storage.exists(name):
            raise StorageError(f"{name} is not in the storage ({describe(storage)})")
        if local:
            path = Path(storage.path(name))
        else:
            path = Path(work_dir) / Path(name).name
            with storage.open(name, "rb") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        checksum = sha256_of(path)
        if checksum != meta["sha256"]:
            raise StorageError(
                f"{name} differs from what its fetch stored (SHA-256 {checksum[:12]}..., "
                f"expected {meta['sha256'][:12]}...); run the sync again"
            )
        paths[name] = str(path)
    return paths


def delete_run(run_id):
    """Remove a run's dumps (after a successful install)."""
    storage = get_storage()
    prefix = run_dir(run_id)
    try:
        _dirs, files = storage.listdir(prefix)
    except FileNotFoundError:
        return 0
    for name in files:
        storage.delete(f"{prefix}/{name}")
    if is_local(storage):
        storage.delete(prefix)
    logger.info("Deleted the %d stored dumps of run %s", len(files), run_id)
    return len(files)


def run_bytes(run_id):
    """The bytes of a run's stored dumps."""
    storage = get_storage()
    prefix = run_dir(run_id)
    try:
        _dirs, files = storage.listdir(prefix)
    except FileNotFoundError:
        return 0
    return sum(storage.size(f"{prefix}/{name}") for name in files)


def prune(older_than, keep=(), max_bytes=0):
    """Remove the dumps of runs (kept after a failure) older than ``older_than``; then,
    oldest first, until those left take ``max_bytes`` at most (0: no bound). The runs
    in ``keep`` (active ones) are neither removed nor counted."""
    from dbsync.models import SyncRun

    storage = get_storage()
    try:
        dirs, _files = storage.listdir(RUNS)
    except FileNotFoundError:
        return 0
    ids = {int(d) for d in dirs if d.isdigit()} - set(keep)
    cutoff = timezone.now() - older_than
    started = dict(SyncRun.objects.filter(pk__in=ids).values_list("pk", "started_at"))
    # A run deleted with its remote has no start: its dumps go first.
    oldest_first = sorted(ids, key=lambda run_id: (run_id in started, started.get(run_id), run_id))
    sizes = {run_id: run_bytes(run_id) for run_id in ids} if max_bytes else {}
    total = sum(sizes.values())
    pruned = 0
    for run_id in oldest_first:
        when = started.get(run_id)
        if when is None or when < cutoff or (max_bytes and total > max_bytes):
            pruned += delete_run(run_id)
            total -= sizes.get(run_id, 0)
    return pruned


def describe(storage):
    if is_local(storage):
        return f"folder {storage.location}"
    return f"bucket {getattr(storage, 'bucket_name', '?')}"
