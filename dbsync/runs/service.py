"""The one logic path of a sync, shared by the command, the Celery tasks and the admin.

A sync is: plan the models -> claim the remote (a run record, under its lock) ->
plan the fetch (manifest, schema check, full or incremental) -> fetch each model's
dump -> back up -> install everything in one transaction with the new cursor ->
record the result. The command does it all in one process (``run_sync``); the
Celery pipeline (``dbsync.runs.tasks``) does the same steps with the same functions,
fetching in parallel tasks that hand their dumps over through ``dbsync.runs.storage``:

    claim_run -> plan_run -> fetch_for_run (one per model) -> install_for_run
"""

import logging
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from dbsync.engine.backup import take_backup
from dbsync.engine.dumps import dump_name, read_key_set
from dbsync.engine.errors import AlreadyRunning, DanglingReferences, SyncError
from dbsync.engine.fetch import (
    check_manifest,
    fetch_keys,
    fetch_model,
    make_refetcher,
    write_fetch_record,
)
from dbsync.engine.files import sync_files
from dbsync.engine.install import Installer
from dbsync.engine.planner import label, make_plan
from dbsync.engine.records import SummaryPrefetch, sync_records
from dbsync.engine.remote import RemoteClient
from dbsync.engine.result import SyncResult
from dbsync.engine.workdir import load_for_resume, work_dir_for
from dbsync.models import SyncRun

from . import notify, storage
from .locking import LockBusy, claim, keep_alive, lock_or_refuse, mark_interrupted, remote_lock

logger = logging.getLogger(__name__)

MAX_RECORDED_ERRORS = 1000
# A run whose references dangle after the re-fetch is fetched once more, whole.
FETCH_ATTEMPTS = 2
DUMP, KEYS = "dump", "keys"


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
    records: bool = True  # the time-series records and files, after the objects
    trigger: str = "command"
    started_by: str = ""

    def as_json(self):
        return asdict(self)

    @classmethod
    def for_task(cls, database, trigger, started_by="", full=False):
        """The options of a Celery run: the remote's own settings, the task's defaults."""
        return cls(
            app_label=database.app_label,
            exclude=[name.strip() for name in database.exclude.split(",") if name.strip()],
            backup=settings.DBSYNC_TASK_BACKUP,
            full=full,
            trigger=trigger,
            started_by=started_by,
        )


@dataclass
class FetchPlan:
    """What one run fetches: decided once, from the remote's manifest."""

    full: bool
    since: datetime | None
    server_time: datetime
    entries: dict  # model label -> the manifest's entry (url, keys_url, ...)
    jobs: list  # [(model label, DUMP or KEYS)], in install order

    def as_json(self):
        return {
            "full": self.full,
            "since": self.since.isoformat() if self.since else None,
            "server_time": self.server_time.isoformat(),
            "entries": self.entries,
            "jobs": [list(job) for job in self.jobs],
        }

    @classmethod
    def from_json(cls, data):
        return cls(
            full=data["full"],
            since=datetime.fromisoformat(data["since"]) if data["since"] else None,
            server_time=datetime.fromisoformat(data["server_time"]),
            entries=data["entries"],
            jobs=[tuple(job) for job in data["jobs"]],
        )


@dataclass
class Fetched:
    """Dumps on local disk, ready for the install."""

    files: dict  # model label -> [paths]
    keys: object  # "present" (full dumps) or root label -> set of remote pks
    server_time: datetime | None


def _quiet(message, level=1):
    logger.debug("%s", message)


# --- the command: everything in one process ------------------------------------------


def run_sync(database, options, log=_quiet):
    """Sync ``database`` (a registered remote); return the SyncResult or raise SyncError."""
    plan = make_plan(options.app_label, [name for name in options.exclude if name])
    with lock_or_refuse(
        database,
        trigger=options.trigger,
        options=options.as_json(),
        started_by=options.started_by,
    ):
        run = claim(
            database,
            status=SyncRun.RUNNING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
        )
        result = SyncResult(remote=str(database), dry_run=options.dry_run)
        with recorded(run, result):
            _sync(database, plan, options, run, result, log)
        return result


