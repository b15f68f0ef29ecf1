"""The sync itself: plan, fetch into the work folder, install, then records and files.

One sync of a remote is: plan the models -> plan the fetch (manifest, schema check,
full or incremental) -> fetch every dump to local disk -> back up -> install
everything in one transaction with the new cursor -> records -> files. The fetch
is done before the transaction opens, so the transaction never waits on a remote's
dumps. The command runs it all in one process (``sync``: ``fetch_all`` into the
work folder, then ``install_dumps``); the Celery pipeline (``dbsync.runs``) runs the
same steps, one task each, with these same functions (``plan_fetch``, ``fetch_job``
per dump into storage, then ``install_dumps``). Nothing here knows of runs, locks or
Celery: the caller records what happens (``on_fetch_planned``, the result).
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from dataclasses import replace as replace_options
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from protocol.legacy import LAYOUT_LEGACY

from . import tally
from .backup import take_backup
from .capture import (
    AllBut,
    behind_horizon,
    changed_since,
    check_identity,
    model_changed,
    read_capture,
)
from .deadlines import RunDeadline
from .diskbudget import DiskBudget
from .dumps import dump_name, read_key_set
from .errors import (
    DanglingReferences,
    DiskBudgetError,
    InconsistentRemote,
    LocalDatabaseLost,
    MissingObjects,
    SyncError,
    TombstonesPruned,
)
from .fetch import (
    check_manifest,
    fetch_keys,
    fetch_model,
    make_refetcher,
    read_fetch_record,
    write_fetch_record,
)
from .files import sync_files
from .install import Installer, drop_staged
from .journal import recording
from .keysets import KeySet
from .legacy import is_legacy, legacy_entries, to_line_layout
from .planner import label
from .progress import FETCH, quiet, steps
from .records import SummaryPrefetch, sync_legacy_records, sync_records
from .records.plan import series_tally
from .remote import RemoteClient
from .workdir import load_for_resume, work_dir_for

logger = logging.getLogger(__name__)

FETCH_ATTEMPTS = 2
REFETCH_ROUNDS = 3  # installs started again with objects asked for again (see install_fetched)
DUMP, KEYS, DELETED = "dump", "keys", "deleted"


@dataclass
class SyncOptions:
    app_label: str = "hcore"
    exclude: list = field(default_factory=list)
    port: int | None = None
    work_dir: str | None = None
    fetch_only: bool = False
    resume: bool = False
    backup: bool = True  # journal the run (and pg_dump first, if pg_dump says so); -N: off
    pg_dump: bool | None = None  # a whole-database dump first; None: as DBSYNC_PG_DUMP says
    journal_run: int | None = None  # the run the changes are journaled under (dbsync.runs)
    skip: bool = False
    full: bool = False
    max_delete: str | None = None
    max_records_delete: str | None = None
    dry_run: bool = False
    accept_new_identity: bool = False
    records: bool = True  # the time-series records and files, after the objects
    trigger: str = "command"
    started_by: str = ""

    def as_json(self):
        return asdict(self)

    @property
    def wants_pg_dump(self):
        """A whole-database dump before the install: a backed-up run, asked for (per
        run, or by DBSYNC_PG_DUMP)."""
        if not self.backup or self.dry_run:
            return False
        return settings.DBSYNC_PG_DUMP if self.pg_dump is None else bool(self.pg_dump)

    @classmethod
    def for_task(cls, database, trigger, started_by="", full=False, backup=None):
        """The options of a Celery run: the remote's own settings, the task's defaults
        (journaled as ``DBSYNC_TASK_BACKUP`` says; ``backup`` True: journaled and a
        whole-database pg_dump first, this run; False: neither)."""
        return cls(
            app_label=database.app_label,
            exclude=[name.strip() for name in database.exclude.split(",") if name.strip()],
            backup=settings.DBSYNC_TASK_BACKUP if backup is None else bool(backup),
            pg_dump=True if backup else None,
            full=full,
            trigger=trigger,
            started_by=started_by,
        )


@dataclass
class FetchPlan:
    """What one run fetches: decided once, from the remote's manifest."""

    full: bool
    since: datetime | None
    server_time: datetime | None  # None: not known (a legacy remote has no manifest)
    entries: dict  # model label -> the manifest's entry (url, keys_url, ...)
    jobs: list  # [(model label, DUMP, KEYS or DELETED)], in install order
    # Change capture (engine.capture): the remote's section ({cursor, horizon,
    # identity}) or None (a clock remote); the transaction id changes are asked from
    # (None: a full or clock run).
    capture: dict | None = None
    changed_since: int | None = None
    replace: bool = False  # a new identity accepted: the old copy goes first

    def as_json(self):
        return {
            "capture": self.capture,
            "changed_since": self.changed_since,
            "replace": self.replace,
            "full": self.full,
            "since": self.since.isoformat() if self.since else None,
            "server_time": self.server_time.isoformat() if self.server_time else None,
            "entries": self.entries,
            "jobs": [list(job) for job in self.jobs],
        }

    @classmethod
    def from_json(cls, data):
        return cls(
            full=data["full"],
            since=datetime.fromisoformat(data["since"]) if data["since"] else None,
            server_time=(
                datetime.fromisoformat(data["server_time"]) if data["server_time"] else None
            ),
            entries=data["entries"],
            jobs=[tuple(job) for job in data["jobs"]],
            capture=data.get("capture"),
            changed_since=data.get("changed_since"),
            replace=data.get("replace", False),
        )


