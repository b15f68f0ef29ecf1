"""Syncing time-series records: after the metadata, only what is new.

For every time series replicated from a remote, the remote's summary of its
records (count, period and checksum per series; see ``api.records``) is compared
with what the last sync installed here (``hcore.RecordsSyncState``):

- the same: nothing to do, not even a request;
- more records, ending later: only the records after our last one are fetched
  ("append"). The checksum of what we hold plus that of the new records must make
  the remote's checksum, and the counts must add up; if not, the remote rewrote
  records we hold, and the series is fetched again, whole;
- anything else (a rewrite of old records, a deletion, no state yet): the series is
  fetched whole ("replace"); a series the remote holds no records of is emptied
  without a request ("clear").

Most series of a large remote may have no records at all: such a series that has no
records here either (no state, or an empty one) costs no job and no entry in the
result; the records of all of them (normally none) are deleted, and their empty
states written, a few statements for all.

After a records sync that finished with nothing skipped, the remote's clock when the
run began (its objects' cursor) is kept as the remote's ``records_cursor``; the next
run asks only for the summaries of the series whose records changed since then (less
``DBSYNC_OVERLAP_SECONDS``), and a series not listed is unchanged (or, with no state
here, new: fetched whole). ``full`` (``--full``) asks for every series' summary.

Series are fetched in batches (one request for up to BATCH_SERIES series, through
the API's batch endpoint), several batches at a time in a small thread pool: each
worker downloads a batch into a work folder, checks it line by line and writes its
records out in COPY's text format. The calling thread installs the batches as they
come, in one transaction: replaced series by one DELETE and a COPY straight into the
records table; appends by a COPY straight into the table too (every appended record
is later than the last one held, so none can clash; a batch that clashes all the
same goes through a staging table and one ``INSERT ... ON CONFLICT DO UPDATE``); then
the new sync states. A series the remote deleted loses its records with it (the
metadata install deletes the series; the foreign key cascades).

A malformed CSV (a bad date, a value that is not a number, a body cut short) stops
the run with an error naming the remote, the series (its remote pk) and the line,
and nothing of this run's records is installed. With ``skip``, that series keeps
the records it had and is reported; the others are installed.
"""

import csv
import functools
import logging
import re
import tempfile
import threading
import time
from array import array
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone as django_timezone

from hcore.bulk import COPY_BLOCK, copy_file, execute_batches
from hcore.models import Record, RecordsSyncState, Timeseries
from protocol.formats import (
    EPOCH,
    SERIES_HEADER_LINE,
    SERIES_TRAILER_LINE,
    ZERO_CHECKSUM,
    add_checksums,
)

from .dumps import listing_entries
from .errors import PayloadError
from .keysets import KeySet
from .progress import quiet
from .remote import check_api_path
from .result import RECORDS_LABEL, ObjectProblem

logger = logging.getLogger(__name__)

SERIES_LABEL = "hcore.timeseries"
APPEND, REPLACE, CLEAR = "append", "replace", "clear"
# A batch: few enough series for a short URL, few enough records for a short request.
BATCH_SERIES = 100
BATCH_RECORDS = 250_000
WRITE_LINES = 10_000
SQLITE_BATCH = 5_000
STATE_CHUNK = 50_000  # states written a statement (PostgreSQL)
DELETE_CHUNK = 10_000  # series whose records one DELETE removes
# An incremental summary listing at most this many series: only those (and the series
# with no state) are read from the local tables; more, and every series is read.
LISTED_FILTER_MAX = 10_000

TABLE = Record._meta.db_table
STAGE = "dbsync_record_stage"
COLUMNS = 'timeseries_id, "timestamp", value, flags'
NULL = "\\N"
HEX = re.compile(r"[0-9a-f]{16}")
# What the API writes: minutes, with seconds and microseconds only when present.
LONG_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
# csv refuses a field over its limit (128 KiB), but only once it holds the whole line:
# lines are read at most MAX_LINE_CHARS at a time, so that a remote cannot make the
# reader hold a longer one (a longer line fails as a field over the limit, or as a line
# of too many fields).
MAX_LINE_CHARS = 1 << 20
COPY_SPECIALS = re.compile(r"[\\\t\n\r\x00]")  # NUL: no PostgreSQL text can hold it
COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
COPY_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


class SeriesError(Exception):
    """What is wrong with one series' records (a result, or the run's error)."""

    def __init__(self, remote_pk, message, line=None):
        super().__init__(message)
        self.remote_pk = remote_pk
        self.line = line
        self.message = message

    def describe(self, short=False):
        """The error, naming the series (or, ``short``, as "its records", for a problem
        that names the series already) and the line."""
        where = f", line {self.line}" if self.line is not None else ""
        whose = "its records" if short else f"records of {SERIES_LABEL}(pk={self.remote_pk})"
        return f"{whose}{where}: {self.message}"


