"""The backup of the local database taken before a sync changes anything."""

import logging
import os
import sqlite3
import subprocess

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.text import slugify

from .errors import SyncError

logger = logging.getLogger(__name__)


class BackupError(SyncError):
    """The backup could not be taken, so the sync did not start."""


def take_backup(remote_name):
    """Back up the default database; return the file's path. Prunes old backups."""
    backup_dir = settings.DBSYNC_BACKUP_DIR
    backup_dir.mkdir(parents=True, exist_ok=True)
    db = settings.DATABASES["default"]
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%f")
    base = f"{slugify(str(db['NAME']).rsplit('/', 1)[-1])}-{stamp}-before-{slugify(remote_name)}"
    if connection.vendor == "postgresql":
        path = backup_dir / f"{base}.pgdump"
        _pg_dump(db, path)
    elif connection.vendor == "sqlite":
        path = backup_dir / f"{base}.sqlite3"
        _sqlite_copy(path)
    else:
        raise BackupError(f"No backup method for {connection.vendor}; use --no-backups.")
    prune(backup_dir, settings.DBSYNC_BACKUP_KEEP)
    logger.info("Backed up the local database to %s", path)
    return str(path)


def _pg_dump(db, path):
    env = dict(os.environ)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    command = ["pg_dump", "--format=custom", f"--file={path}", "--dbname", db["NAME"]]
    for option, key in (("--host", "HOST"), ("--port", "PORT"), ("--username", "USER")):
        if db.get(key):
            command += [option, str(db[key])]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"pg_dump could not run: {exc}; install it or use --no-backups") from exc
    if done.returncode != 0:
        path.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")


def _sqlite_copy(path):
    connection.ensure_connection()
    target = sqlite3.connect(path)
    try:
        connection.connection.backup(target)
    finally:
        target.close()


def prune(backup_dir, keep):
    """Keep the ``keep`` newest backups."""
    backups = sorted(
        (p for p in backup_dir.iterdir() if p.suffix in {".pgdump", ".sqlite3"}),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in backups[max(keep, 1) :]:
        old.unlink(missing_ok=True)
        logger.info("Pruned old backup %s", old)