@dataclass
class Fetched:
    """Dumps on local disk, ready for the install."""

    files: dict  # model label -> [paths]
    keys: object  # "present" (full dumps) or model label -> set of remote pks
    server_time: datetime | None
    capture: dict | None = None  # the remote's capture section: cursor and identity kept
    replace: bool = False  # delete this remote's old objects first (a new identity)
    is_sync: bool = True  # False: a repair (engine.verify), which is no sync of the remote

    def nothing(self):
        """Nothing fetched and nothing deleted: the install has nothing to do."""
        return (
            not self.files
            and isinstance(self.keys, dict)
            and all(isinstance(keys, AllBut) and not keys.gone for keys in self.keys.values())
        )


# --- the command: everything in one process ------------------------------------------


def sync(
    database,
    plan,
    options,
    result,
    log=quiet,
    on_fetch_planned=None,
    approval=None,
    deadline=None,
):
    """Fetch ``database``'s dumps into its work folder and install them (or, with
    ``options.resume``, install those a failed run left there), then the records and
    files; counts go to ``result``. ``on_fetch_planned(server_time, full)`` is told
    the run's cursor and kind once they are known; ``approval``: deletions an operator
    approved once (``guard.Approval``); ``deadline``: the run's RunDeadline (by
    default DBSYNC_RUN_DEADLINE from now)."""
    deadline = deadline or RunDeadline.since()
    on_fetch_planned = on_fetch_planned or (lambda server_time, full: None)
    work = work_dir_for(database, options.work_dir)
    if options.resume:
        log(f"Resuming from the dumps in {work}", 1)
        files, keys, server_time = load_for_resume(work, plan)
        if server_time and isinstance(server_time, str):
            server_time = datetime.fromisoformat(server_time)
        result.full = keys == "present"
        on_fetch_planned(server_time, result.full)
        install_fetched(
            database,
            plan,
            options,
            result,
            Fetched(files, keys, server_time),
            None,
            log,
            approval=approval,
        )
        return
    client = RemoteClient(database, port=options.port, run_deadline=deadline)
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        client.budget = DiskBudget()  # a fetch again rewrites the same files: counted anew
        try:
            _fetch_and_install(
                database, plan, options, result, log, client, work, on_fetch_planned, approval
            )
            log(f"Received {client.received.bytes} bytes from the remote in all", 2)
            return
        except DiskBudgetError:
            # What was fetched is incomplete and of no use to --resume: it goes.
            clean(work, plan)
            raise
        except (DanglingReferences, InconsistentRemote) as exc:
            # The remote may have deleted an object between the fetch of its referrers
            # and its own, or of its key listing and its referrers' (nothing was
            # installed: the transaction rolled back). A fresh fetch sees the remote as
            # it is now; the same error twice is bad data.
            if attempt == FETCH_ATTEMPTS:
                raise
            logger.warning("%s; fetching everything again", exc)
            log(f"{exc}\nThe remote may have changed during the fetch: fetching again.", 1)
            result.reset()
            result.notes.append(
                "fetched twice: references dangled or contradicted the key listings after "
                "the first fetch (the remote changed during it)"
            )


