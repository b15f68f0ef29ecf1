"""run_sync(): the one logic path of a sync, shared by the command, the tasks and the admin.

plan -> claim the remote (lock + run record) -> fetch (or resume) -> backup ->
install in one transaction (with the new cursor) -> record the result.
"""

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .backup import take_backup
from .dumps import read_keys
from .errors import SyncError
from .fetch import (
    check_manifest,
    fetch_keys,
    fetch_model,
    make_refetcher,
    write_fetch_record,
)
from .install import Installer
from .locking import claim, remote_lock
from .models import SyncRun
from .planner import label, make_plan
from .remote import RemoteClient
from .result import SyncResult
from .workdir import load_for_resume, work_dir_for

logger = logging.getLogger(__name__)

MAX_RECORDED_ERRORS = 1000


@dataclass
class SyncOptions:
    app_label: str = "hcore"
    exclude: list = field(default_factory=list)
    port: int | None = None
    work_dir: str | None = None
    fetch_only: bool = False
    resume: bool = False
    backup: bool = True
    skip: bool = False
    full: bool = False
    max_delete: str | None = None
    dry_run: bool = False
    trigger: str = "command"
    started_by: str = ""

    def as_json(self):
        return asdict(self)


def _quiet(message, level=1):
    logger.debug("%s", message)


def run_sync(database, options, log=_quiet):
    """Sync ``database`` (a registered remote); return the SyncResult or raise SyncError."""
    plan = make_plan(options.app_label, [name for name in options.exclude if name])
    with remote_lock(database):
        run = claim(
            database,
            status=SyncRun.RUNNING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
        )
        result = SyncResult(remote=str(database), dry_run=options.dry_run)
        try:
            _sync(database, plan, options, run, result, log)
        except SyncError as exc:
            finish(run, SyncRun.FAILED, result, str(exc))
            logger.error("Sync of %s failed: %s", database, exc)
            raise
        except BaseException as exc:
            finish(run, SyncRun.FAILED, result, f"Unexpected error: {exc!r}")
            logger.exception("Sync of %s failed unexpectedly", database)
            raise
        finish(run, SyncRun.SUCCEEDED, result, result.summary())
        return result


def _sync(database, plan, options, run, result, log):
    work = work_dir_for(database, options.work_dir)
    if options.resume:
        log(f"Resuming from the dumps in {work}", 1)
        files, keys, server_time = load_for_resume(work, plan)
        result.full = keys == "present"
        refetch = None
    else:
        files, keys, server_time, refetch = _fetch(database, plan, options, result, work, log)
    if server_time and isinstance(server_time, str):
        server_time = datetime.fromisoformat(server_time)
    run.remote_time = server_time
    run.full = result.full
    run.save(update_fields=["remote_time", "full"])
    if options.fetch_only:
        log(f"Fetched {len(files)} dumps into {work}; nothing installed (--fetch-only).", 1)
        result.notes.append(f"fetch only: dumps kept in {work}")
        return
    if options.backup and not options.dry_run:
        result.backup_path = take_backup(database.name)
        log(f"Backed up the local database to {result.backup_path}", 1)
    max_delete = options.max_delete or settings.DBSYNC_MAX_DELETE
    with transaction.atomic():
        Installer(
            database,
            plan,
            files,
            result,
            remote_keys=keys,
            skip=options.skip,
            max_delete=max_delete,
            refetch=refetch,
            log=log,
        ).run()
        if options.dry_run:
            transaction.set_rollback(True)
        else:
            database.last_sync = timezone.now()
            update = ["last_sync"]
            if server_time is not None:
                database.sync_cursor = server_time
                update.append("sync_cursor")
            database.save(update_fields=update)
    if not options.resume and not options.dry_run:
        _clean(work, plan)


def _fetch(database, plan, options, result, work, log):
    client = RemoteClient(database, port=options.port)
    log(f"Checking remote {client}", 1)
    manifest = client.manifest()
    log("Remote host is up. Continuing with the sync.", 1)
    entries = check_manifest(plan, manifest, client)
    log(f"The following models will be synced: {[m.__name__ for m in plan.models]}", 1)
    if plan.excluded:
        log(f"The following models will be excluded {plan.excluded}", 1)
    full = options.full or database.sync_cursor is None
    result.full = full
    since = None
    if not full:
        since = database.sync_cursor - timedelta(seconds=settings.DBSYNC_OVERLAP_SECONDS)
        log(f"Incremental run: objects changed since {since.isoformat()}", 1)
    files = {}
    for model in plan.models:
        model_label = label(model)
        log(f"Syncing model {model.__name__}", 1)
        meta = fetch_model(client, entries[model_label], work, since)
        files[model_label] = [meta["path"]]
        log(f"\t- Downloading {model.__name__} fixtures : done ({meta['bytes']} bytes)", 2)
    keys = "present"
    key_files = {}
    if not full:
        keys = {}
        for root in plan.roots:
            path = fetch_keys(client, entries[label(root)], work)
            key_files[label(root)] = path
            keys[label(root)] = set(read_keys(path))
    write_fetch_record(
        work,
        {
            "remote": database.name,
            "full": full,
            "server_time": manifest["server_time"].isoformat(),
            "files": files,
            "keys": key_files,
        },
    )
    return files, keys, manifest["server_time"], make_refetcher(client, entries, plan, work)


def _clean(work, plan):
    """Remove what this run fetched (on success only: a failed run's dumps stay for --resume)."""
    for path in work.glob(f"{plan.app_label}.*"):
        if path.suffix in {".json", ".part"}:
            path.unlink(missing_ok=True)
    (work / "fetch.json").unlink(missing_ok=True)


def finish(run, status, result, message):
    run.status = status
    run.finished_at = timezone.now()
    run.model_counts = result.counts
    run.errors = [p.as_dict() for p in result.problems[:MAX_RECORDED_ERRORS]]
    run.message = message
    run.backup_path = result.backup_path
    run.dry_run = result.dry_run
    run.save()