def _sync(database, plan, options, run, result, log):
    work = work_dir_for(database, options.work_dir)
    if options.resume:
        log(f"Resuming from the dumps in {work}", 1)
        files, keys, server_time = load_for_resume(work, plan)
        if server_time and isinstance(server_time, str):
            server_time = datetime.fromisoformat(server_time)
        result.full = keys == "present"
        _record_fetch(run, server_time, result.full)
        install_fetched(
            database, plan, options, result, Fetched(files, keys, server_time), None, log
        )
        return
    client = RemoteClient(database, port=options.port)
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            _fetch_and_install(database, plan, options, run, result, log, client, work)
            return
        except DanglingReferences as exc:
            # The remote may have deleted an object between the fetch of its referrers
            # and its own (nothing was installed: the transaction rolled back). A fresh
            # fetch sees the remote as it is now; the same error twice is bad data.
            if attempt == FETCH_ATTEMPTS:
                raise
            logger.warning("%s; fetching everything again", exc)
            log(f"{exc}\nThe remote may have changed during the fetch: fetching again.", 1)
            result.reset()
            result.notes.append(
                "fetched twice: references dangled after the first fetch (the remote "
                "changed during it)"
            )


def _fetch_and_install(database, plan, options, run, result, log, client, work):
    fetch_plan = plan_fetch(database, plan, options, client, log)
    result.full = fetch_plan.full
    _record_fetch(run, fetch_plan.server_time, result.full)
    refetch = make_refetcher(client, fetch_plan.entries, plan, work)
    with ParallelFetch(database, plan, client, fetch_plan, work, log) as fetched:
        if options.fetch_only:
            fetched.wait_all()
            log(
                f"Fetched {len(fetch_plan.jobs)} dumps into {work}; nothing installed "
                f"(--fetch-only).",
                1,
            )
            result.notes.append(f"fetch only: dumps kept in {work}")
            return
        # The install starts with the first model while the others are still
        # being fetched: it waits for each dump only when it reaches it.
        install_fetched(database, plan, options, result, fetched, refetch, log, client=client)
    if not options.dry_run:
        _clean(work, plan)


class ParallelFetch:
    """The command's fetch: DBSYNC_FETCH_THREADS downloads at once, in plan order.

    Behaves as the install's ``Fetched``: ``files[label]`` waits for that dump;
    ``keys`` waits for every keys listing. A failed download fails the install
    (and so the whole run); leaving the block cancels what has not started.
    """

    def __init__(self, database, plan, client, fetch_plan, work, log):
        self.database, self.plan, self.fetch_plan = database, plan, fetch_plan
        self.client, self.work, self.log = client, work, log
        self.pool = ThreadPoolExecutor(max_workers=max(1, settings.DBSYNC_FETCH_THREADS))
        self.futures = {
            job: self.pool.submit(fetch_job, client, fetch_plan, *job, work)
            for job in fetch_plan.jobs
        }
        self.files = WaitingFiles(self)
        self.server_time = fetch_plan.server_time
        self.reported = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False

    def result(self, model_label, kind=DUMP):
        path, size = self.futures[(model_label, kind)].result()
        if kind == DUMP and (model_label, kind) not in self.reported:
            self.reported.add((model_label, kind))
            name = plan_model_name(self.plan, model_label)
            self.log(f"Syncing model {name}", 1)
            self.log(f"\t- Downloading {name} fixtures : done ({size} bytes)", 2)
        return path

    @property
    def keys(self):
        if self.fetch_plan.full:
            return "present"
        return WaitingKeys(self)

    def wait_all(self):
        paths = {job: self.result(*job) for job in self.fetch_plan.jobs}
        write_fetch_record(
            self.work,
            {
                "remote": self.database.name,
                "full": self.fetch_plan.full,
                "server_time": self.fetch_plan.server_time.isoformat(),
                "files": {m: [str(p)] for (m, kind), p in paths.items() if kind == DUMP},
                "keys": {m: str(p) for (m, kind), p in paths.items() if kind == KEYS},
            },
        )


class WaitingFiles(Mapping):
    """model label -> [dump path], each waiting for its download."""

    def __init__(self, fetch):
        self.fetch = fetch
        self.labels = [m for m, kind in fetch.fetch_plan.jobs if kind == DUMP]

    def __getitem__(self, model_label):
        if model_label not in self.labels:
            raise KeyError(model_label)
        return [str(self.fetch.result(model_label))]

    def __iter__(self):
        return iter(self.labels)

    def __len__(self):
        return len(self.labels)