def _fetch_and_install(
    database, plan, options, result, log, client, work, on_fetch_planned, approval
):
    fetch_plan = plan_fetch(database, plan, options, client, log)
    result.full = fetch_plan.full
    on_fetch_planned(fetch_plan.server_time, result.full)
    paths = fetch_all(database, plan, client, fetch_plan, work, log)
    if options.fetch_only:
        # Kept for the operator's --resume: the work folders' retention leaves it alone.
        write_fetch_record(work, {**read_fetch_record(work), "fetch_only": True})
        log(
            f"Fetched {len(fetch_plan.jobs)} dumps into {work}; nothing installed (--fetch-only).",
            1,
        )
        result.notes.append(f"fetch only: dumps kept in {work}")
        return
    install_dumps(database, plan, options, result, fetch_plan, paths, work, client, log, approval)
    if not options.dry_run:
        clean(work, plan)


def fetch_all(database, plan, client, fetch_plan, work, log=quiet):
    """The fetch half: every job of ``fetch_plan`` into ``work``, DBSYNC_FETCH_THREADS
    downloads at once, started in plan order (the key listings after the dumps).
    Returns {(model label, kind): path} and leaves a fetch record (``--resume``
    installs from it). Nothing is open on the local database meanwhile: the install
    starts once every dump is on disk. A failed download fails the run; what has not
    started is cancelled."""
    started = time.monotonic()
    paths, total = {}, 0
    progress = steps(log)
    progress.begin(FETCH, len(fetch_plan.jobs))
    pool = ThreadPoolExecutor(max_workers=max(1, settings.DBSYNC_FETCH_THREADS))
    try:
        futures = {
            job: pool.submit(fetch_job, client, fetch_plan, *job, work) for job in fetch_plan.jobs
        }
        for (model_label, kind), future in futures.items():
            path, size = future.result()
            paths[(model_label, kind)] = path
            total += size
            progress.advance(FETCH, bytes=size)
            if kind == DUMP:
                name = plan_model_name(plan, model_label)
                log(f"Syncing model {name}", 1)
                log(f"\t- Downloading {name} fixtures : done ({size} bytes)", 2)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.end(FETCH)
    write_fetch_record(
        work,
        {
            "remote": database.name,
            "full": fetch_plan.full,
            "server_time": (
                fetch_plan.server_time.isoformat() if fetch_plan.server_time else None
            ),
            "files": {m: [str(p)] for (m, kind), p in paths.items() if kind == DUMP},
            "keys": {m: str(p) for (m, kind), p in paths.items() if kind == KEYS},
        },
    )
    log(
        f"Fetch phase: {len(paths)} dumps, {total} bytes in {time.monotonic() - started:.2f} s",
        2,
    )
    return paths


def plan_model_name(plan, model_label):
    return next(m.__name__ for m in plan.models if label(m) == model_label)


def clean(work, plan):
    """Remove what this run fetched (on success only: a failed run's dumps stay for --resume)."""
    for path in work.glob(f"{plan.app_label}.*"):
        if path.suffix in {".json", ".part"}:
            path.unlink(missing_ok=True)
    (work / "fetch.json").unlink(missing_ok=True)


# --- the steps both paths share ---------------------------------------------------------


