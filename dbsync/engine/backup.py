"""The backup of the local database taken before a sync changes anything.

A backup is written under a temporary name, checked (``pg_restore --list`` must list
the data of every ``hcore`` and ``dbsync`` table, and the whole file must read back;
SQLite: ``PRAGMA integrity_check``)
and only then renamed to ``<database>-<UTC stamp>-before-<remote slug>.<suffix>``, so
no half-written or unreadable file ever looks like a backup. Retention is per remote
(the slug in the name, parsed exactly) and by age.
"""

import logging
import os
import re
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.text import slugify

from .errors import SyncError

logger = logging.getLogger(__name__)

SUFFIXES = (".pgdump", ".sqlite3")
STAMP_FORMAT = "%Y%m%dT%H%M%S%f"
# <database slug>-<stamp>-before-<remote slug>.<suffix>; slugs have no dots
BACKUP_NAME = re.compile(
    r"^(?P<database>[-\w]*)-(?P<stamp>\d{8}T\d{12})-before-(?P<remote>[-\w]+)"
    r"\.(?P<kind>pgdump|sqlite3)$"
)
PARTIAL = ".partial"  # the suffix of a backup being written and checked
TABLE_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA (?P<schema>\S+) (?P<table>\S+) ")


class BackupError(SyncError):
    """The backup could not be taken, so the sync did not start."""


def take_backup(remote_name):
    """Back up the default database, check the file; return its path. Prunes old
    backups of the remote ``remote_name`` (and any older than the age bound)."""
    backup_dir = settings.DBSYNC_BACKUP_DIR
    backup_dir.mkdir(parents=True, exist_ok=True)
    db = settings.DATABASES["default"]
    stamp = timezone.now().astimezone(UTC).strftime(STAMP_FORMAT)
    base = (
        f"{slugify(str(db['NAME']).rsplit('/', 1)[-1])}-{stamp}-before-{remote_slug(remote_name)}"
    )
    if connection.vendor == "postgresql":
        path = backup_dir / f"{base}.pgdump"
        write, check = (lambda partial: _pg_dump(db, partial)), check_pg_dump
    elif connection.vendor == "sqlite":
        path = backup_dir / f"{base}.sqlite3"
        write, check = _sqlite_copy, check_sqlite_copy
    else:
        raise BackupError(f"No backup method for {connection.vendor}; use --no-backups.")
    partial = path.with_name(path.name + PARTIAL)
    try:
        write(partial)
        check(partial, expected_tables())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    prune(
        backup_dir, remote_name, settings.DBSYNC_BACKUP_KEEP, settings.DBSYNC_BACKUP_MAX_AGE_DAYS
    )
    logger.info("Backed up the local database to %s", path)
    return str(path)


def remote_slug(remote_name):
    """The remote's part of its backups' names (never empty; letters of any script
    stay, so that "Αθήνα" and "Πάτρα" are not both "remote")."""
    return slugify(remote_name, allow_unicode=True) or "remote"


def expected_tables():
    """The tables of ``hcore`` and ``dbsync`` in the database: a backup must hold their
    data."""
    existing = set(connection.introspection.table_names())
    tables = set()
    for app in ("hcore", "dbsync"):
        for model in apps.get_app_config(app).get_models(include_auto_created=True):
            if model._meta.managed and not model._meta.proxy:
                tables.add(model._meta.db_table)
    return sorted(tables & existing)


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
        raise BackupError(f"pg_dump failed: {done.stderr.strip()[:500]}")


def check_pg_dump(path, tables):
    """``pg_restore --list`` must list the data of every table, and the whole file must
    read back (``pg_restore`` to nowhere): the list comes from the archive's table of
    contents alone, which a file cut short after it still has."""
    listing = _pg_restore("--list", str(path))
    listed = {m["table"] for m in map(TABLE_DATA.match, listing.splitlines()) if m}
    missing = [table for table in tables if table not in listed]
    if missing:
        raise BackupError(
            f"The backup failed its check: pg_restore --list shows no data of "
            f"{len(missing)} table(s): {', '.join(missing[:10])}"
        )
    _pg_restore(f"--file={os.devnull}", str(path))


def _pg_restore(*arguments):
    command = ["pg_restore", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(
            f"pg_restore could not run to check the backup: {exc}; install it (it comes "
            f"with pg_dump) or use --no-backups"
        ) from exc
    if done.returncode != 0:
        raise BackupError(
            f"The backup failed its check ({' '.join(command[:2])}): {done.stderr.strip()[:500]}"
        )
    return done.stdout


def _sqlite_copy(path):
    connection.ensure_connection()
    target = sqlite3.connect(path)
    try:
        connection.connection.backup(target)
    finally:
        target.close()


def check_sqlite_copy(path, tables):
    """``PRAGMA integrity_check`` must say ok, and every table must be there."""
    try:
        copy = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = copy.execute("PRAGMA integrity_check").fetchall()
            present = {row[0] for row in copy.execute("SELECT name FROM sqlite_master")}
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BackupError(f"The backup failed its check (cannot read it: {exc})") from exc
    if verdict != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in verdict[:5]).replace("\n", "; ")[:500]
        raise BackupError(f"The backup failed its check (PRAGMA integrity_check): {problems}")
    missing = [table for table in tables if table not in present]
    if missing:
        raise BackupError(f"The backup failed its check: no table {', '.join(missing[:10])}")


def backups_in(backup_dir):
    """[(path, remote slug, taken at)] of the backups in ``backup_dir``: files named as
    ``take_backup`` names them, nothing else."""
    found = []
    for path in backup_dir.iterdir():
        match = BACKUP_NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            taken = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:  # digits in the right places, but no date (month 13)
            continue
        found.append((path, match["remote"], taken))
    return found


def prune(backup_dir, remote_name, keep, max_age_days, now=None):
    """Keep the ``keep`` newest backups of the remote ``remote_name``; delete every
    backup (of any remote) older than ``max_age_days`` (0: no age bound). Returns the
    paths deleted."""
    now = now or timezone.now()
    oldest = now - timedelta(days=max_age_days) if max_age_days > 0 else None
    slug = remote_slug(remote_name)
    backups = sorted(backups_in(backup_dir), key=lambda b: b[2], reverse=True)
    mine = [b for b in backups if b[1] == slug]
    doomed = {path for path, _, _ in mine[max(keep, 1) :]}
    if oldest is not None:
        newest = mine[0][0] if mine else None  # the one just taken stays, whatever clocks say
        doomed |= {path for path, _, taken in backups if taken < oldest and path != newest}
    # a backup being written when its process was killed: nobody will finish it
    stale = now - timedelta(days=1)
    doomed |= {path for path in backup_dir.glob(f"*{PARTIAL}") if _modified(path) < stale}
    pruned = []
    for old in sorted(doomed):
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:  # the backup just taken is good: the sync goes on
            logger.warning("Could not prune old backup %s: %s", old, exc)
            continue
        pruned.append(old)
        logger.info("Pruned old backup %s", old)
    return pruned


def _modified(path):
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:  # gone meanwhile (another run pruned it)
        return datetime.max.replace(tzinfo=UTC)
