"""Undoing a run from its journal, and what a journal holds.

The revert works table by table on the journal's net effect: the rows the run
touched (by key) are deleted, and each is put back as the run's *first* note of it
says it was: a row it inserted stays deleted, a row it updated or deleted comes back
from its before-image. So the order of the run's statements does not matter, nor
how often a row changed. The records' inserts are noted per series and range; a
record whose first note is such a range did not exist before. Tables kept by
triggers from others (the records' summaries) go last, so that what those triggers
did during the revert is overwritten with the images.

All of it runs in the caller's transaction; the files (``files.revert_files``) are
put back after it commits. The caller holds the remote's lock and checks first that
no later run touched the same rows (``conflicts``).
"""

import logging
from collections import defaultdict

from django.db import DatabaseError, connection

from hcore.bulk import qn

from ..errors import SyncError
from .files import FILES, discard_files
from .schema import DERIVED, RECORDS, TABLE, journaled_tables

logger = logging.getLogger(__name__)

RANGES = (
    f"SELECT id, (image::jsonb->>'s')::bigint AS s, (image::jsonb->>'from')::timestamptz AS f, "
    f"(image::jsonb->>'to')::timestamptz AS t FROM {TABLE} "
    f"WHERE run_id = %s AND table_name = '{RECORDS}' AND op = 'R'"
)


class JournalConflict(SyncError):
    """A later run changed some of the same rows: it must be reverted first."""


def has_journal(run_id):
    """Whether the journal holds anything of ``run_id``."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE run_id = %s)", [run_id])
        return cursor.fetchone()[0]


def size(run_id):
    """{"rows": notes, "bytes": their images' bytes, "tables": {table: {op: rows}}}."""
    tables = defaultdict(dict)
    rows = total = 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT table_name, op, count(*), coalesce(sum(pg_column_size(image)), 0) "
            f"FROM {TABLE} WHERE run_id = %s GROUP BY 1, 2 ORDER BY 1, 2",
            [run_id],
        )
        for table, op, n, nbytes in cursor.fetchall():
            tables[table][op] = n
            rows += n
            total += nbytes
    return {"rows": rows, "bytes": int(total), "tables": dict(tables)}


def tables_of(run_id):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT table_name FROM {TABLE} WHERE run_id = %s", [run_id])
        return {row[0] for row in cursor.fetchall()}


def key_sql(table, pk):
    """The SQL of a journal row's key in ``table`` (text): its pk; of a record, its
    series."""
    if table == RECORDS:
        return (
            f"CASE WHEN op = 'R' THEN image::jsonb->>'s' "
            f"ELSE ((image::{qn(table)}).timeseries_id)::text END"
        )
    return f"CASE WHEN op = 'I' THEN image ELSE ((image::{qn(table)}).{qn(pk)})::text END"


def conflicts(run_id, later_run_ids):
    """{later run id: [tables]} of the runs of ``later_run_ids`` that changed rows
    ``run_id`` changed (a record: the same series)."""
    found = defaultdict(list)
    if not later_run_ids:
        return {}
    pks = journaled_tables()
    with connection.cursor() as cursor:
        for table in sorted(tables_of(run_id) - {FILES}):
            if table not in pks:
                continue
            key = key_sql(table, pks[table])
            cursor.execute(
                f"SELECT DISTINCT l.run_id FROM "
                f"(SELECT DISTINCT {key} AS key FROM {TABLE} "
                f" WHERE run_id = %s AND table_name = %s) m JOIN "
                f"(SELECT DISTINCT run_id, {key} AS key FROM {TABLE} "
                f" WHERE run_id = ANY(%s) AND table_name = %s) l USING (key)",
                [run_id, table, list(later_run_ids), table],
            )
            for (later,) in cursor.fetchall():
                found[later].append(table)
    return dict(found)