def plan_fetch(database, plan, options, client, log=quiet):
    """Read the remote's manifest, check its schema, decide full or incremental."""
    if is_legacy(database):
        return plan_legacy_fetch(database, plan, client, log)
    log(f"Checking remote {client}", 1)
    manifest = client.manifest()
    log("Remote host is up. Continuing with the sync.", 1)
    entries = check_manifest(plan, manifest, client)
    capture = read_capture(manifest, client)
    replace = False
    if capture is not None:
        check_identity(database, capture, options.accept_new_identity)
        replace = bool(database.remote_identity) and database.remote_identity != capture.identity
        if replace:
            log("A new identity accepted: this remote's old objects go, then a full sync", 1)
    log(f"The following models will be synced: {[m.__name__ for m in plan.models]}", 1)
    if plan.excluded:
        log(f"The following models will be excluded {plan.excluded}", 1)
    pruned = database.sync_cursor is not None and behind_horizon(database, capture)
    if pruned and not options.full:
        log(
            f"The remote pruned its tombstones past our cursor (its horizon is transaction "
            f"{capture.horizon}, our cursor {database.capture_cursor}): a full run",
            1,
        )
    full = options.full or replace or pruned or database.sync_cursor is None
    xid = changed_since(database, capture, full)
    since = None
    if xid is not None:
        # Change capture: only what was written at or after our cursor, of the models
        # whose counters moved; deletions from the remote's tombstones.
        log(f"Incremental run: objects written by transaction {xid} or later", 1)
        changed = [m for m in plan.models if model_changed(entries[label(m)], xid)]
        jobs = [(label(model), DUMP) for model in changed]
        # Of a child model too: a child row deleted while its object stays is a
        # change of concrete type (install.deletions.changed_types).
        jobs += [
            (label(model), DELETED)
            for model in plan.models
            if model_changed(entries[label(model)], xid, "deleted")
        ]
        # A root whose count differs from ours (a row lost here, say): its whole keys
        # listing, which also tells which keys to fetch (``fetch_missing``).
        jobs += [(label(root), KEYS) for root in miscounted(database, plan, entries, log)]
    else:
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
        capture=capture.as_json() if capture is not None else None,
        changed_since=xid,
        replace=replace,
    )


def miscounted(database, plan, entries, log=quiet):
    """The roots whose count at the remote (its manifest) is not ours of its objects.
    Ours are tallies (``engine.tally``): those whose tables nothing wrote since they
    were counted are read as they are; the others are counted, in one statement."""
    roots = [r for r in plan.roots if isinstance(entries[label(r)].get("count"), int)]
    if not roots:
        return []
    ours = tally.figures(database, [row_tally(database, root) for root in roots], log)
    return [
        root for root in roots if entries[label(root)]["count"] != ours[row_tally_key(root)][0]
    ]


def row_tally_key(root):
    return f"rows {label(root)}"


def row_tally(database, root):
    """The tally of ``root``'s rows replicated from ``database``."""
    rows = root._base_manager.filter(original_db=database)
    return tally.count_of(row_tally_key(root), [root._meta.db_table], rows)


def refresh_tallies(database, plan, log=quiet):
    """The tallies that this run's own writes made stale, counted again at its end
    (``engine.tally.refresh``), not at the start of the next run: an unchanged run
    after a changed one reads them as they are."""
    tallies = [row_tally(database, root) for root in plan.roots]
    if "hcore.timeseries" in plan.labels:
        tallies.append(series_tally(database))
    tally.refresh(database, tallies, log)


def fetch_missing(database, plan, fetched, refetch, log=quiet):
    """The objects whose keys a remote's listing has and this replica lacks, fetched
    with their row families (no transaction open) into ``fetched``. Before, a missing
    key was only ever noticed by a full run."""
    if not isinstance(fetched.keys, dict) or refetch is None:
        return
    for root in plan.roots:
        listing = fetched.keys.get(label(root))
        if not isinstance(listing, KeySet):
            continue
        ours = KeySet.from_sorted(
            list(
                root._base_manager.filter(original_db=database)
                .order_by("original_id")
                .values_list("original_id", flat=True)
            )
        )
        missing = listing.difference(ours)
        if not missing:
            continue
        log(f"Fetching {len(missing)} {label(root)} object(s) the remote has and we lack", 1)
        for member_label, paths in refetch(label(root), sorted(missing)).items():
            fetched.files.setdefault(member_label, []).extend(paths)


def plan_legacy_fetch(database, plan, client, log=quiet):
    """A legacy remote's fetch (``engine.legacy``): every model's full listing, always."""
    log(f"Remote {client} serves the 2010 layout: fetching every object", 1)
    log(f"The following models will be synced: {[m.__name__ for m in plan.models]}", 1)
    if plan.excluded:
        log(f"The following models will be excluded {plan.excluded}", 1)
    return FetchPlan(
        full=True,
        since=None,
        server_time=None,
        entries=legacy_entries(database, plan),
        jobs=[(label(model), DUMP) for model in plan.models],
    )


