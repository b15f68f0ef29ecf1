"""The loader: a fetched batch into the records table, and the series' sync states.

It runs in the records sync's one transaction (``RecordsSync.run``), on batches
already fetched to disk; nothing it writes is seen before the whole run's records are
in. Its invariants:

- a replaced series is one DELETE of its records and a COPY of what came, straight into
  the records table;
- appended records are all later than the last one held (the batch reader made sure),
  so none can clash: a COPY straight into the table too. A batch that clashes all the
  same (records added here by other means) goes through the staging table, merged at
  the end by one ``INSERT ... ON CONFLICT DO UPDATE``;
- a series' new sync state is written only after its records, at the end of the run
  (``write_states``): the state says what the table holds;
- a malformed series (``SeriesError``) raises RecordsError unless ``skip``; with
  ``skip``, it keeps the records it had, its state is not touched, and it is reported.
  Each batch is then a savepoint of its own.

On SQLite there is no COPY: rows go in by batched ``INSERT ... ON CONFLICT``.
"""

import logging
import re
from contextlib import nullcontext
from datetime import datetime

from django.db import IntegrityError, connection, transaction

from hcore.bulk import copy_file, execute_batches
from hcore.models import Record, RecordsSyncState
from protocol.formats import ZERO_CHECKSUM, add_checksums

from ..errors import PayloadError
from ..progress import RECORDS, quiet, steps
from ..result import RECORDS_LABEL
from .batches import NULL, FetchedSeries
from .plan import APPEND, CLEAR, REPLACE, SERIES_LABEL, State

logger = logging.getLogger(__name__)

SQLITE_BATCH = 5_000
STATE_CHUNK = 50_000  # states written a statement (PostgreSQL)
DELETE_CHUNK = 10_000  # series whose records one DELETE removes
TABLE = Record._meta.db_table
STAGE = "dbsync_record_stage"
COLUMNS = 'timeseries_id, "timestamp", value, flags'
COPY_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


class RecordsError(PayloadError):
    """The records of a series could not be installed, and the run was told to halt."""


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


STATE_INSERT = (
    f"INSERT INTO {RecordsSyncState._meta.db_table} "
    f'(timeseries_id, count, start, "end", checksum, synced_at)'
)
STATE_UPSERT = (
    "ON CONFLICT (timeseries_id) DO UPDATE SET count = excluded.count, start = excluded.start, "
    '"end" = excluded."end", checksum = excluded.checksum, synced_at = excluded.synced_at'
)


class Loader:
    """Installs the batches of one records sync of ``database`` into ``result``."""

    def __init__(self, database, result, *, now, skip=False, log=quiet, guard=None):
        self.database = database
        self.guard = guard  # the records guard (records.guard), told what each series loses
        self.result = result
        self.now = now
        self.skip = skip
        self.log = log
        self.progress = steps(log)
        self.vendor = connection.vendor
        self.states = []  # (local pk, State) to write

    def begin(self):
        """Before the first batch."""
        if self.vendor == "postgresql":
            self.prepare_postgresql()

    def finish(self):
        """After the last batch: the appends that clashed merged, the states written."""
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
        self.count("deleted", removed)
        self.write_empty_states(local_pks)
        self.log(f"\t- {len(local_pks)} empty series recorded", 3)

    def clear(self, jobs):
        """Series the remote has no records of: delete ours, without a request."""
        if not jobs:
            return
        removed = self.delete_series([job.local_pk for job in jobs])
        for job in jobs:
            fetched = FetchedSeries(job, CLEAR)
            self.done(fetched, removed.get(job.local_pk, 0))

    def refuse_malformed(self, fetched):
        """Unless ``skip``: RecordsError for the first malformed series of a batch
        (checked as it is fetched, before the transaction: the run stops at once)."""
        if self.skip:
            return
        for failed in fetched.series:
            if failed.error is not None:
                raise RecordsError(f"{self.database}: {failed.error.describe()}")

    def install_batch(self, fetched):
        good = [f for f in fetched.series if f.error is None]
        self.refuse_malformed(fetched)
        for failed in fetched.series:
            if failed.error is None:
                continue
            self.skipped(failed.error)
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

    def count(self, key, n):
        self.result.add(RECORDS_LABEL, key, n)

    def done(self, fetched, removed):
        """A series loaded: counted, what was done to it noted, its new state kept."""
        job = fetched.job
        self.count("fetched", fetched.count)
        self.count("deleted", removed)
        if fetched.mode != APPEND:
            self.count("created", fetched.count)
        records = fetched.count
        self.result.series[job.remote_pk] = {
            "appended": records if fetched.mode == APPEND else 0,
            "replaced": records if fetched.mode != APPEND else 0,
            "removed": removed,
            "skipped": False,
        }
        if self.guard is not None and fetched.mode != APPEND:
            self.guard.check(job, removed, fetched.count)
        self.states.append((job.local_pk, new_state(fetched)))
        self.log(f"\t- timeseries {job.remote_pk}: {fetched.mode} {fetched.count} records", 3)
        self.progress.advance(RECORDS, records=fetched.count)

    def skipped(self, error):
        """A malformed series left as it was (``skip``): reported, counted once."""
        before = self.result.series.get(error.remote_pk)
        if before is None or not before["skipped"]:
            self.count("skipped", 1)
        self.result.series[error.remote_pk] = {
            "appended": 0,
            "replaced": 0,
            "removed": 0,
            "skipped": True,
        }
        self.result.problem(
            SERIES_LABEL,
            error.remote_pk,
            f"{error.describe(short=True)}; its local records were left as they were",
        )

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
            logger.warning(
                "%s: appended records clash with local ones (%s); merging", self.database, exc
            )
            self.copy_file(STAGE, fetched.path)
            return
        self.count("created", sum(f.count for f in fetched.series if f.error is None))

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
            self.count("created", sum(f.count for f in fetched.series if f.error is None))

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
        self.count("created", created)
        self.count("updated", updated)

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