def revert(run_id):
    """Put every row ``run_id`` changed back as it was before it (in the caller's
    transaction), and drop the run's journal rows; returns {table: (deleted,
    restored)} and the run's file notes [(op, image)], newest first, for
    ``revert_files`` once the transaction has committed."""
    pks = journaled_tables()
    tables = tables_of(run_id)
    unknown = tables - set(pks) - {FILES}
    if unknown:
        raise SyncError(
            f"The journal of run #{run_id} names tables that are not journaled any more: "
            f"{', '.join(sorted(unknown))}; it cannot be reverted."
        )
    known = sorted(t for t in tables if t in pks)
    order = [t for t in known if t not in DERIVED] + [t for t in known if t in DERIVED]
    done = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('dbsync.run_id', '', true)")  # not journaled
        try:
            for table in order:
                if table == RECORDS:
                    done[table] = revert_records(cursor, run_id)
                else:
                    done[table] = revert_table(cursor, run_id, table, pks[table])
        except DatabaseError as exc:
            raise SyncError(
                f"Run #{run_id} could not be reverted ({' '.join(str(exc).split())[:300]}); "
                f"nothing was changed."
            ) from exc
        cursor.execute(
            f"SELECT op, image FROM {TABLE} WHERE run_id = %s AND table_name = %s "
            f"ORDER BY id DESC",
            [run_id, FILES],
        )
        files = cursor.fetchall()
        cursor.execute(f"DELETE FROM {TABLE} WHERE run_id = %s", [run_id])
    logger.info("Reverted run %s: %s", run_id, done)
    return done, files


def column_type(cursor, table, column):
    cursor.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = %s",
        [qn(table), column],
    )
    return cursor.fetchone()[0]


def revert_table(cursor, run_id, table, pk):
    t, p = qn(table), qn(pk)
    kind = column_type(cursor, table, pk)
    # No temporary table: the web role (the admin's action) may not create one.
    firsts = (
        f"SELECT DISTINCT ON (key) key, op, image FROM ("
        f"SELECT id, op, image, {key_sql(table, pk)} AS key FROM {TABLE} "
        f"WHERE run_id = %s AND table_name = %s) e ORDER BY key, id"
    )
    cursor.execute(
        f"DELETE FROM {t} x USING ({firsts}) k WHERE x.{p} = k.key::{kind}", [run_id, table]
    )
    deleted = cursor.rowcount
    cursor.execute(
        f"INSERT INTO {t} SELECT (k.image::{t}).* FROM ({firsts}) k WHERE k.op <> 'I'",
        [run_id, table],
    )
    return deleted, cursor.rowcount


def revert_records(cursor, run_id):
    """The records: those in the ranges the run inserted deleted; those it updated or
    deleted, first seen before any range of the run covered them, put back."""
    t = qn(RECORDS)
    cursor.execute(
        f'DELETE FROM {t} r USING ({RANGES}) g WHERE r.timeseries_id = g.s AND r."timestamp" '
        f"BETWEEN g.f AND g.t",
        [run_id],
    )
    deleted = cursor.rowcount
    images = (
        f'SELECT DISTINCT ON ((e.rec).timeseries_id, (e.rec)."timestamp") e.id, e.rec FROM '
        f"(SELECT id, image::{t} AS rec FROM {TABLE} WHERE run_id = %s AND table_name = %s "
        f"AND op IN ('U', 'D')) e "
        f'ORDER BY (e.rec).timeseries_id, (e.rec)."timestamp", e.id'
    )
    # A record the run inserted (a range of it covers the record, noted earlier) and
    # then changed did not exist before the run: its image is not put back.
    before = (
        f"SELECT k.rec FROM ({images}) k WHERE NOT EXISTS (SELECT 1 FROM ({RANGES}) g "
        f'WHERE g.id < k.id AND (k.rec).timeseries_id = g.s AND (k.rec)."timestamp" '
        f"BETWEEN g.f AND g.t)"
    )
    params = [run_id, RECORDS, run_id]
    cursor.execute(
        f"DELETE FROM {t} r USING ({images}) k WHERE r.timeseries_id = (k.rec).timeseries_id "
        f'AND r."timestamp" = (k.rec)."timestamp"',
        [run_id, RECORDS],
    )
    deleted += cursor.rowcount
    cursor.execute(f"INSERT INTO {t} SELECT (b.rec).* FROM ({before}) b", params)
    return deleted, cursor.rowcount


def discard(run_ids):
    """Forget the journals of ``run_ids`` (retention): rows and kept files."""
    run_ids = [int(r) for r in run_ids]
    if not run_ids:
        return
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE} WHERE run_id = ANY(%s)", [run_ids])
    for run_id in run_ids:
        discard_files(run_id)