class WaitingKeys(Mapping):
    """root label -> the remote's keys, each read when first asked for (the install
    reads the local key maps while the listings arrive)."""

    def __init__(self, fetch):
        self.fetch = fetch
        self.labels = [m for m, kind in fetch.fetch_plan.jobs if kind == KEYS]
        self.read = {}

    def __getitem__(self, model_label):
        if model_label not in self.labels:
            raise KeyError(model_label)
        if model_label not in self.read:
            self.read[model_label] = read_key_set(str(self.fetch.result(model_label, KEYS)))
        return self.read[model_label]

    def __iter__(self):
        return iter(self.labels)

    def __len__(self):
        return len(self.labels)


def plan_model_name(plan, model_label):
    return next(m.__name__ for m in plan.models if label(m) == model_label)


def _clean(work, plan):
    """Remove what this run fetched (on success only: a failed run's dumps stay for --resume)."""
    for path in work.glob(f"{plan.app_label}.*"):
        if path.suffix in {".json", ".part"}:
            path.unlink(missing_ok=True)
    (work / "fetch.json").unlink(missing_ok=True)


# --- the steps both paths share ---------------------------------------------------------


def plan_fetch(database, plan, options, client, log=_quiet):
    """Read the remote's manifest, check its schema, decide full or incremental."""
    log(f"Checking remote {client}", 1)
    manifest = client.manifest()
    log("Remote host is up. Continuing with the sync.", 1)
    entries = check_manifest(plan, manifest, client)
    log(f"The following models will be synced: {[m.__name__ for m in plan.models]}", 1)
    if plan.excluded:
        log(f"The following models will be excluded {plan.excluded}", 1)
    full = options.full or database.sync_cursor is None
    since = None
    if not full:
        since = database.sync_cursor - timedelta(seconds=settings.DBSYNC_OVERLAP_SECONDS)
        log(f"Incremental run: objects changed since {since.isoformat()}", 1)
    jobs = [(label(model), DUMP) for model in plan.models]
    if not full:
        # Deletions are found by comparing the remote's keys with ours.
        jobs += [(label(root), KEYS) for root in plan.roots]
    return FetchPlan(
        full=full,
        since=since,
        server_time=manifest["server_time"],
        entries={lbl: entries[lbl] for lbl in plan.labels},
        jobs=jobs,
    )


def fetch_job(client, fetch_plan, model_label, kind, dest_dir):
    """Fetch one job of the plan into ``dest_dir``; return (path, bytes)."""
    entry = fetch_plan.entries[model_label]
    try:
        if kind == DUMP:
            meta = fetch_model(client, entry, dest_dir, fetch_plan.since)
            return Path(meta["path"]), meta["bytes"]
        path = Path(fetch_keys(client, entry, dest_dir))
        return path, path.stat().st_size
    except OSError as exc:  # a full disk, a folder that cannot be written
        name = dump_name(model_label, "" if kind == DUMP else ".keys")
        Path(dest_dir, f"{name}.part").unlink(missing_ok=True)  # half a dump, of no use
        raise SyncError(
            f"Cannot write the {kind} of {model_label} in the folder {dest_dir}: "
            f"{exc.strerror or exc}. Free some space there (or use another folder)."
        ) from exc


def assemble(fetch_plan, paths):
    """The install's input from the fetched files: {(model label, kind): path}."""
    files = {m: [str(p)] for (m, kind), p in paths.items() if kind == DUMP}
    keys = "present"
    if not fetch_plan.full:
        keys = {m: read_key_set(str(p)) for (m, kind), p in paths.items() if kind == KEYS}
    return Fetched(files, keys, fetch_plan.server_time)


def _record_fetch(run, server_time, full):
    run.remote_time = server_time
    run.full = full
    run.save(update_fields=["remote_time", "full"])