def fetch_job(client, fetch_plan, model_label, kind, dest_dir):
    """Fetch one job of the plan into ``dest_dir``; return (path, bytes)."""
    entry = fetch_plan.entries[model_label]
    try:
        if kind == DUMP:
            meta = fetch_model(client, entry, dest_dir, fetch_plan.since, fetch_plan.changed_since)
            if entry.get("layout") == LAYOUT_LEGACY:
                to_line_layout(meta["path"])
            return Path(meta["path"]), meta["bytes"]
        deleted_since = fetch_plan.changed_since if kind == DELETED else None
        path = Path(fetch_keys(client, entry, dest_dir, deleted_since))
        return path, path.stat().st_size
    except OSError as exc:  # a full disk, a folder that cannot be written
        name = dump_name(model_label, "" if kind == DUMP else ".keys")
        Path(dest_dir, f"{name}.part").unlink(missing_ok=True)  # half a dump, of no use
        raise SyncError(
            f"Cannot write the {kind} of {model_label} in the folder {dest_dir}: "
            f"{exc.strerror or exc}. Free some space there (or use another folder)."
        ) from exc


def check_horizon(database, client, fetch_plan):
    """Raise TombstonesPruned if the remote pruned, during the fetch, tombstones that the
    deletions this run read needed. Its pruning publishes the new horizon, then deletes
    below it (``hcore.tombstones``): so a listing that missed a tombstone was read after
    that horizon was committed, and a manifest read after the listing shows it. One
    request more, in the runs that asked for deletions only."""
    if fetch_plan.changed_since is None or client is None:
        return
    if not any(kind == DELETED for _label, kind in fetch_plan.jobs):
        return
    capture = read_capture(client.manifest(), client)
    if capture is not None and capture.horizon > fetch_plan.changed_since:
        raise TombstonesPruned(
            f"{database}: the remote pruned its tombstones while this run read its "
            f"deletions (its horizon is now transaction {capture.horizon}, past this "
            f"replica's cursor {fetch_plan.changed_since}): the listing of what it deleted "
            f"may be cut, so nothing of it was used"
        )


def assemble(fetch_plan, paths, plan):
    """The install's input from the fetched files: {(model label, kind): path}."""
    files = {m: [str(p)] for (m, kind), p in paths.items() if kind == DUMP}
    keys = "present"
    if not fetch_plan.full:
        # A listing of what was deleted: every key but those (a model not listed:
        # nothing of it deleted); a whole keys listing, where fetched, says more.
        keys = {
            m: AllBut(read_key_set(str(p))) for (m, kind), p in paths.items() if kind == DELETED
        }
        keys.update({m: read_key_set(str(p)) for (m, kind), p in paths.items() if kind == KEYS})
        if fetch_plan.changed_since is not None:
            # Change capture: a root whose deletions were not asked for deleted nothing
            # since the cursor, so the remote still has every object of it we hold.
            # Said so, a cascade from an unlisted object to one of them is judged a
            # contradiction (install.impact), as under a whole keys listing.
            for root in plan.roots:
                keys.setdefault(label(root), AllBut(KeySet()))
    return Fetched(files, keys, fetch_plan.server_time, fetch_plan.capture, fetch_plan.replace)


def install_dumps(
    database, plan, options, result, fetch_plan, paths, work, client, log=quiet, approval=None
):
    """The install half, the same for the command and the Celery install task: the
    dumps of ``fetch_plan``, on local disk at ``paths`` ({(model label, kind): path}),
    installed in one transaction; then the records and files from ``client``.

    An object that the dumps reference but do not contain is asked for again, into
    ``work`` (``fetch.make_refetcher``), between two attempts of the install, never
    from inside its transaction: see ``install_fetched``."""
    # A legacy remote cannot be asked for given keys: dangling references fail the
    # fetch, and the command fetches everything again (FETCH_ATTEMPTS).
    refetch = (
        None if is_legacy(database) else make_refetcher(client, fetch_plan.entries, plan, work)
    )
    check_horizon(database, client, fetch_plan)
    fetched = assemble(fetch_plan, paths, plan)
    fetch_missing(database, plan, fetched, refetch, log)
    if fetch_plan.replace:
        options = replace_options(options, full=True)  # the records anew too
    return install_fetched(
        database, plan, options, result, fetched, refetch, log, client=client, approval=approval
    )


