"""What to fetch: the remote's summary compared with what the last sync installed here
(``hcore.RecordsSyncState``), series by series.

- the same (count, checksum and last record): nothing, not even a request;
- more records, ending later: only the records after our last one ("append");
- none at the remote: ours deleted without a request ("clear");
- anything else (a rewrite of old records, a deletion, no state yet): the series
  whole ("replace");
- no records at the remote nor here: no job, but one of the plan's ``empty`` series,
  recorded in bulk.
"""

from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import connection
from django.db.models import Q

from hcore.models import RecordsSyncState, Timeseries
from protocol.formats import EPOCH

from .. import tally
from .summary import NOT_LISTED, Entry

SERIES_LABEL = "hcore.timeseries"
APPEND, REPLACE, CLEAR = "append", "replace", "clear"
# A batch: few enough series for a short URL, few enough records for a short request.
BATCH_SERIES = 100
BATCH_RECORDS = 250_000
# An incremental summary listing at most this many series: only those (and the series
# with no state) are read from the local tables; more, and every series is read.
LISTED_FILTER_MAX = 10_000


class State(NamedTuple):
    count: int
    start: datetime | None
    end: datetime | None
    checksum: str


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
class Batch:
    mode: str
    jobs: list
    number: int = 0


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


SERIES_TALLY = "time series"


def series_tally(database):
    """The tally (``engine.tally``) of the series replicated from ``database``: how
    many, how many have no sync state, and the records their states hold (one join)."""
    qn = connection.ops.quote_name
    series, states = Timeseries._meta, RecordsSyncState._meta
    state_of = qn(states.get_field("timeseries").column)
    sql = (
        f"SELECT count(*), sum(CASE WHEN s.{state_of} IS NULL THEN 1 ELSE 0 END), "
        f"coalesce(sum(s.{qn('count')}), 0) "
        f"FROM {qn(series.db_table)} t LEFT JOIN {qn(states.db_table)} s "
        f"ON s.{state_of} = t.{qn(series.pk.column)} "
        f"WHERE t.{qn(series.get_field('original_db').column)} = %s"
    )
    return tally.Tally(
        SERIES_TALLY, [series.db_table, states.db_table], sql, [database.pk], width=3
    )


class ReplicatedSeries:
    """(remote pk, local pk, State or None) of the series replicated from ``database``,
    by remote pk, when iterated. ``listed`` (the remote pks of an incremental summary):
    only those and the series with no state are read, if they are few; the others
    (``unread`` series holding ``unread_unchanged`` records, known once iterated) are
    told by the series' tally, which an unchanged run reads as it is."""

    def __init__(self, database, listed=None, log=None):
        self.total = self.held = 0
        self.read = self.read_held = 0
        series = Timeseries._base_manager.filter(original_db=database)
        self.read_only = listed is not None and len(listed) <= LISTED_FILTER_MAX
        if self.read_only:
            figures = tally.figures(database, [series_tally(database)], log)
            self.total, stateless, self.held = figures[SERIES_TALLY]
            read = Q(original_id__in=listed)
            if stateless:
                read |= Q(records_sync_state__isnull=True)
            series = series.filter(read)
        self.series = series

    @property
    def unread(self):
        return self.total - self.read if self.read_only else 0

    @property
    def unread_unchanged(self):
        return self.held - self.read_held if self.read_only else 0

    def __iter__(self):
        rows = self.series.order_by("original_id").values_list(
            "original_id",
            "pk",
            "records_sync_state__count",
            "records_sync_state__start",
            "records_sync_state__end",
            "records_sync_state__checksum",
        )
        # A few series (an incremental summary): one plain query. A server-side cursor
        # makes PostgreSQL plan for the first rows, which is slower for all of them.
        rows = rows if self.read_only else rows.iterator(chunk_size=10_000)
        for remote_pk, local_pk, count, start, end, checksum in rows:
            state = None if count is None else State(count, start, end, checksum)
            self.read += 1
            self.read_held += count or 0
            yield remote_pk, local_pk, state