def install_fetched(
    database, plan, options, result, fetched, refetch=None, log=_quiet, client=None
):
    """Back up, then install the dumps and move the cursor in one transaction; then,
    given the remote's ``client``, sync the records and files (see ``sync_data``)."""
    if options.backup and not options.dry_run:
        result.backup_path = take_backup(database.name)
        log(f"Backed up the local database to {result.backup_path}", 1)
    summary = None
    if options.records and client is not None and "hcore.timeseries" in plan.labels:
        summary = SummaryPrefetch(database, client, options.full)  # while the objects install
    max_delete = options.max_delete or settings.DBSYNC_MAX_DELETE
    with transaction.atomic(), _connection_loss_reported():
        installer = Installer(
            database,
            plan,
            fetched.files,
            result,
            remote_keys=fetched.keys,
            skip=options.skip,
            max_delete=max_delete,
            refetch=refetch,
            log=log,
        )
        installer.run()
        if options.dry_run:
            transaction.set_rollback(True)
        else:
            database.last_sync = timezone.now()
            update = ["last_sync"]
            if fetched.server_time is not None:
                database.sync_cursor = fetched.server_time
                update.append("sync_cursor")
            database.save(update_fields=update)
    if not options.dry_run:
        installer.analyze_grown_tables()
    if options.records:
        if client is None:
            result.notes.append("records and files not synced: they need the remote's API")
        else:
            sync_data(database, plan, client, options, result, log, summary)
    return result


@contextmanager
def _connection_loss_reported():
    """Inside the install's transaction (before its COMMIT): a database error that lost
    the connection (the session was terminated, the server restarted) becomes a
    SyncError saying so; the uncommitted transaction died with the session."""
    try:
        yield
    except (DatabaseError, connection.Database.Error) as exc:  # COPY uses psycopg's own
        if not getattr(connection.connection, "closed", False):
            raise  # the connection is fine: an error of the install's own
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SyncError(
            f"The connection to the local database was lost during the install ({reason}); "
            f"its transaction was not committed. Nothing of this run was installed."
        ) from exc


def sync_data(database, plan, client, options, result, log=_quiet, summary=None):
    """The records and the files, after the objects' transaction has committed (a
    record cannot outlive its series: the foreign key sees to it). Each in its own
    transaction; a failure leaves the objects installed and says so."""
    try:
        if "hcore.timeseries" in plan.labels:
            log("Syncing time-series records", 1)
            records = sync_records(
                database,
                client,
                skip=options.skip,
                dry_run=options.dry_run,
                log=log,
                summary=summary,
                full=options.full,
            )
            records.add_to(result)
        if "hcore.gentityfile" in plan.labels:
            log("Syncing files", 1)
            sync_files(database, client, dry_run=options.dry_run, log=log).add_to(result)
    except SyncError as exc:
        raise type(exc)(
            f"{exc} (the objects of this run were installed; records and files were not "
            f"all synced)"
        ) from exc


@contextmanager
def recorded(run, result):
    """Record the run's end, whatever it is, and re-raise a failure."""
    with failures_recorded(run, result):
        yield
    finish(run, SyncRun.SUCCEEDED, result, result.summary())


@contextmanager
def failures_recorded(run, result):
    """Record a failure of the block as the run's end, and re-raise it."""
    try:
        yield
    except SyncError as exc:
        finish(run, SyncRun.FAILED, result, str(exc))
        logger.error("Sync of %s failed: %s", run.database, exc)
        raise
    except SoftTimeLimitExceeded:
        finish(
            run,
            SyncRun.FAILED,
            result,
            f"Stopped: the run took longer than its time limit (DBSYNC_TASK_TIME_LIMIT="
            f"{settings.DBSYNC_TASK_TIME_LIMIT} s). Nothing was installed.",
        )
        logger.error("Sync of %s stopped at its time limit", run.database)
        raise
    except BaseException as exc:
        finish(run, SyncRun.FAILED, result, f"Unexpected error: {exc!r}")
        logger.exception("Sync of %s failed unexpectedly", run.database)
        raise


def finish(run, status, result, message):
    run.status = status
    run.finished_at = timezone.now()
    run.model_counts = result.counts
    run.errors = [p.as_dict() for p in result.problems[:MAX_RECORDED_ERRORS]]
    run.message = message
    run.backup_path = result.backup_path
    run.dry_run = result.dry_run
    run.progress = ""
    run.save()
    notify.run_finished(run)