def install_fetched(
    database, plan, options, result, fetched, refetch=None, log=quiet, client=None, approval=None
):
    """Back up, then install the dumps and move the cursor in one transaction; then,
    given the remote's ``client``, sync the records and files (see ``sync_data``).
    ``approval`` (``guard.Approval``) may allow deletions beyond the guards'.

    Which objects the dumps reference but lack (the remote changed during the fetch)
    is known only as the install resolves each reference against the local key maps.
    The install then stops (MissingObjects), its transaction rolls back, and, given
    ``refetch(model_label, pks)``, those objects are fetched, with no transaction
    open, and the install starts again with them: at most REFETCH_ROUNDS times, and
    never for the same objects twice; what still dangles is then an error (or, with
    ``skip``, skipped)."""
    if options.wants_pg_dump:
        result.backup_path = take_backup(database.name)  # raises if it fails its check
        log(f"Backed up the local database to {result.backup_path}", 1)
    summary = None
    if (
        options.records
        and client is not None
        and "hcore.timeseries" in plan.labels
        and not is_legacy(database)
    ):
        summary = SummaryPrefetch(database, client, options.full)  # while the objects install
    started = time.monotonic()
    asked = {} if refetch is not None else None  # model label -> pks asked for again
    for attempt in range(REFETCH_ROUNDS + 1):
        if client is not None and client.run_deadline is not None:
            client.run_deadline.check(f"{database}: the install of the objects")
        if asked is not None and attempt == REFETCH_ROUNDS:
            asked = None  # the last attempt asks for nothing more: what dangles, dangles
        try:
            installer = install_objects(
                database, plan, options, result, fetched, asked, log, approval
            )
            break
        except MissingObjects as exc:  # rolled back: fetch them with no transaction open
            result.reset()
            for model_label, pks in sorted(exc.missing.items()):
                asked.setdefault(model_label, set()).update(pks)
                for member_label, paths in refetch(model_label, sorted(pks)).items():
                    fetched.files.setdefault(member_label, []).extend(paths)
            log(f"Installing again with {sum(map(len, exc.missing.values()))} object(s)", 2)
    committed = time.monotonic()
    if not options.dry_run:
        if approval is not None:  # spent once the objects commit, even with nothing to do
            approval.installed = True
        if installer is not None:  # None: nothing changed at a capture remote
            installer.analyze_grown_tables()
    log(
        f"Install phase: {committed - started:.2f} s in the objects' transaction, "
        f"{time.monotonic() - committed:.2f} s analyzing",
        2,
    )
    if options.records:
        if client is None:
            result.notes.append("records and files not synced: they need the remote's API")
        else:
            sync_data(database, plan, client, options, result, log, summary, approval)
    return result


def install_objects(database, plan, options, result, fetched, asked, log, approval=None):
    """The objects' transaction: the install, and the remote's cursor moved; returns
    the Installer. Raises MissingObjects (rolled back) for objects to ask for again."""
    if fetched.nothing():
        # Nothing changed at the remote: no key maps loaded, only the cursors moved.
        log("Nothing changed at the remote since the last run", 1)
        with _install_transaction(), recording(options.journal_run):
            if not options.dry_run and fetched.is_sync:
                save_cursors(database, fetched)
        return None
    try:
        return _install_objects(database, plan, options, result, fetched, asked, log, approval)
    finally:
        drop_staged(database)  # what a rolled-back first sync staged (install.inserver)


def _install_objects(database, plan, options, result, fetched, asked, log, approval):
    with _install_transaction(), recording(options.journal_run):
        if fetched.replace:
            remove_old_copy(database, plan, options, result, approval, log)
        installer = Installer(
            database,
            plan,
            fetched.files,
            result,
            remote_keys=fetched.keys,
            skip=options.skip,
            max_delete=options.max_delete or settings.DBSYNC_MAX_DELETE,
            approval=approval,
            asked=asked,
            log=log,
        )
        installer.run()
        if options.dry_run:
            transaction.set_rollback(True)
        elif fetched.is_sync:  # a repair (engine.verify) is no sync: the cursors stay
            save_cursors(database, fetched)
    return installer