class RecordsError(PayloadError):
    """The records of a series could not be installed, and the run was told to halt."""


class Truncated(Exception):
    """A batch's body ends before its last series' ``# end`` line."""


class Unreadable(Exception):
    """A batch's reader lost its place among the series."""


UNREAD = "not read: the series before it in its batch is malformed"


# --- the result ---------------------------------------------------------------------------


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


# --- what to fetch -------------------------------------------------------------------------


class State(NamedTuple):
    count: int
    start: datetime | None
    end: datetime | None
    checksum: str


class Entry(NamedTuple):
    """A series' line of the remote's summary (its pk is the summary's key)."""

    count: int
    start: datetime | None
    end: datetime | None
    checksum: str
    utc_offset: int

    @property
    def empty(self):
        return (
            self.count == 0
            and self.checksum == ZERO_CHECKSUM
            and self.start is None
            and self.end is None
        )


NOT_LISTED = Entry(0, None, None, ZERO_CHECKSUM, 0)


@dataclass
class Job:
    remote_pk: int
    local_pk: int
    mode: str
    remote: Entry  # the summary's entry
    state: State | None

    @property
    def expected(self):
        """How many records the job should bring."""
        if self.mode == APPEND:
            return self.remote.count - self.state.count
        return self.remote.count

    @property
    def request_item(self):
        if self.mode != APPEND:
            return str(self.remote_pk)
        return f"{self.remote_pk}:{(self.state.end - EPOCH) // timedelta(microseconds=1)}"


@dataclass
class FetchedSeries:
    """One series of a fetched batch: what came, or what was wrong."""

    job: Job
    mode: str
    count: int = 0
    checksum: str = ZERO_CHECKSUM
    first: datetime | None = None
    last: datetime | None = None
    error: SeriesError | None = None


@dataclass
class Batch:
    mode: str
    jobs: list
    number: int = 0


@dataclass
class FetchedBatch:
    batch: Batch
    path: Path | None = None  # the good series' records, in COPY's text format
    series: list = field(default_factory=list)  # [FetchedSeries]
    refetch: list = field(default_factory=list)  # appends that did not add up
    gone: list = field(default_factory=list)  # jobs of series the remote no longer has


@dataclass
class RecordsPlan:
    jobs: list = field(default_factory=list)
    empty: array = field(default_factory=lambda: array("q"))  # local pks, see plan_jobs
    unchanged: int = 0  # records of the series left alone
    series: int = 0  # series considered


def plan_jobs(summary, series, *, listed_all=True, prefetched=False):
    """The RecordsPlan of a run: its jobs, its empty series, the records left alone.

    ``summary``: remote pk -> Entry; ``series``: (remote pk, local pk, State or None)
    of the replicated series. A series with no records at the remote nor here (no
    state, or an empty one) is no job: its local pk goes to ``empty``.

    A series the summary does not list: if the summary lists only the changed series
    (not ``listed_all``), it is unchanged, or, with no state here, new (fetched
    whole). Otherwise it was deleted at the remote since the objects were fetched,
    and is left alone; or, ``prefetched`` (a summary fetched before the objects'
    install), it may be new: it is fetched whole.
    """
    plan = RecordsPlan()
    for remote_pk, local_pk, state in series:
        plan.series += 1
        remote = summary.get(remote_pk)
        if remote is None:
            if state is None and (prefetched or not listed_all):
                plan.jobs.append(Job(remote_pk, local_pk, REPLACE, NOT_LISTED, state))
            elif state is not None and prefetched and listed_all:
                plan.jobs.append(Job(remote_pk, local_pk, REPLACE, NOT_LISTED, state))
            elif state is not None:
                plan.unchanged += state.count
            continue
        if state is not None and (state.count, state.checksum, state.end) == (
            remote.count,
            remote.checksum,
            remote.end,
        ):
            plan.unchanged += state.count
            continue
        if remote.empty and (state is None or state.count == 0):
            plan.empty.append(local_pk)
            continue
        if remote.count == 0:
            mode = CLEAR
        elif (
            state is not None
            and state.count > 0
            and remote.count > state.count
            and remote.end > state.end
        ):
            mode = APPEND
        else:
            mode = REPLACE
        plan.jobs.append(Job(remote_pk, local_pk, mode, remote, state))
    return plan


def make_batches(jobs, mode):
    """Jobs of one mode in batches of at most BATCH_SERIES series and about
    BATCH_RECORDS records, each by ascending pk."""
    batch, records = [], 0
    # By ascending pk: the order in which the API answers.
    for job in sorted(jobs, key=lambda job: job.remote_pk):
        if job.mode != mode:
            continue
        if batch and (len(batch) >= BATCH_SERIES or records + job.expected > BATCH_RECORDS):
            yield Batch(mode, batch)
            batch, records = [], 0
        batch.append(job)
        records += job.expected
    if batch:
        yield Batch(mode, batch)


