"""The batch reader: a batch of series fetched in one request, checked line by line and
written out in COPY's text format, ready for the loader.

A batch's body is a block a series, in the order asked for (``protocol.formats``)::

    # timeseries <pk> utc_offset=<minutes>
    <date>,<value>,<flags>
    ...
    # end count=<n> checksum=<hex> utc_offset=<minutes>

or the one line ``# timeseries <pk> not found``. What the reader promises the loader:

- a series in ``FetchedBatch.series`` without an ``error`` is whole: its dates ascend,
  each once, its count and UTC offset are those of its ``# end`` line, and all its
  records, and only them, are in the COPY file;
- an appended series' records are all later than the last one held here, and what we
  hold plus them adds up to the remote's count and checksum; if not, the series goes to
  ``refetch`` (fetched again, whole) and none of its records are in the file;
- a series with a bad line is in the file with none of its records (its lines are taken
  back) and carries a SeriesError naming the series and the line; the batch goes on.
  Once the reader loses its place among the series, the rest are reported unread.
"""

import csv
import functools
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hcore.bulk import COPY_BLOCK
from protocol.formats import (
    SERIES_HEADER_LINE,
    SERIES_TRAILER_LINE,
    ZERO_CHECKSUM,
    add_checksums,
)

from .plan import APPEND, SERIES_LABEL, Batch, Job

logger = logging.getLogger(__name__)

WRITE_LINES = 10_000
NULL = "\\N"
# What the API writes: minutes, with seconds and microseconds only when present.
LONG_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
# csv refuses a field over its limit (128 KiB), but only once it holds the whole line:
# lines are read at most MAX_LINE_CHARS at a time, so that a remote cannot make the
# reader hold a longer one (a longer line fails as a field over the limit, or as a line
# of too many fields).
MAX_LINE_CHARS = 1 << 20
COPY_SPECIALS = re.compile(r"[\\\t\n\r\x00]")  # NUL: no PostgreSQL text can hold it
COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


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


class Truncated(Exception):
    """A batch's body ends before its last series' ``# end`` line."""


class Unreadable(Exception):
    """A batch's reader lost its place among the series."""


UNREAD = "not read: the series before it in its batch is malformed"


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
class FetchedBatch:
    batch: Batch
    path: Path | None = None  # the good series' records, in COPY's text format
    series: list = field(default_factory=list)  # [FetchedSeries]
    refetch: list = field(default_factory=list)  # appends that did not add up
    gone: list = field(default_factory=list)  # jobs of series the remote no longer has


def adds_up(state, fetched, remote):
    """Whether what we hold plus what was appended is what the remote holds."""
    total = add_checksums(state.checksum, fetched.checksum)
    return state.count + fetched.count == remote.count and total == remote.checksum


# The largest offset PostgreSQL reads in a timestamp (15:59); the real ones end at 14:00.
MAX_UTC_OFFSET = 15 * 60 + 59


def offset_text(minutes):
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}"


class BatchReader:
    """Checks a fetched batch (``source``) and writes its good series in COPY's text
    format (``dest``); see the module's docstring."""

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
        if abs(utc_offset) > MAX_UTC_OFFSET:
            raise SeriesError(
                remote_pk,
                f"utc_offset={utc_offset} minutes is beyond the ±{MAX_UTC_OFFSET} that a "
                f"time zone can be",
                reader.line_num,
            )
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


class BatchFetcher:
    """Downloads a batch and reads it, in a worker thread (``fetch``), a client a thread.

    A body cut short is fetched again (the client's retries, with its backoff); one that
    stays cut short yields what came before the cut, its other series reported."""

    def __init__(self, database, client, batch_url, work):
        self.database = database
        self.client = client
        self.batch_url = batch_url
        self.work = Path(work)
        self.local = threading.local()

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