def remove_old_copy(database, plan, options, result, approval, log):
    """A remote whose new identity was accepted: every object of its old copy goes,
    under the delete guard (an empty listing of every root: an Installer that writes
    nothing and deletes what is not listed), before the new copy installs."""
    Installer(
        database,
        plan,
        {},
        result,
        remote_keys={label(root): KeySet() for root in plan.roots},
        max_delete=options.max_delete or settings.DBSYNC_MAX_DELETE,
        approval=approval,
        log=log,
    ).run()
    database.records_cursor = None  # its series are new: their records, whole
    database.files_cursor = None  # and its files are all listed
    database.save(update_fields=["records_cursor", "files_cursor"])


def save_cursors(database, fetched):
    """The remote's cursors, in the objects' transaction: the clock's and, from a
    capture remote, its snapshot's xmin and its identity."""
    database.last_sync = timezone.now()
    update = ["last_sync"]
    if fetched.server_time is not None:
        database.sync_cursor = fetched.server_time
        update.append("sync_cursor")
    if fetched.capture is not None:
        database.capture_cursor = fetched.capture["cursor"]
        database.remote_identity = fetched.capture["identity"]
        update += ["capture_cursor", "remote_identity"]
    database.save(update_fields=update)


@contextmanager
def _install_transaction():
    """The install's transaction, a lost connection reported as LocalDatabaseLost even
    when the server is still down as the block is left: Django's rollback then
    reconnects, fails too, and its error would hide the loss."""
    try:
        with transaction.atomic(), _connection_loss_reported():
            yield
    except DatabaseError as exc:
        lost = exc.__context__
        while lost is not None and not isinstance(lost, LocalDatabaseLost):
            lost = lost.__context__
        if lost is not None:
            raise LocalDatabaseLost(str(lost)) from exc
        raise


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
        raise LocalDatabaseLost(
            f"The connection to the local database was lost during the install ({reason}); "
            f"its transaction was not committed. Nothing of this run was installed."
        ) from exc


def sync_data(database, plan, client, options, result, log=quiet, summary=None, approval=None):
    """The records and the files, after the objects' transaction has committed (a
    record cannot outlive its series: the foreign key sees to it). Each in its own
    transaction; a failure leaves the objects installed and says so."""
    try:
        if is_legacy(database):
            sync_legacy_data(database, plan, client, options, result, log, approval)
            return
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
                max_delete=options.max_records_delete or settings.DBSYNC_MAX_RECORDS_DELETE,
                approval=approval,
                journal_run=options.journal_run,
            )
            records.add_to(result)
        if "hcore.gentityfile" in plan.labels:
            log("Syncing files", 1)
            files = sync_files(
                database,
                client,
                dry_run=options.dry_run,
                log=log,
                journal_run=options.journal_run,
                full=options.full,
            )
            files.add_to(result)
        if not options.dry_run:
            refresh_tallies(database, plan, log)
    except SyncError as exc:
        again = type(exc)(
            f"{exc} (the objects of this run were installed; records and files were not "
            f"all synced)"
        )
        again.__dict__.update(exc.__dict__)  # e.g. a guard's list of deletions
        raise again from exc


def sync_legacy_data(database, plan, client, options, result, log=quiet, approval=None):
    """A legacy remote's records, a series a request (``records.legacy``); no files:
    the 2010 layout serves none."""
    if "hcore.timeseries" in plan.labels:
        log("Syncing time-series records (from /tsdata/, a series a request)", 1)
        records = sync_legacy_records(
            database,
            client,
            skip=options.skip,
            dry_run=options.dry_run,
            log=log,
            max_delete=options.max_records_delete or settings.DBSYNC_MAX_RECORDS_DELETE,
            approval=approval,
            journal_run=options.journal_run,
        )
        records.add_to(result)
    if "hcore.gentityfile" in plan.labels:
        note = f"{database} serves the 2010 layout, which has no files: files not synced"
        result.notes.append(note)
        log(note, 1)