def fail_run(run_id, message):
    """Mark a run failed unless it has already ended (errbacks, failed fetches)."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().select_related("database").filter(pk=run_id)
        run = run.first()
        if run is None or not run.is_active:  # ended, or deleted with its remote
            return False
        result = SyncResult(remote=str(run.database), dry_run=run.dry_run)
        result.counts = run.model_counts
        finish(run, SyncRun.FAILED, result, message)
    logger.error("Sync run %s of %s failed: %s", run_id, run.database, message)
    return True


# --- the Celery pipeline: the same steps, one task each -------------------------------------


def claim_run(database, options):
    """A new run of ``database`` in the FETCHING state; a refusal is recorded and
    raised (AlreadyRunning) when the remote is busy.

    The lock is taken only for the claim: with it in hand, a RUNNING run of the
    remote is known dead and is reaped. The fetch phase holds no lock (it changes
    nothing here) and shows it is alive through the run's heartbeat.
    """
    with lock_or_refuse(
        database,
        trigger=options.trigger,
        options=options.as_json(),
        started_by=options.started_by,
    ):
        return claim(
            database,
            status=SyncRun.FETCHING,
            trigger=options.trigger,
            options=options.as_json(),
            started_by=options.started_by,
        )


def enqueue_sync(database, trigger="admin", started_by="", full=False):
    """Start a Celery sync of ``database`` now (the admin's "Sync now").

    Returns the AsyncResult of the task that starts the pipeline. If the remote is
    busy, the refusal is recorded and AlreadyRunning raised, with a message for the
    user. If the broker cannot be reached, the run is recorded as failed.
    """
    from .tasks import start_run

    if not database.is_active:
        raise SyncError(f"The remote {database} is inactive; activate it first.")
    run = claim_run(database, SyncOptions.for_task(database, trigger, started_by, full))
    try:
        return start_run.delay(run.pk)
    except Exception as exc:  # noqa: BLE001 - any broker failure: record it, tell the user
        fail_run(run.pk, f"Could not queue the sync: {exc}")
        raise SyncError(
            f"Could not queue the sync of {database}: the task queue is unreachable ({exc})."
        ) from exc


def plan_run(run_id, log=_quiet):
    """Read the manifest and decide the run's fetches; return the FetchPlan, or None
    when the run is not waiting for its plan (a duplicate delivery)."""
    run = _get_run(run_id)
    if run is None or run.status != SyncRun.FETCHING or run.fetch_plan:
        logger.warning("Run %s is gone, has ended or is planned; not planning it", run_id)
        return None
    database = run.database
    options = SyncOptions(**run.options)
    with failures_recorded(run, SyncResult(remote=str(database))):
        plan = make_plan(options.app_label, options.exclude)
        client = RemoteClient(database, port=options.port)
        fetch_plan = plan_fetch(database, plan, options, client, log)
    run.fetch_plan = fetch_plan.as_json()
    run.heartbeat = timezone.now()
    run.progress = f"fetching {len(fetch_plan.jobs)} dumps"
    run.save(update_fields=["fetch_plan", "heartbeat", "progress"])
    _record_fetch(run, fetch_plan.server_time, fetch_plan.full)
    return fetch_plan


def fetch_for_run(run_id, model_label, kind):
    """Fetch one dump of a run into storage; return its metadata (small, JSON).

    Idempotent: the same run and model always give the same storage name, which a
    repeated delivery overwrites. A run that has already ended fetches nothing.
    """
    run = _get_run(run_id)
    if run is None or run.status != SyncRun.FETCHING:
        return {"model": model_label, "kind": kind, "skipped": "the run has ended"}
    fetch_plan = FetchPlan.from_json(run.fetch_plan)
    options = SyncOptions(**run.options)
    client = RemoteClient(
        run.database, port=options.port, retries=settings.DBSYNC_TASK_HTTP_RETRIES
    )
    started = timezone.now()
    with keep_alive(run_id), _temp_dir(f"run{run_id}-fetch-") as tmp:
        path, _size = fetch_job(client, fetch_plan, model_label, kind, tmp)
        stored = storage.save_dump(run_id, path)
    meta = {
        "model": model_label,
        "kind": kind,
        **stored,
        "started": started.isoformat(),
        "finished": timezone.now().isoformat(),
    }
    _record_stored(run_id, meta)
    return meta


def _record_stored(run_id, meta):
    """Note a stored dump in the run's fetch plan, so that the reaper can still send
    the install of a run whose chord Celery lost (``locking.lost_install``). Under a
    row lock: a run's fetches finish concurrently."""
    with transaction.atomic():
        run = SyncRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or not run.fetch_plan:
            return
        key = (meta["model"], meta["kind"])
        stored = [m for m in run.fetch_plan.get("stored", []) if (m["model"], m["kind"]) != key]
        run.fetch_plan["stored"] = [*stored, meta]
        run.save(update_fields=["fetch_plan"])


def install_for_run(run_id, fetched, log=_quiet):
    """Install a run's fetched dumps: the same install as the command's.

    Holds the remote's lock. A run that has already ended is left alone (a repeated
    delivery after success is a no-op); a run found RUNNING was being installed by
    a worker that died (its transaction rolled back): it is marked failed, and not
    retried, so that an install that kills its worker cannot loop.
    """
    run = _get_run(run_id)
    if run is None:
        return None
    database = run.database
    try:
        with remote_lock(database, wait=settings.DBSYNC_LOCK_WAIT_SECONDS):
            run.refresh_from_db()
            if run.status == SyncRun.RUNNING:
                mark_interrupted(run)
                return None
            if run.status != SyncRun.FETCHING:
                logger.warning(
                    "Run %s of %s is %s; nothing to install", run_id, database, run.status
                )
                return None
            run.status = SyncRun.RUNNING
            run.heartbeat = timezone.now()
            run.progress = "installing"
            run.save(update_fields=["status", "heartbeat", "progress"])
            result = _install_run(run, fetched, log)
    except LockBusy:
        logger.warning(
            "Run %s of %s: the remote is locked by another process; not installing",
            run_id,
            database,
        )
        return None
    storage.delete_run(run_id)
    return result


def _get_run(run_id):
    run = SyncRun.objects.select_related("database").filter(pk=run_id).first()
    if run is None:
        logger.warning("Run %s no longer exists (its remote was deleted?)", run_id)
    return run


def _install_run(run, fetched, log):
    database = run.database
    options = SyncOptions(**run.options)
    result = SyncResult(remote=str(database), dry_run=options.dry_run)
    run.fetch_plan = dict(run.fetch_plan, fetched=fetched)
    with recorded(run, result):
        fetch_plan = FetchPlan.from_json(run.fetch_plan)
        result.full = fetch_plan.full
        _check_complete(fetch_plan, fetched)
        plan = make_plan(options.app_label, options.exclude)
        with _temp_dir(f"run{run.pk}-install-") as work:
            local = storage.local_copies(run.pk, fetched, work)
            paths = {(meta["model"], meta["kind"]): local[meta["name"]] for meta in fetched}
            client = RemoteClient(database, port=options.port)
            refetch = make_refetcher(client, fetch_plan.entries, plan, work)
            dumps = assemble(fetch_plan, paths)
            install_fetched(database, plan, options, result, dumps, refetch, log, client=client)
    return result


def _check_complete(fetch_plan, fetched):
    got = {(meta["model"], meta["kind"]) for meta in fetched if "name" in meta}
    missing = [f"{m} ({kind})" for m, kind in fetch_plan.jobs if (m, kind) not in got]
    if missing:
        raise SyncError(f"The fetch is incomplete: no dump of {', '.join(missing)}.")


@contextmanager
def _temp_dir(prefix):
    root = Path(settings.DBSYNC_WORK_DIR)
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def reap_stale_runs():
    """Mark failed the runs whose worker died (periodic task), and prune old dumps."""
    from .locking import reap_all

    reaped = reap_all()
    active = set(SyncRun.objects.filter(status__in=SyncRun.ACTIVE).values_list("pk", flat=True))
    pruned = storage.prune(timedelta(days=settings.DBSYNC_STORAGE_KEEP_DAYS), keep=active)
    return {"reaped": reaped, "pruned": pruned}


__all__ = [
    "AlreadyRunning",
    "SyncOptions",
    "claim_run",
    "enqueue_sync",
    "fail_run",
    "fetch_for_run",
    "install_for_run",
    "plan_run",
    "reap_stale_runs",
    "run_sync",
]