def adds_up(state, fetched, remote):
    """Whether what we hold plus what was appended is what the remote holds."""
    total = add_checksums(state.checksum, fetched.checksum)
    return state.count + fetched.count == remote.count and total == remote.checksum


def new_state(fetched):
    job = fetched.job
    if fetched.mode == APPEND:
        state = job.state
        return State(
            state.count + fetched.count,
            state.start,
            fetched.last or state.end,
            add_checksums(state.checksum, fetched.checksum),
        )
    return State(fetched.count, fetched.first, fetched.last, fetched.checksum)


def check_entry(entry):
    """(pk, Entry) of a summary's entry, checked, its dates parsed; raises ValueError."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    for name in ("pk", "count", "utc_offset"):
        value = entry[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} is not an integer")
    checksum = entry["checksum"]
    if entry["count"] < 0 or not isinstance(checksum, str) or not HEX.fullmatch(checksum):
        raise ValueError("bad count or checksum")
    dates = []
    for name in ("start", "end"):
        value = entry[name]
        if value is not None:
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError(f"{name} has no offset")
        dates.append(value)
    if entry["count"] and dates[1] is None:
        raise ValueError("records but no end")
    return entry["pk"], Entry(entry["count"], dates[0], dates[1], checksum, entry["utc_offset"])


class Summary(Mapping):
    """{remote pk: Entry} of a remote's summary. Series without records (most, on some
    remotes) are kept as a compact KeySet per UTC offset, not a dict entry each, so that
    millions of empty series cost little memory (docs/benchmarks.md)."""

    def __init__(self):
        self.entries = {}  # pk -> Entry, of the series with records
        self.empties = {}  # utc offset -> (its empty Entry, KeySet of pks)

    def add(self, pk, entry):
        if pk in self:
            raise ValueError(f"timeseries {pk} is listed twice")
        if not entry.empty:
            self.entries[pk] = entry
            return
        if entry.utc_offset not in self.empties:
            self.empties[entry.utc_offset] = (entry, KeySet())
        self.empties[entry.utc_offset][1].add(pk)

    def __getitem__(self, pk):
        entry = self.entries.get(pk)
        if entry is not None:
            return entry
        for entry, pks in self.empties.values():
            if pk in pks:
                return entry
        raise KeyError(pk)

    def __iter__(self):
        yield from self.entries
        for _entry, pks in self.empties.values():
            yield from pks

    def __len__(self):
        return len(self.entries) + sum(len(pks) for _e, pks in self.empties.values())


def read_summary(database, path):
    """The Summary of a downloaded summary, its entries checked."""
    summary = Summary()
    name = f"{database}: the records summary"
    for pk, entry in listing_entries(path, name, check_entry):
        try:
            summary.add(pk, entry)
        except ValueError as exc:
            raise PayloadError(f"{name}: {exc}") from exc
    return summary


def records_endpoints(client):
    """The manifest's records URLs, or None if the remote serves no records."""
    urls = client.manifest().get("records")
    if not isinstance(urls, dict):
        return None
    for key in ("summary_url", "batch_url"):
        check_api_path(urls.get(key), client)
    return urls


def summary_params(database, urls, full=False):
    """The summary's query: ``changed_after`` (the records cursor less the overlap) if
    the run is not ``full``, there is a cursor, and the remote knows the parameter."""
    known = urls.get("summary_parameters")
    if full or database.records_cursor is None:
        return {}
    if not isinstance(known, list) or "changed_after" not in known:
        return {}
    since = database.records_cursor - timedelta(seconds=settings.DBSYNC_OVERLAP_SECONDS)
    return {"changed_after": since.isoformat()}


def download_summary(client, urls, params, path):
    client.download(urls["summary_url"], path, params or None)


def fetch_summary(database, client, urls, work, params=None):
    """The remote's summary: {remote pk: Entry}, the entries checked."""
    path = Path(work) / "summary.json"
    download_summary(client, urls, params, path)
    try:
        return read_summary(database, path)
    finally:
        path.unlink()


