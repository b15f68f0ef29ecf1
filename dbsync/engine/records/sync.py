"""The records sync of one remote: the summary, the plan, every batch fetched in a small
thread pool into the work folder (streamed to disk, checked against its ``# end``
lines, written out for COPY), and only then loaded, from disk, in one transaction;
then the records cursor. The transaction never waits on the remote: a slow or broken
remote fails the run before it opens, with nothing of the records changed.

After a records sync that finished with nothing skipped, the remote database's clock
read just before its summary (the manifest's ``records.database_time``) is kept as the
remote's ``records_cursor``: the next run asks only for the summaries of the series
changed since then. It is the clock that stamps those changes (the remote's
PostgreSQL), which may be apart from the remote Django's (``server_time``, the objects'
cursor, on another host). From a remote that does not send it (an earlier release), the
run's objects' cursor is kept instead, as before.
"""

import logging
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone as django_timezone

from ..errors import SyncError
from ..journal import recording
from ..progress import RECORDS, RECORDS_FETCH, quiet, steps
from ..result import RECORDS_LABEL, SyncResult
from .batches import BatchFetcher
from .guard import RecordsGuard
from .loader import Loader
from .plan import APPEND, CLEAR, REPLACE, ReplicatedSeries, make_batches, plan_jobs
from .summary import fetch_summary, records_endpoints, summary_params

logger = logging.getLogger(__name__)


def describe(result, empty=0):
    """The records sync's closing line (of its ``result``; ``empty``: series empty at
    the remote, recorded in bulk)."""
    counts = result.counts[RECORDS_LABEL]
    done = [s for s in result.series.values() if not s["skipped"]]
    appended = sum(1 for s in done if s["appended"])
    verb = "Would install" if result.dry_run else "Installed"
    empty = f"; {empty} series empty at the remote" if empty else ""
    return (
        f"{verb} {counts['created'] + counts['updated']} records: {appended} series appended "
        f"to, {len(done) - appended} replaced, {counts['skipped']} skipped; "
        f"{counts['deleted']} records removed{empty}."
    )


