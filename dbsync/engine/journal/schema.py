"""The journal's table, its trigger function, and the triggers on the journaled tables.

One row of ``dbsync_journal`` per row a journaled statement changed:

- ``U``/``D``: the row as it was before the update or deletion (its text form,
  ``row::text``, read back exactly by a cast to the table's row type);
- ``I``: the primary key of a row the statement inserted (as text);
- ``R``: of the records table (millions of rows, one series' appended at a time),
  one row per series and statement: the series and the first and last timestamps
  the statement inserted (JSON), instead of a key per record; only when the series
  holds no other record in that span (an append): a merge among records already
  there (``ON CONFLICT DO UPDATE``) notes an ``I`` per record instead, its whole
  row, so that the revert deletes only what the run inserted;
- ``A``/``K``: files (``files``): a file the run stored, or kept aside.

The triggers are statement-level with transition tables (PostgreSQL 15 has no
``RETURNING OLD``), ``ENABLE ALWAYS`` (the install COPYs with
``session_replication_role = replica``: they must fire then too, and
``keychecks.own_triggers`` leaves them out, so the install's fast key checks stay),
and return at once unless ``dbsync.run_id`` is set in the transaction.
``install_triggers`` is idempotent: the migration calls it, and so does every
``migrate`` (``post_migrate``), so a table added later is journaled too.
"""

from django.apps import apps
from django.db import connection

from hcore.bulk import qn

TABLE = "dbsync_journal"
RECORDS = "hcore_record"
# Kept by triggers from another table's changes (the records'): restored after it.
DERIVED = ("hcore_recordssummary",)
EXTRA_TABLES = ("dbsync_database",)  # the remotes' bookkeeping: cursors
# Of these tables, the only columns a run writes (a sync: its cursors; an offboarding:
# the removal): the revert puts back these alone, not an admin's edits since the run
# (address, credentials, schedule, name). ``is_active`` comes back only with the
# removal (an offboarding's).
BOOKKEEPING = {
    "dbsync_database": (
        "last_sync",
        "sync_cursor",
        "records_cursor",
        "files_cursor",
        "capture_cursor",  # change capture (engine.capture): the snapshot cursor ...
        "remote_identity",  # ... and the identity it holds for
        "removed_at",
        "removal",
    ),
}
NEVER = ("hcore_userprofile",)  # personal data: never synced, never journaled
PREFIX = "dbsync_journal_"

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    run_id bigint NOT NULL,
    table_name text NOT NULL,
    op char(1) NOT NULL,
    image text NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_run ON {TABLE} (run_id, table_name, id);
"""

FUNCTION = f"""
CREATE OR REPLACE FUNCTION dbsync_journal_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    run bigint := nullif(current_setting('dbsync.run_id', true), '')::bigint;
BEGIN
    IF run IS NULL THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' AND TG_TABLE_NAME = '{RECORDS}' THEN
        -- A range only where the statement's records are all the series holds in it
        -- (an append); a merge among records already there: each record's row.
        WITH g AS (
            SELECT timeseries_id AS s, min("timestamp") AS f, max("timestamp") AS t,
                count(*) AS n FROM dbsync_new GROUP BY timeseries_id
        ), d AS (
            SELECT g.*, g.n = (SELECT count(*) FROM {RECORDS} r WHERE r.timeseries_id = g.s
                AND r."timestamp" BETWEEN g.f AND g.t) AS dense FROM g
        ), ranges AS (
            INSERT INTO {TABLE} (run_id, table_name, op, image)
            SELECT run, TG_TABLE_NAME, 'R',
                json_build_object('s', d.s, 'from', d.f, 'to', d.t)::text
            FROM d WHERE d.dense
        )
        INSERT INTO {TABLE} (run_id, table_name, op, image)
        SELECT run, TG_TABLE_NAME, 'I', n::text FROM dbsync_new n
        WHERE n.timeseries_id IN (SELECT d.s FROM d WHERE NOT d.dense);
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format(
            'INSERT INTO {TABLE} (run_id, table_name, op, image) '
            'SELECT $1, $2, ''I'', n.%I::text FROM dbsync_new n', TG_ARGV[0])
        USING run, TG_TABLE_NAME;
    ELSE
        INSERT INTO {TABLE} (run_id, table_name, op, image)
        SELECT run, TG_TABLE_NAME, left(TG_OP, 1), o::text FROM dbsync_old o;
    END IF;
    RETURN NULL;
END
$$;
"""


def journaled_tables():
    """{table: primary key column, or None (a composite key: the records)} of every
    table a run writes: the ``hcore`` tables with their many-to-many tables, but the
    personal ones, and the remotes' bookkeeping (``dbsync_database``)."""
    tables = {}
    for model in apps.get_app_config("hcore").get_models(include_auto_created=True):
        meta = model._meta
        if not meta.managed or meta.proxy or meta.db_table in NEVER:
            continue
        pk = meta.pk
        tables[meta.db_table] = None if pk.column is None else pk.column
    for table in EXTRA_TABLES:
        tables[table] = "id"
    return tables


def trigger_sql(table, pk):
    """The three triggers of ``table`` (``pk``: its key column; None: the records)."""
    t = qn(table)
    argument = "" if pk is None else f"'{pk}'"
    return [
        f"CREATE OR REPLACE TRIGGER {PREFIX}insert AFTER INSERT ON {t} "
        f"REFERENCING NEW TABLE AS dbsync_new FOR EACH STATEMENT "
        f"EXECUTE FUNCTION dbsync_journal_row({argument})",
        f"CREATE OR REPLACE TRIGGER {PREFIX}update AFTER UPDATE ON {t} "
        f"REFERENCING OLD TABLE AS dbsync_old FOR EACH STATEMENT "
        f"EXECUTE FUNCTION dbsync_journal_row()",
        f"CREATE OR REPLACE TRIGGER {PREFIX}delete AFTER DELETE ON {t} "
        f"REFERENCING OLD TABLE AS dbsync_old FOR EACH STATEMENT "
        f"EXECUTE FUNCTION dbsync_journal_row()",
        *(f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {PREFIX}{e}" for e in EVENTS),
    ]


EVENTS = ("insert", "update", "delete")


def install_triggers(using=None):
    """Create the journal's table, function and the triggers of every journaled table
    that exists (PostgreSQL; elsewhere nothing). Idempotent."""
    conn = connection if using is None else using
    if conn.vendor != "postgresql":
        return
    existing = set(conn.introspection.table_names())
    with conn.cursor() as cursor:
        cursor.execute(CREATE_TABLE)
        cursor.execute(FUNCTION)
        for table, pk in journaled_tables().items():
            if table in existing:
                for statement in trigger_sql(table, pk):
                    cursor.execute(statement)


def remove_triggers(using=None):
    conn = connection if using is None else using
    if conn.vendor != "postgresql":
        return
    existing = set(conn.introspection.table_names())
    with conn.cursor() as cursor:
        for table in journaled_tables():
            if table in existing:
                for event in EVENTS:
                    cursor.execute(f"DROP TRIGGER IF EXISTS {PREFIX}{event} ON {qn(table)}")
        cursor.execute("DROP FUNCTION IF EXISTS dbsync_journal_row()")
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
