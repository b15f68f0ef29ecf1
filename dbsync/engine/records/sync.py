"""The records sync of one remote: the summary, the plan, the batches fetched in a small
thread pool and loaded here as they come, in one transaction; then the records cursor.

After a records sync that finished with nothing skipped, the remote's clock when the
run began (its objects' cursor) is kept as the remote's ``records_cursor``: the next
run asks only for the summaries of the series changed since then.
"""

import logging
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone as django_timezone

from ..progress import quiet
from ..result import RECORDS_LABEL, ObjectProblem
from .batches import BatchFetcher
from .loader import Loader
from .plan import APPEND, CLEAR, REPLACE, SERIES_LABEL, ReplicatedSeries, make_batches, plan_jobs
from .summary import fetch_summary, records_endpoints, summary_params

logger = logging.getLogger(__name__)


@dataclass
class RecordsResult:
    """What a records sync did: per series (by remote pk), and in total."""

    remote: str
    series: dict = field(default_factory=dict)  # remote pk -> {"appended", "replaced", ...}
    fetched: int = 0  # records received
    created: int = 0  # rows inserted
    updated: int = 0  # rows changed by a merge
    removed: int = 0  # rows deleted by replacements
    unchanged: int = 0  # records of the series that had nothing new
    empty: int = 0  # series with no records at either end, recorded as such in bulk
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    dry_run: bool = False

    def done(self, remote_pk, mode, records, removed=0):
        self.series[remote_pk] = {
            "appended": records if mode == APPEND else 0,
            "replaced": records if mode != APPEND else 0,
            "removed": removed,
            "skipped": False,
        }

    def skipped(self, error):
        self.series[error.remote_pk] = {
            "appended": 0,
            "replaced": 0,
            "removed": 0,
            "skipped": True,
        }
        self.problems.append(
            ObjectProblem(
                self.remote,
                SERIES_LABEL,
                error.remote_pk,
                f"{error.describe(short=True)}; its local records were left as they were",
            )
        )

    @property
    def counts(self):
        """The counts of the run's table; ``skipped`` counts series, the rest records."""
        return {
            "fetched": self.fetched,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.removed,
            "skipped": sum(1 for s in self.series.values() if s["skipped"]),
        }

    def add_to(self, result):
        """Report into a run's SyncResult, under "hcore.record"."""
        result.counts[RECORDS_LABEL] = self.counts
        result.problems.extend(self.problems)
        result.notes.extend(self.notes)

    def summary(self):
        done = [s for s in self.series.values() if not s["skipped"]]
        appended = sum(1 for s in done if s["appended"])
        verb = "Would install" if self.dry_run else "Installed"
        empty = f"; {self.empty} series empty at the remote" if self.empty else ""
        return (
            f"{verb} {self.created + self.updated} records: {appended} series appended to, "
            f"{len(done) - appended} replaced, {self.counts['skipped']} skipped; "
            f"{self.removed} records removed{empty}."
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
    ):
        self.database = database
        self.client = client
        self.prefetch = summary
        self.full = full
        self.dry_run = dry_run
        self.log = log
        self.result = RecordsResult(remote=str(database), dry_run=dry_run)
        self.workers = max(1, int(getattr(settings, "DBSYNC_RECORDS_WORKERS", 4)))
        self.loader = Loader(database, self.result, now=django_timezone.now(), skip=skip, log=log)
        self.batches = 0

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
            waited = time.monotonic() - started
            started = time.monotonic()
            self.fetcher = BatchFetcher(self.database, self.client, urls["batch_url"], self.work)
            listed = list(summary) if incremental else None
            series = ReplicatedSeries(self.database, listed)
            plan = plan_jobs(
                summary,
                series,
                listed_all=not incremental,
                prefetched=self.prefetch is not None,
            )
            del summary, listed  # the jobs hold what is needed of it
            self.result.unchanged = plan.unchanged + series.unread_unchanged
            self.result.empty = len(plan.empty)
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
            started = time.monotonic()
            with transaction.atomic():
                self.install(plan.jobs)
                self.loader.install_empty(plan.empty)
                self.move_cursor()
                if self.dry_run:
                    transaction.set_rollback(True)
            self.log(
                f"\t- {self.batches} batches fetched and installed in "
                f"{time.monotonic() - started:.1f} s",
                2,
            )
        self.log(self.result.summary(), 1)
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

    def install(self, jobs):
        """Fetch batches in the pool, load each here as it comes (in the order submitted);
        an append that did not add up is fetched again, whole."""
        self.loader.begin()
        self.loader.clear([job for job in jobs if job.mode == CLEAR])
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
                    fetched = window.popleft().result()
                    self.loader.install_batch(fetched)
                    if fetched.refetch:
                        for job in fetched.refetch:
                            logger.info(
                                "%s: records of timeseries %s changed before our last one; "
                                "fetching it whole",
                                self.database,
                                job.remote_pk,
                            )
                            job.mode = REPLACE
                        submit(make_batches(fetched.refetch, REPLACE))
            except BaseException:
                for future in window:
                    future.cancel()
                raise
        self.loader.finish()

    def move_cursor(self):
        """Keep the run's cursor as the records cursor: only after a whole records sync
        (a skipped series must be listed again), and never in a dry run."""
        cursor = self.database.sync_cursor
        if self.dry_run or cursor is None or self.result.counts["skipped"]:
            return
        type(self.database).objects.filter(pk=self.database.pk).update(records_cursor=cursor)
        self.database.records_cursor = cursor


def sync_records(
    database, client, *, skip=False, dry_run=False, log=quiet, summary=None, full=False
):
    """Sync the records of the time series replicated from ``database``.

    Call it after the metadata install has committed. Returns a RecordsResult (per
    series: records appended, replaced, skipped). Raises RecordsError (a SyncError)
    on a malformed series unless ``skip``: nothing of the records is installed then.
    A failure of the remote (unreachable, HTTP errors) raises RemoteError either way.
    ``summary``: a SummaryPrefetch started before the objects' install. ``full``: ask
    for the summary of every series, not only of those changed since the records
    cursor.
    """
    sync = RecordsSync(
        database, client, skip=skip, dry_run=dry_run, log=log, summary=summary, full=full
    )
    return sync.run()