class SummaryPrefetch:
    """The remote's records summary, downloaded in a thread while the objects install.

    The summary costs the remote a read of a row a series; downloaded alongside the
    objects' install, it adds nothing to a run's time. It is read only when the
    records sync asks for it (``result``), after the install: the two do not hold
    their memory at once. A series created at the remote after it is then not
    listed: it is fetched whole (see ``plan_jobs``).
    """

    def __init__(self, database, client, full=False):
        self.folder = self.path = None
        self.database = database
        self.full = full
        self.params = {}
        pool = ThreadPoolExecutor(1, thread_name_prefix="records-summary")
        self.future = pool.submit(self.fetch, database, client.clone())
        pool.shutdown(wait=False)

    def fetch(self, database, client):
        started = time.monotonic()
        try:
            urls = records_endpoints(client)
            if urls is not None:
                self.params = summary_params(database, urls, self.full)
                work = Path(settings.DBSYNC_WORK_DIR)
                work.mkdir(parents=True, exist_ok=True)
                # Removed by result() or discard(); by its finalizer if neither is called.
                self.folder = tempfile.TemporaryDirectory(
                    prefix=f"summary-{database.pk}-", dir=work
                )
                self.path = Path(self.folder.name) / "summary.json"
                download_summary(client, urls, self.params, self.path)
            return urls
        finally:
            logger.info(
                "%s: records summary downloaded in %.1f s", database, time.monotonic() - started
            )

    @property
    def incremental(self):
        """Whether the summary lists only the series changed since the records cursor."""
        return bool(self.params)

    def result(self):
        """(urls, summary), or (None, None); raises what the download raised."""
        try:
            urls = self.future.result()
            if urls is None:
                return None, None
            return urls, read_summary(self.database, self.path)
        finally:
            self.cleanup()

    def discard(self):
        """Not wanted after all: its file goes once the download ends."""
        self.future.add_done_callback(lambda future: self.cleanup())

    def cleanup(self):
        if self.folder is not None:
            self.folder.cleanup()


# --- reading a batch -------------------------------------------------------------------------


def offset_text(minutes):
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


class BatchReader:
    """Checks a fetched batch and writes its good series in COPY's text format.

    The body is a block a series, in the order asked for::

        # timeseries <pk> utc_offset=<minutes>
        <date>,<value>,<flags>
        ...
        # end count=<n> checksum=<hex> utc_offset=<minutes>

    (or the one line ``# timeseries <pk> not found``). A series with a bad line is
    left out of the output (its lines are taken back) and reported; the batch goes on.
    """

    def __init__(self, batch, source, dest):
        self.batch = batch
        self.source = source
        self.dest = dest
        self.result = FetchedBatch(batch, dest)
        self.failed = set()

    def read(self):
        """The FetchedBatch; raises Truncated if the body ends before it should."""
        jobs = deque(self.batch.jobs)
        with (
            open(self.source, encoding="utf-8", newline="") as fh,
            open(self.dest, "wb") as out,
        ):
            self.out = out
            lines = iter(functools.partial(fh.readline, MAX_LINE_CHARS), "")
            reader = csv.reader(lines, strict=True)
            try:
                while jobs:
                    job = jobs.popleft()
                    row = next(reader, None)
                    if row is None:
                        raise Truncated
                    header = SERIES_HEADER_LINE.fullmatch(row[0]) if len(row) == 1 else None
                    if header is None or int(header["pk"]) != job.remote_pk:
                        self.fail(
                            job,
                            SeriesError(
                                job.remote_pk,
                                f"expected the line '# timeseries {job.remote_pk} ...', found "
                                f"{','.join(row)[:80]!r}",
                                reader.line_num,
                            ),
                        )
                        raise Unreadable
                    if header["utc_offset"] is None:
                        self.result.gone.append(job)
                        continue
                    self.read_series(job, reader, int(header["utc_offset"]))
                if next(reader, None) is not None:
                    job = self.batch.jobs[-1]
                    self.fail(
                        job,
                        SeriesError(job.remote_pk, "data after the last series", reader.line_num),
                    )
            except (Unreadable, csv.Error, UnicodeDecodeError) as exc:
                # The reader lost its place: the rest of the batch is not installed.
                if not isinstance(exc, Unreadable):
                    self.fail(job, SeriesError(job.remote_pk, f"malformed CSV: {exc}"))
                for rest in jobs:
                    self.fail(rest, SeriesError(rest.remote_pk, UNREAD))
        return self.result

    def fail(self, job, error):
        if job.remote_pk not in self.failed:
            self.failed.add(job.remote_pk)
            self.result.series.append(FetchedSeries(job, job.mode, error=error))

    def read_series(self, job, reader, utc_offset):
        """Convert one block; on a bad line, skip to the block's end and report it."""
        start = self.out.tell()
        try:
            fetched = self.convert(job, reader, utc_offset)
        except SeriesError as exc:
            self.take_back(start)
            self.fail(job, exc)
            self.skip_block(reader)
            return
        except Truncated:
            self.take_back(start)
            raise
        if job.mode == APPEND and not adds_up(job.state, fetched, job.remote):
            # Records we hold changed at the remote: fetch it whole, and keep none of this.
            self.take_back(start)
            self.result.refetch.append(job)
            return
        self.result.series.append(fetched)

    def take_back(self, start):
        self.out.seek(start)
        self.out.truncate()

    def skip_block(self, reader):
        try:
            for row in reader:
                if len(row) == 1 and SERIES_TRAILER_LINE.fullmatch(row[0]):
                    return
                if len(row) == 1 and SERIES_HEADER_LINE.fullmatch(row[0]):
                    raise Unreadable
        except (csv.Error, UnicodeDecodeError):
            raise Unreadable from None
        raise Truncated

    def convert(self, job, reader, utc_offset):
        """The lines of one series, up to its ``# end`` line (the hot loop)."""
        remote_pk = job.remote_pk
        zone = timezone(timedelta(minutes=utc_offset))
        suffix = offset_text(utc_offset) + "\t"
        prefix = f"{job.local_pk}\t"
        previous = first = None
        if job.mode == APPEND:
            previous = job.state.end.astimezone(zone).replace(tzinfo=None)
        fromisoformat = datetime.fromisoformat
        write = self.out.write
        lines, count = [], 0
        rows = iter_rows(reader, remote_pk)
        for row in rows:
            if len(row) != 3:
                if len(row) == 1 and row[0].startswith("#"):
                    trailer = SERIES_TRAILER_LINE.fullmatch(row[0])
                    if trailer is None:
                        raise SeriesError(
                            remote_pk, f"bad '# end' line {row[0][:80]!r}", reader.line_num
                        )
                    break
                raise SeriesError(
                    remote_pk,
                    f"expected 3 fields (date,value,flags), found {len(row)}: "
                    f"{','.join(row)[:80]!r}",
                    reader.line_num,
                )
            date, value, flags = row
            try:
                moment = fromisoformat(date)
            except ValueError:
                moment = None
            if (
                moment is None
                or moment.tzinfo is not None
                or date[10:11] != " "
                or (len(date) != 16 and not LONG_DATE.fullmatch(date))
            ):
                raise SeriesError(
                    remote_pk,
                    f"bad date {date[:40]!r} (expected YYYY-MM-DD HH:MM)",
                    reader.line_num,
                )
            if previous is not None and moment <= previous:
                raise SeriesError(
                    remote_pk,
                    f"date {date!r} is not after the previous record's (dates must ascend, "
                    f"each once)",
                    reader.line_num,
                )
            previous = moment
            if first is None:
                first = moment
            if value:
                try:
                    value = repr(float(value))
                except ValueError:
                    raise SeriesError(
                        remote_pk, f"value {value[:40]!r} is not a number", reader.line_num
                    ) from None
            else:
                value = NULL
            if flags and COPY_SPECIALS.search(flags):
                if "\x00" in flags:
                    raise SeriesError(remote_pk, "flags contain a NUL character", reader.line_num)
                flags = COPY_SPECIALS.sub(lambda m: COPY_ESCAPES[m[0]], flags)
            lines.append(f"{prefix}{date}{suffix}{value}\t{flags}\n")
            if len(lines) >= WRITE_LINES:
                write("".join(lines).encode())
                count += len(lines)
                lines = []
        else:
            raise Truncated
        write("".join(lines).encode())
        count += len(lines)
        if int(trailer["count"]) != count or int(trailer["utc_offset"]) != utc_offset:
            raise SeriesError(
                remote_pk,
                f"the '# end' line says {trailer['count']} records at UTC offset "
                f"{trailer['utc_offset']}, but {count} came at {utc_offset}",
                reader.line_num,
            )
        last = previous if count else None
        return FetchedSeries(
            job,
            job.mode,
            count,
            trailer["checksum"],
            first and first.replace(tzinfo=zone),
            last and last.replace(tzinfo=zone),
        )


