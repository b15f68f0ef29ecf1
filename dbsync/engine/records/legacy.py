"""The records of a legacy remote, from ``/api/tsdata/<id>/`` (``protocol.legacy``).

The 2010 layout has no summary and no batches: one request a series, the whole
series each time (its historical ``date,value,flags`` lines and the ``# end`` line
with the count and checksum, ``api.records``). A series whose count and checksum
equal those of the last sync is left as it is; any other is replaced whole, read by
today's batch reader (as a batch of one) and installed by today's loader, all in one
transaction. Every series is downloaded to the work folder first, so that no
transaction is open while the remote answers; the records guard (``records.guard``)
then judges what each series would lose, before the transaction and again as each
loads. A series the remote no longer has (404) is left as it is: the next objects
sync deletes it. The requests go one after another (through the remote's request
slots): a legacy remote is a fallback, and its API has no batches.
"""

import logging
import os
import tempfile
from array import array
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone as django_timezone

from protocol.formats import SERIES_TRAILER_LINE
from protocol.legacy import TSDATA

from ..errors import PayloadError, RemoteError
from ..journal import recording
from ..legacy import listing_path
from ..progress import RECORDS, RECORDS_FETCH, quiet, steps
from ..result import RECORDS_LABEL, SyncResult
from .batches import BatchReader, Truncated
from .guard import RecordsGuard
from .loader import Loader
from .plan import CLEAR, REPLACE, Batch, Job, ReplicatedSeries
from .summary import Entry
from .sync import describe

logger = logging.getLogger(__name__)

TAIL_BYTES = 256  # more than the longest '# end' line


def trailer_of(path):
    """The ``# end`` line's match of a downloaded tsdata body, or None (cut short)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - TAIL_BYTES))
        lines = fh.read().decode("ascii", "replace").rstrip("\r\n").rsplit("\n", 1)
    return SERIES_TRAILER_LINE.fullmatch(lines[-1].rstrip("\r"))


class LegacyRecordsSync:
    """One records sync of a legacy remote; see the module's docstring."""

    def __init__(
        self, database, client, *, skip=False, dry_run=False, log=quiet, max_delete=None,
        approval=None, journal_run=None,
    ):  # fmt: skip
        self.database = database
        self.journal_run = journal_run
        self.client = client
        self.dry_run = dry_run
        self.log = log
        self.result = SyncResult.of_part(RECORDS_LABEL, str(database), dry_run)
        if max_delete is None:
            max_delete = settings.DBSYNC_MAX_RECORDS_DELETE
        self.guard = RecordsGuard(database, max_delete, approval)
        self.loader = Loader(
            database, self.result, now=django_timezone.now(), skip=skip, log=log, guard=self.guard
        )
        self.empty = array("q")

    def run(self):
        work = Path(settings.DBSYNC_WORK_DIR)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"tsdata-{self.database.pk}-", dir=work) as tmp:
            self.work = Path(tmp)
            # Every series on disk before the transaction: none waits on the remote.
            series = list(ReplicatedSeries(self.database))
            progress = steps(self.log)
            progress.begin(RECORDS_FETCH, len(series))
            try:
                fetched = []
                for remote_pk, local_pk, state in series:
                    todo = self.fetch_series(remote_pk, local_pk, state)
                    if todo is not None:
                        fetched.append(todo)
                    progress.advance(RECORDS_FETCH)
            finally:
                progress.end(RECORDS_FETCH)
            self.guard.check_plan([job for job, _source in fetched])
            deadline = getattr(self.client, "run_deadline", None)
            if deadline is not None:
                deadline.check(f"{self.database}: the install of the records")
            progress.begin(RECORDS, len(fetched))
            try:
                with transaction.atomic(), recording(self.journal_run):
                    self.loader.begin()
                    for job, source in fetched:
                        if job.mode == CLEAR:
                            self.loader.clear([job])
                        else:
                            self.replace(job, source)
                        source.unlink(missing_ok=True)
                    self.guard.raise_if_refused()
                    self.loader.finish()
                    self.loader.install_empty(self.empty)
                    if self.dry_run:
                        transaction.set_rollback(True)
            finally:
                progress.end(RECORDS)
        self.log(describe(self.result, len(self.empty)), 1)
        return self.result

    def fetch_series(self, remote_pk, local_pk, state):
        """Download a series; return its job and body, or None when nothing is to load."""
        source = self.work / f"tsdata-{remote_pk}.csv"
        try:
            self.client.download(
                listing_path(self.database, f"{TSDATA}/{remote_pk}"),
                source,
                is_complete=lambda path: trailer_of(path) is not None,
            )
        except RemoteError as exc:
            if getattr(exc, "status", None) != 404:
                raise
            logger.info("%s: timeseries %s is gone; its records left", self.database, remote_pk)
            return None
        trailer = trailer_of(source)
        count, checksum = int(trailer["count"]), trailer["checksum"]
        remote = Entry(count, None, None, checksum, int(trailer["utc_offset"]))
        todo = None
        if state is not None and (state.count, state.checksum) == (count, checksum):
            self.result.add(RECORDS_LABEL, "unchanged", count)
        elif count == 0 and (state is None or state.count == 0):
            self.empty.append(local_pk)
        elif count == 0:
            todo = (Job(remote_pk, local_pk, CLEAR, remote, state), source)
        else:
            todo = (Job(remote_pk, local_pk, REPLACE, remote, state), source)
        if todo is None:
            source.unlink(missing_ok=True)
        return todo

    def replace(self, job, source):
        """The series whole: its body read as a batch of one (headed as a batch is)."""
        block = self.work / f"series-{job.remote_pk}.csv"
        with open(block, "wb") as out, open(source, "rb") as body:
            out.write(
                f"# timeseries {job.remote_pk} utc_offset={job.remote.utc_offset}\n".encode()
            )
            while chunk := body.read(1 << 20):
                out.write(chunk)
        dest = self.work / f"series-{job.remote_pk}.copy"
        try:
            fetched = BatchReader(Batch(REPLACE, [job]), block, dest).read()
        except Truncated:
            raise PayloadError(
                f"{self.database}: the records of timeseries {job.remote_pk} end before their "
                f"'# end' line"
            ) from None
        finally:
            block.unlink(missing_ok=True)
        for series in fetched.series:
            if series.error is not None and series.error.line is not None:
                series.error.line -= 1  # a line of the remote's body, not of our header's
        self.loader.install_batch(fetched)


def sync_legacy_records(
    database, client, *, skip=False, dry_run=False, log=quiet, max_delete=None, approval=None,
    journal_run=None,
):  # fmt: skip
    """Sync the records of the time series replicated from the legacy remote
    ``database``, after its objects' install has committed; returns a SyncResult as
    ``records.sync_records`` does. ``max_delete`` and ``approval``: the records
    guard's, as for ``sync_records``."""
    return LegacyRecordsSync(
        database,
        client,
        skip=skip,
        dry_run=dry_run,
        log=log,
        max_delete=max_delete,
        approval=approval,
        journal_run=journal_run,
    ).run()