class RecordsSync:
    """One records sync of one remote; see the module's docstring."""

    def __init__(
        self,
        database,
        client,
        *,
        skip=False,
        dry_run=False,
        log=quiet,
        summary=None,
        full=False,
        max_delete=None,
        approval=None,
        journal_run=None,
    ):
        self.database = database
        self.journal_run = journal_run  # the run the records' changes are journaled under
        self.client = client
        self.prefetch = summary
        self.full = full
        self.dry_run = dry_run
        self.log = log
        self.result = SyncResult.of_part(RECORDS_LABEL, str(database), dry_run)
        self.empty = 0  # series empty at both ends, recorded in bulk
        self.workers = max(1, int(getattr(settings, "DBSYNC_RECORDS_WORKERS", 4)))
        if max_delete is None:
            max_delete = settings.DBSYNC_MAX_RECORDS_DELETE
        self.guard = RecordsGuard(database, max_delete, approval)
        self.loader = Loader(
            database,
            self.result,
            now=django_timezone.now(),
            skip=skip,
            log=log,
            guard=self.guard,
        )
        self.batches = 0
        self.summary_time = None  # the remote database's clock before its summary

    def run(self):
        work = Path(settings.DBSYNC_WORK_DIR)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"records-{self.database.pk}-", dir=work) as tmp:
            self.work = Path(tmp)
            started = time.monotonic()
            urls, summary, incremental = self.summary()
            if urls is None:
                note = f"{self.database} serves no records (an older version?); none synced"
                self.result.notes.append(note)
                self.log(note, 1)
                return self.result
            self.summary_time = urls["database_time"]
            waited = time.monotonic() - started
            started = time.monotonic()
            self.fetcher = BatchFetcher(self.database, self.client, urls["batch_url"], self.work)
            listed = list(summary) if incremental else None
            series = ReplicatedSeries(self.database, listed, self.log)
            plan = plan_jobs(
                summary,
                series,
                listed_all=not incremental,
                prefetched=self.prefetch is not None,
            )
            del summary, listed  # the jobs hold what is needed of it
            self.result.add(RECORDS_LABEL, "unchanged", plan.unchanged + series.unread_unchanged)
            self.empty = len(plan.empty)
            changed = f"{len(plan.jobs)} of {plan.series + series.unread} time series changed"
            if plan.empty:
                changed += f", {len(plan.empty)} empty at both ends (recorded as such)"
            if incremental:
                changed += " (the summaries of those changed since the last run)"
            self.log(f"Records: {changed}", 1)
            if self.prefetch is not None:
                self.log(f"\t- the summary: waited {waited:.1f} s more for it, and read it", 2)
            else:
                self.log(f"\t- the summary: {waited:.1f} s", 2)
            self.log(f"\t- the plan: {time.monotonic() - started:.1f} s", 2)
            self.guard.check_plan(plan.jobs)
            started = time.monotonic()
            fetched = self.fetch(plan.jobs)
            self.log(
                f"\t- {self.batches} batches fetched in {time.monotonic() - started:.1f} s", 2
            )
            deadline = getattr(self.client, "run_deadline", None)
            if deadline is not None:
                deadline.check(f"{self.database}: the install of the records")
            started = time.monotonic()
            with transaction.atomic(), recording(self.journal_run):
                self.install(plan.jobs, fetched)
                self.guard.raise_if_refused()
                self.loader.install_empty(plan.empty)
                self.move_cursor()
                if self.dry_run:
                    transaction.set_rollback(True)
            self.log(
                f"\t- {self.batches} batches installed in {time.monotonic() - started:.1f} s",
                2,
            )
        self.log(describe(self.result, self.empty), 1)
        return self.result

    def summary(self):
        """(urls, summary, whether it lists only the changed series), or (None, None, _)."""
        prefetch = self.prefetch
        if prefetch is not None:
            prefetch.future.exception()  # waits for it; a failure is raised by result()
            if not (self.full and prefetch.incremental):
                urls, summary = prefetch.result()
                return urls, summary, prefetch.incremental
            prefetch.discard()  # --full: every series' summary, fetched again
            self.prefetch = None
        urls = records_endpoints(self.client)
        if urls is None:
            return None, None, False
        params = summary_params(self.database, urls, self.full)
        summary = fetch_summary(self.database, self.client, urls, self.work, params)
        return urls, summary, bool(params)

    def fetch(self, jobs):
        """Every batch of ``jobs`` fetched and checked in the pool, into the work
        folder, before anything is installed; an append that did not add up is fetched
        again, whole. Returns the FetchedBatches in the order to install them. A
        malformed series ends the fetch at once, unless ``skip``."""
        progress = steps(self.log)
        progress.begin(RECORDS_FETCH, len(jobs))
        try:
            return self.fetch_all(jobs, progress)
        finally:
            progress.end(RECORDS_FETCH)

    def fetch_all(self, jobs, progress):
        fetched = []
        window = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="records") as pool:

            def submit(batches):
                for batch in batches:
                    self.batches += 1
                    batch.number = self.batches
                    window.append(pool.submit(self.fetcher.fetch, batch))

            try:
                submit(make_batches(jobs, REPLACE))
                submit(make_batches(jobs, APPEND))
                while window:
                    batch = self.written(window.popleft())
                    progress.advance(
                        RECORDS_FETCH,
                        len(batch.series),
                        records=sum(series.count for series in batch.series),
                    )
                    self.loader.refuse_malformed(batch)
                    fetched.append(batch)
                    if batch.refetch:
                        for job in batch.refetch:
                            logger.info(
                                "%s: records of timeseries %s changed before our last one; "
                                "fetching it whole",
                                self.database,
                                job.remote_pk,
                            )
                            job.mode = REPLACE
                        submit(make_batches(batch.refetch, REPLACE))
            except BaseException:
                for future in window:
                    future.cancel()
                raise
        return fetched

    def written(self, future):
        """The FetchedBatch of ``future``; a full (or unwritable) work folder, which
        now holds every batch of the run until the install, as a SyncError saying so."""
        try:
            return future.result()
        except OSError as exc:
            if exc.errno is None:  # not the file system's
                raise
            raise SyncError(
                f"{self.database}: cannot write the records' batches in the folder "
                f"{self.work}: {exc.strerror or exc}. Free some space there (or set "
                f"DBSYNC_WORK_DIR to another folder); nothing of the records was installed."
            ) from exc

    def install(self, jobs, fetched):
        """The fetched batches, from disk, in the caller's transaction."""
        progress = steps(self.log)
        progress.begin(RECORDS, len(jobs))
        try:
            self.loader.begin()
            self.loader.clear([job for job in jobs if job.mode == CLEAR])
            for batch in fetched:
                self.loader.install_batch(batch)
            self.loader.finish()
        finally:
            progress.end(RECORDS)

    def move_cursor(self):
        """Keep the remote database's clock before the summary (or, from a remote that
        does not send it, the run's cursor) as the records cursor: only after a whole
        records sync (a skipped series must be listed again), and never in a dry run."""
        cursor = self.summary_time or self.database.sync_cursor
        if self.dry_run or cursor is None or self.result.counts[RECORDS_LABEL]["skipped"]:
            return
        type(self.database).objects.filter(pk=self.database.pk).update(records_cursor=cursor)
        self.database.records_cursor = cursor


def sync_records(
    database,
    client,
    *,
    skip=False,
    dry_run=False,
    log=quiet,
    summary=None,
    full=False,
    max_delete=None,
    approval=None,
    journal_run=None,
):
    """Sync the records of the time series replicated from ``database``.

    Call it after the metadata install has committed. Returns a SyncResult: the
    counts under RECORDS_LABEL, and per series (``series``) the records appended,
    replaced, removed, or that it was skipped. Raises RecordsError (a SyncError)
    on a malformed series unless ``skip``: nothing of the records is installed then.
    A failure of the remote (unreachable, HTTP errors) raises RemoteError either way.
    ``summary``: a SummaryPrefetch started before the objects' install. ``full``: ask
    for the summary of every series, not only of those changed since the records
    cursor. ``max_delete`` (default DBSYNC_MAX_RECORDS_DELETE) and ``approval``: the
    records guard's (``records.guard``);
    a series over it raises DeleteGuardError, and nothing of the records is installed.
    ``journal_run``: the run whose journal keeps what the records sync changes (None:
    not journaled).
    """
    sync = RecordsSync(
        database,
        client,
        skip=skip,
        dry_run=dry_run,
        log=log,
        summary=summary,
        full=full,
        max_delete=max_delete,
        approval=approval,
        journal_run=journal_run,
    )
    return sync.run()