def iter_rows(reader, remote_pk):
    """The rows of a csv reader, its errors as SeriesError."""
    try:
        yield from reader
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SeriesError(remote_pk, f"malformed CSV: {exc}", reader.line_num) from exc


def ends_with_newline(path):
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


def cut_partial_line(path):
    """Drop a cut-off last line (one without its newline); return the whole lines."""
    lines = end = 0
    with open(path, "r+b") as fh:
        position = 0
        while block := fh.read(COPY_BLOCK):
            lines += block.count(b"\n")
            last = block.rfind(b"\n")
            if last >= 0:
                end = position + last + 1
            position += len(block)
        fh.truncate(end)
    return lines


# --- the sync --------------------------------------------------------------------------


class RecordsSync:
    """One records sync of one remote; see the module's docstring."""

    def __str__(self):
        return str(self.database)

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
        self.skip = skip
        self.dry_run = dry_run
        self.log = log
        self.result = RecordsResult(remote=str(database), dry_run=dry_run)
        self.workers = max(1, int(getattr(settings, "DBSYNC_RECORDS_WORKERS", 4)))
        self.local = threading.local()
        self.vendor = connection.vendor
        self.now = django_timezone.now()
        self.states = []  # (local pk, State) to write
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
            self.batch_url = urls["batch_url"]
            listed = list(summary) if incremental else None
            plan = plan_jobs(
                summary,
                self.replicated_series(listed),
                listed_all=not incremental,
                prefetched=self.prefetch is not None,
            )
            del summary, listed  # the jobs hold what is needed of it
            self.result.unchanged = plan.unchanged + self.unread_unchanged
            self.result.empty = len(plan.empty)
            changed = f"{len(plan.jobs)} of {plan.series + self.unread} time series changed"
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
                self.install_empty(plan.empty)
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

    # --- the remote's side ---------------------------------------------------------------

    def thread_client(self):
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = self.client.clone()
        return client

    def fetch(self, batch):
        """Run in a worker thread: download a batch and read it. Never raises, except
        for a failure of the remote (which ends the run, skip or not)."""
        client = self.thread_client()
        source = self.work / f"batch-{batch.number}.csv"
        dest = self.work / f"batch-{batch.number}.copy"
        params = {"series": ",".join(job.request_item for job in batch.jobs)}
        attempt = 0
        while True:
            client.download(self.batch_url, source, params, is_complete=lambda path: True)
            try:
                if not ends_with_newline(source):
                    raise Truncated
                return BatchReader(batch, source, dest).read()
            except Truncated:
                attempt += 1
                if attempt > client.retries:
                    return self.truncated(batch, source, dest, attempt)
                delay = client.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "%s: a batch of records was cut short; retry %d of %d in %.1f s",
                    self.database,
                    attempt,
                    client.retries,
                    delay,
                )
                time.sleep(delay)
            finally:
                source.unlink(missing_ok=True)

    def truncated(self, batch, source, dest, attempts):
        """The series of a batch whose body stays cut short: what came before the cut
        is installed, the series cut and those after it are reported."""
        lines = cut_partial_line(source)
        fetched = FetchedBatch(batch, dest)
        reader = BatchReader(batch, source, dest)
        try:
            reader.read()
        except Truncated:
            pass
        done = {f.job.remote_pk for f in reader.result.series}
        done |= {job.remote_pk for job in reader.result.refetch + reader.result.gone}
        fetched.series = list(reader.result.series)
        fetched.refetch, fetched.gone = reader.result.refetch, reader.result.gone
        for job in batch.jobs:
            if job.remote_pk not in done:
                message = (
                    f"the response is truncated: it ends at line {lines} of its batch, before "
                    f"this series' '# end' line (fetched {attempts} times)"
                )
                fetched.series.append(
                    FetchedSeries(job, job.mode, error=SeriesError(job.remote_pk, message))
                )
        return fetched

    # --- the local side ----------------------------------------------------------------

    def replicated_series(self, listed=None):
        """(remote pk, local pk, State or None) of the series replicated from the remote,
        by remote pk. ``listed`` (the remote pks of an incremental summary): only those
        and the series with no state are read, if they are few; the records of the
        others are counted as unchanged in SQL (``unread``, ``unread_unchanged``)."""
        self.unread = self.unread_unchanged = 0
        series = Timeseries._base_manager.filter(original_db=self.database)
        read_only = listed is not None and len(listed) <= LISTED_FILTER_MAX
        if read_only:
            read = Q(records_sync_state__isnull=True) | Q(original_id__in=listed)
            unread = series.exclude(read).aggregate(
                n=Count("pk"), held=Sum("records_sync_state__count")
            )
            self.unread, self.unread_unchanged = unread["n"], unread["held"] or 0
            series = series.filter(read)
        rows = series.order_by("original_id").values_list(
            "original_id",
            "pk",
            "records_sync_state__count",
            "records_sync_state__start",
            "records_sync_state__end",
            "records_sync_state__checksum",
        )
        # A few series (an incremental summary): one plain query. A server-side cursor
        # makes PostgreSQL plan for the first rows, which is slower for all of them.
        rows = rows if read_only else rows.iterator(chunk_size=10_000)
        for remote_pk, local_pk, count, start, end, checksum in rows:
            state = None if count is None else State(count, start, end, checksum)
            yield remote_pk, local_pk, state

    def install(self, jobs):
        """Fetch batches in the pool, install each here as it comes; then merge."""
        if self.vendor == "postgresql":
            self.prepare_postgresql()
        self.clear([job for job in jobs if job.mode == CLEAR])
        window = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="records") as pool:

            def submit(batches):
                for batch in batches:
                    self.batches += 1
                    batch.number = self.batches
                    window.append(pool.submit(self.fetch, batch))

            try:
                submit(make_batches(jobs, REPLACE))
                submit(make_batches(jobs, APPEND))
                while window:
                    fetched = window.popleft().result()
                    self.install_batch(fetched)
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
        if self.vendor == "postgresql":
            self.merge_postgresql()
        self.write_states()

    def install_empty(self, local_pks):
        """Series with no records at the remote nor a state (or an empty one) here:
        their records (normally none) deleted, their empty states written, in bulk."""
        if not local_pks:
            return
        removed = 0
        with connection.cursor() as cursor:
            for start in range(0, len(local_pks), DELETE_CHUNK):
                chunk = local_pks[start : start + DELETE_CHUNK].tolist()
                if self.vendor == "postgresql":
                    cursor.execute(
                        f"WITH gone AS (DELETE FROM {TABLE} "
                        f"WHERE timeseries_id = ANY(%s::bigint[]) RETURNING 1) "
                        f"SELECT count(*) FROM gone",
                        [chunk],
                    )
                    removed += cursor.fetchone()[0]
                else:
                    removed += sum(self.delete_series(chunk).values())
        self.result.removed += removed
        self.write_empty_states(local_pks)
        self.log(f"\t- {len(local_pks)} empty series recorded", 3)

    def move_cursor(self):
        """Keep the run's cursor as the records cursor: only after a whole records sync
        (a skipped series must be listed again), and never in a dry run."""
        cursor = self.database.sync_cursor
        if self.dry_run or cursor is None or self.result.counts["skipped"]:
            return
        type(self.database).objects.filter(pk=self.database.pk).update(records_cursor=cursor)
        self.database.records_cursor = cursor

    def clear(self, jobs):
        """Series the remote has no records of: delete ours, without a request."""
        if not jobs:
            return
        removed = self.delete_series([job.local_pk for job in jobs])
        for job in jobs:
            fetched = FetchedSeries(job, CLEAR)
            self.done(fetched, removed.get(job.local_pk, 0))

    def install_batch(self, fetched):
        good = [f for f in fetched.series if f.error is None]
        for failed in fetched.series:
            if failed.error is None:
                continue
            if not self.skip:
                raise RecordsError(f"{self.database}: {failed.error.describe()}")
            self.result.skipped(failed.error)
            logger.warning("%s: skipped %s", self.database, failed.error.describe())
        try:
            if not good:
                return
            with transaction.atomic() if self.skip else nullcontext():
                removed = {}
                if fetched.batch.mode == REPLACE:
                    removed = self.delete_series([f.job.local_pk for f in good])
                self.write_batch(fetched)
            for f in good:
                self.done(f, removed.get(f.job.local_pk, 0))
        finally:
            if fetched.path is not None:
                fetched.path.unlink(missing_ok=True)

    def done(self, fetched, removed):
        job = fetched.job
        self.result.fetched += fetched.count
        self.result.removed += removed
        if fetched.mode != APPEND:
            self.result.created += fetched.count
        self.result.done(job.remote_pk, fetched.mode, fetched.count, removed)
        self.states.append((job.local_pk, new_state(fetched)))
        self.log(f"\t- timeseries {job.remote_pk}: {fetched.mode} {fetched.count} records", 3)

    def delete_series(self, local_pks):
        """Delete the records of these series; return {local pk: records deleted}."""
        removed = {}
        with connection.cursor() as cursor:
            for start in range(0, len(local_pks), 1000):
                chunk = local_pks[start : start + 1000]
                where = f"timeseries_id IN ({', '.join(['%s'] * len(chunk))})"
                if self.vendor == "postgresql":
                    cursor.execute(
                        f"WITH gone AS (DELETE FROM {TABLE} WHERE {where} "
                        f"RETURNING timeseries_id) "
                        f"SELECT timeseries_id, count(*) FROM gone GROUP BY timeseries_id",
                        chunk,
                    )
                    removed.update(cursor.fetchall())
                    continue
                # SQLite has no DELETE in a WITH: count, then delete.
                cursor.execute(
                    f"SELECT timeseries_id, count(*) FROM {TABLE} WHERE {where} "
                    f"GROUP BY timeseries_id",
                    chunk,
                )
                removed.update(cursor.fetchall())
                cursor.execute(f"DELETE FROM {TABLE} WHERE {where}", chunk)
        return removed

    def write_batch(self, fetched):
        if self.vendor != "postgresql":
            with connection.cursor() as cursor:
                self.write_sqlite(cursor, fetched)
            return
        if fetched.batch.mode == REPLACE:
            self.copy_file(TABLE, fetched.path)
            return
        # Appended records are all later than the last one we hold (the reader made
        # sure), so none can clash: straight into the table, without a merge. Should
        # one clash all the same (records added here by other means), the batch goes
        # through the staging table and the merge.
        try:
            with transaction.atomic():
                self.copy_file(TABLE, fetched.path)
        # COPY is psycopg's own: its errors are not wrapped in Django's.
        except (IntegrityError, connection.Database.IntegrityError) as exc:
            logger.warning("%s: appended records clash with local ones (%s); merging", self, exc)
            self.copy_file(STAGE, fetched.path)
            return
        self.result.created += sum(f.count for f in fetched.series if f.error is None)

    def copy_file(self, table, path):
        copy_file(connection, f"COPY {table} ({COLUMNS}) FROM STDIN", path)

    def write_sqlite(self, cursor, fetched):
        sql = (
            f"INSERT INTO {TABLE} ({COLUMNS}) VALUES (%s, %s, %s, %s) "
            f'ON CONFLICT (timeseries_id, "timestamp") DO UPDATE SET '
            f"value = excluded.value, flags = excluded.flags"
        )
        adapt = connection.ops.adapt_datetimefield_value

        def rows(fh):
            for line in fh:
                pk, stamp, value, flags = line[:-1].split("\t")
                if "\\" in flags:
                    flags = re.sub(r"\\(.)", lambda m: COPY_UNESCAPES.get(m[1], m[1]), flags)
                moment = datetime.fromisoformat(stamp)
                number = None if value == NULL else float(value)
                yield (int(pk), adapt(moment), number, flags)

        with open(fetched.path, encoding="utf-8") as fh:
            execute_batches(cursor, sql, rows(fh), SQLITE_BATCH)
        if fetched.batch.mode == APPEND:
            self.result.created += sum(f.count for f in fetched.series if f.error is None)

    def prepare_postgresql(self):
        with connection.cursor() as cursor:
            # Check each COPY's foreign keys at its end, not all at commit: millions of
            # deferred checks would fill the server's memory.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"DROP TABLE IF EXISTS {STAGE}")
            cursor.execute(
                f"CREATE TEMPORARY TABLE {STAGE} (timeseries_id bigint NOT NULL, "
                f'"timestamp" timestamp with time zone NOT NULL, value double precision, '
                f"flags text NOT NULL) ON COMMIT DROP"
            )

    def merge_postgresql(self):
        """The appended records, from the staging table in one statement."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH merged AS (INSERT INTO {TABLE} ({COLUMNS}) SELECT {COLUMNS} FROM {STAGE} "
                f'ORDER BY timeseries_id, "timestamp" '
                f'ON CONFLICT (timeseries_id, "timestamp") DO UPDATE SET '
                f"value = EXCLUDED.value, flags = EXCLUDED.flags WHERE ({TABLE}.value, "
                f"{TABLE}.flags) IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.flags) "
                f"RETURNING (xmax = 0) AS inserted) "
                f"SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) "
                f"FROM merged"
            )
            created, updated = cursor.fetchone()
            cursor.execute(f"DROP TABLE {STAGE}")
        self.result.created += created
        self.result.updated += updated

    def write_states(self):
        if not self.states:
            return
        rows = [(pk, s.count, s.start, s.end, s.checksum, self.now) for pk, s in self.states]
        if self.vendor == "postgresql":
            columns = list(zip(*rows, strict=True))[:5]
            self.upsert_states(
                "SELECT *, %s::timestamptz FROM unnest(%s::bigint[], %s::bigint[], "
                "%s::timestamptz[], %s::timestamptz[], %s::text[])",
                [list(column) for column in columns],
            )
            return
        adapt = connection.ops.adapt_datetimefield_value
        rows = [
            (pk, count, adapt(start), adapt(end), checksum, adapt(now))
            for pk, count, start, end, checksum, now in rows
        ]
        with connection.cursor() as cursor:
            cursor.executemany(
                f"{STATE_INSERT} VALUES (%s, %s, %s, %s, %s, %s) {STATE_UPSERT}", rows
            )

    def write_empty_states(self, local_pks):
        """The state of series with no records (``local_pks``, an array)."""
        if self.vendor == "postgresql":
            self.upsert_states(
                f"SELECT pk, 0, NULL::timestamptz, NULL::timestamptz, '{ZERO_CHECKSUM}', "
                f"%s::timestamptz FROM unnest(%s::bigint[]) AS pk",
                [local_pks],  # an array: made a list a chunk at a time, never whole
            )
            return
        now = connection.ops.adapt_datetimefield_value(self.now)
        with connection.cursor() as cursor:
            for start in range(0, len(local_pks), SQLITE_BATCH):
                cursor.executemany(
                    f"{STATE_INSERT} VALUES (%s, 0, NULL, NULL, '{ZERO_CHECKSUM}', %s) "
                    f"{STATE_UPSERT}",
                    [(pk, now) for pk in local_pks[start : start + SQLITE_BATCH]],
                )

    def upsert_states(self, select, columns):
        """PostgreSQL: states from ``select`` (of ``columns``, sequences given to it as
        arrays), a chunk a statement, rather than a statement a state."""
        with connection.cursor() as cursor:
            for start in range(0, len(columns[0]), STATE_CHUNK):
                chunk = [list(column[start : start + STATE_CHUNK]) for column in columns]
                cursor.execute(f"{STATE_INSERT} {select} {STATE_UPSERT}", [self.now, *chunk])


STATE_INSERT = (
    f"INSERT INTO {RecordsSyncState._meta.db_table} "
    f'(timeseries_id, count, start, "end", checksum, synced_at)'
)
STATE_UPSERT = (
    "ON CONFLICT (timeseries_id) DO UPDATE SET count = excluded.count, start = excluded.start, "
    '"end" = excluded."end", checksum = excluded.checksum, synced_at = excluded.synced_at'
)


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
