"""Change capture by the database: what marks a row as changed, and in which transaction.

Every replicated table (each served model's own table) carries a column
``dbsync_xid``: the id of the transaction that last wrote the row
(``pg_current_xact_id()``), assigned by PostgreSQL itself, so that
``QuerySet.update()``, raw SQL and a transaction that commits late are all marked,
and no clock is involved:

- an INSERT takes it from the column's DEFAULT (no row-level trigger; a statement's
  rows are counted and hashed once, by statement-level triggers);
- an UPDATE from a row-level BEFORE UPDATE trigger (the only way to set a column);
- a DELETE or a TRUNCATE writes **tombstones** (table, pk, transaction) into
  ``dbsync_tombstone``, from statement-level triggers (the deleted rows come as a
  transition table, one INSERT per statement);
- a many-to-many link written through an auto-created ``through`` table marks its
  owner's row (the link is served as a field of the owner);
- every write also keeps ``dbsync_change_counter``: per table, the number of rows,
  the highest transaction id that wrote it and the **checksum of its served
  content** (the sum of its rows' hashes, ``protocol.rowhash``; ``hcore.checksums``
  gives each table's SQL of it), spread over ``COUNTER_SLOTS`` rows (the writer's
  backend pid picks one), so that concurrent writers do not queue on one row and the
  manifest reads O(tables) rows, not the tables.

A table that is not served but whose writes a replica's tallies must see
(``dbsync.engine.tally``: the records sync states) gets the counters only
(``install_counters``): no marker, no tombstones.

All the triggers are ``ENABLE ALWAYS``: they fire with ``session_replication_role =
replica`` too, which the sync's bulk path sets, so rows that a sync installs are
captured and an aggregate can serve as a remote of another. Their names start with
``dbsync_capture_``; ``dbsync.engine.keychecks`` knows them as the product's own.

Tombstones older than the horizon (``dbsync_capture_state.horizon``) may be pruned
(``prune_tombstones``; ``hcore.tombstones`` does it on a schedule, keeping
``DBSYNC_TOMBSTONE_RETENTION_DAYS``); the manifest publishes the horizon, and a client
whose cursor is older runs in full.

PostgreSQL only: on SQLite nothing is installed, and a SQLite instance serves the
timestamp fallback (``last_modified`` with an overlap window).
"""

from django.db import transaction

MARKER_COLUMN = "dbsync_xid"
TOMBSTONE_TABLE = "dbsync_tombstone"
COUNTER_TABLE = "dbsync_change_counter"
STATE_TABLE = "dbsync_capture_state"
HASH_TABLE = "dbsync_capture_hash"
OWNER_HASH_TABLE = "dbsync_capture_owner_hash"
CLOCK_TABLE = "dbsync_capture_clock"
TRIGGER_PREFIX = "dbsync_capture_"
COUNTER_SLOTS = 16
BACKFILL_BATCH = 20_000
PRUNE_BATCH = 10_000
# The tables with the counters alone (install_counters; migration 0006): not served, so
# left out of the manifest (api.changes).
COUNTED_ONLY_TABLES = ("hcore_recordssyncstate",)

# The current transaction's id as a bigint (xid8 has no cast to bigint; it fits one).
CURRENT_XID = "pg_current_xact_id()::text::bigint"
# The oldest transaction still running as this statement's snapshot was taken: every
# transaction below it has committed or aborted, so its writes are all visible.
SNAPSHOT_XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

# The snapshot's xmin, less the transactions it lists as running that are known to be
# another database's (transaction ids are the cluster's: one left open in another
# database would hold every client's cursor back). A transaction that cannot be placed
# (a prepared one, a backend whose entry is hidden) counts, to be safe.
CURSOR_SQL = """
(WITH snap AS (SELECT pg_current_snapshot() AS s)
 SELECT LEAST(
     (SELECT pg_snapshot_xmax(s)::text::bigint FROM snap),
     (SELECT min(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x
      WHERE NOT EXISTS (
          SELECT 1 FROM pg_stat_activity a
          WHERE a.backend_xid = xid(x)
            AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())))))
"""

SUPPORT_SQL = f"""
CREATE TABLE IF NOT EXISTS {TOMBSTONE_TABLE} (
    table_name text NOT NULL,
    pk bigint NOT NULL,
    xid bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS {TOMBSTONE_TABLE}_xid ON {TOMBSTONE_TABLE} (table_name, xid);
CREATE TABLE IF NOT EXISTS {COUNTER_TABLE} (
    table_name text NOT NULL,
    slot integer NOT NULL,
    row_count bigint NOT NULL DEFAULT 0,
    max_xid bigint NOT NULL DEFAULT 0,
    max_deleted_xid bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, slot)
);
-- The served content's checksum: the sum of the rows' hashes (reduced modulo 2**64
-- when read), kept where a table has its SQL in the hash table below.
ALTER TABLE {COUNTER_TABLE} ADD COLUMN IF NOT EXISTS checksum numeric NOT NULL DEFAULT 0;
-- Per table, the SELECTs that give the change of its checksum by a statement, from the
-- statement's transition tables (hcore.checksums writes them, with their fingerprint):
-- a served table's rows, or, for a many-to-many table, its owners' (their links are
-- part of their content). A table without its row counts only.
CREATE TABLE IF NOT EXISTS {HASH_TABLE} (
    table_name text PRIMARY KEY,
    owner text NOT NULL,
    fingerprint text NOT NULL,
    inserted text NOT NULL,
    updated text NOT NULL,
    deleted text NOT NULL,
    truncated text
);
-- The hash of each row of a table whose content includes many-to-many links (an
-- owner's): its checksum changes by the owners' hashes now less those stored, however
-- a statement combines writes of the owners and of their links.
CREATE TABLE IF NOT EXISTS {OWNER_HASH_TABLE} (
    table_name text NOT NULL,
    pk bigint NOT NULL,
    hash bigint NOT NULL,
    PRIMARY KEY (table_name, pk)
);
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    id integer PRIMARY KEY CHECK (id = 1),
    horizon bigint NOT NULL
);
INSERT INTO {STATE_TABLE} (id, horizon) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
-- Which transaction ids were behind us when: what turns a retention in days into a
-- horizon (hcore.tombstones). One row a pruning, a handful kept.
CREATE TABLE IF NOT EXISTS {CLOCK_TABLE} (
    xid bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);

-- deleted: whether rows went (then max_deleted_xid moves too: a client asks for
-- tombstones only of the tables where it did); content: the checksum's change.
CREATE OR REPLACE FUNCTION dbsync_capture_count(
    tbl text, delta bigint, deleted boolean, content numeric)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO {COUNTER_TABLE} AS c
        (table_name, slot, row_count, max_xid, max_deleted_xid, checksum)
    VALUES (tbl, pg_backend_pid() % {COUNTER_SLOTS}, delta, {CURRENT_XID},
            CASE WHEN deleted THEN {CURRENT_XID} ELSE 0 END, content)
    ON CONFLICT (table_name, slot) DO UPDATE
    SET row_count = c.row_count + EXCLUDED.row_count,
        max_xid = GREATEST(c.max_xid, EXCLUDED.max_xid),
        max_deleted_xid = GREATEST(c.max_deleted_xid, EXCLUDED.max_deleted_xid),
        checksum = c.checksum + EXCLUDED.checksum;
$$;

CREATE OR REPLACE FUNCTION dbsync_capture_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.{MARKER_COLUMN} := {CURRENT_XID};
    RETURN NEW;
END $$;

-- The checksum's SELECTs run here, in the trigger's own function: a statement's
-- transition tables are visible to it only (not to a function it calls).
CREATE OR REPLACE FUNCTION dbsync_capture_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint; q text; s numeric;
BEGIN
    SELECT count(*) INTO n FROM new_rows;
    IF n > 0 THEN
        SELECT inserted INTO q FROM {HASH_TABLE} WHERE table_name = TG_TABLE_NAME;
        IF q IS NOT NULL THEN EXECUTE q INTO s; END IF;
        PERFORM dbsync_capture_count(TG_TABLE_NAME, n, false, COALESCE(s, 0));
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION dbsync_capture_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE q text; s numeric;
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        SELECT updated INTO q FROM {HASH_TABLE} WHERE table_name = TG_TABLE_NAME;
        IF q IS NOT NULL THEN EXECUTE q INTO s; END IF;
        PERFORM dbsync_capture_count(TG_TABLE_NAME, 0, false, COALESCE(s, 0));
    END IF;
    RETURN NULL;
END $$;

-- TG_ARGV[0]: the table's primary key column.
CREATE OR REPLACE FUNCTION dbsync_capture_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint; q text; s numeric;
BEGIN
    EXECUTE format(
        'INSERT INTO {TOMBSTONE_TABLE} (table_name, pk, xid) SELECT %L, %I, $1 FROM old_rows',
        TG_TABLE_NAME, TG_ARGV[0]) USING {CURRENT_XID};
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        SELECT deleted INTO q FROM {HASH_TABLE} WHERE table_name = TG_TABLE_NAME;
        IF q IS NOT NULL THEN EXECUTE q INTO s; END IF;
        PERFORM dbsync_capture_count(TG_TABLE_NAME, -n, true, COALESCE(s, 0));
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE takes an ACCESS EXCLUSIVE lock: no other writer counts meanwhile.
CREATE OR REPLACE FUNCTION dbsync_capture_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO {TOMBSTONE_TABLE} (table_name, pk, xid) SELECT %L, %I, $1 FROM %I',
        TG_TABLE_NAME, TG_ARGV[0], TG_TABLE_NAME) USING {CURRENT_XID};
    UPDATE {COUNTER_TABLE} SET row_count = 0 WHERE table_name = TG_TABLE_NAME;
    PERFORM dbsync_capture_count(TG_TABLE_NAME, 0, true, 0);
    RETURN NULL;
END $$;

-- After a TRUNCATE (of every table it names, a many-to-many one's BEFORE trigger
-- included): the table is empty, its checksum zero.
CREATE OR REPLACE FUNCTION dbsync_capture_emptied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {COUNTER_TABLE} SET checksum = 0 WHERE table_name = TG_TABLE_NAME;
    DELETE FROM {OWNER_HASH_TABLE} WHERE table_name = TG_TABLE_NAME;
    RETURN NULL;
END $$;

-- A link written through an auto-created through table marks its owner's row, and
-- changes its owner's checksum (its links are part of its content).
-- TG_ARGV: the owner's table, its pk column, the through table's column to the owner.
-- The owners are marked first: that locks their rows, so a concurrent link write of
-- the same owner waits for this transaction's end, and its checksum's change is then
-- computed from a snapshot that has this one's links (READ COMMITTED: a statement's
-- own snapshot), not from the links before both.
CREATE OR REPLACE FUNCTION dbsync_capture_link() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE q text; s numeric;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('UPDATE %I SET {MARKER_COLUMN} = $1 WHERE %I IN (SELECT %I FROM %I)',
            TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], TG_TABLE_NAME) USING {CURRENT_XID};
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('UPDATE %I SET {MARKER_COLUMN} = $1 WHERE %I IN (SELECT %I FROM old_rows)',
            TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]) USING {CURRENT_XID};
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('UPDATE %I SET {MARKER_COLUMN} = $1 WHERE %I IN (SELECT %I FROM new_rows)',
            TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]) USING {CURRENT_XID};
    ELSE
        EXECUTE format('UPDATE %I SET {MARKER_COLUMN} = $1 WHERE %I IN '
                       '(SELECT %I FROM new_rows UNION SELECT %I FROM old_rows)',
            TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], TG_ARGV[2]) USING {CURRENT_XID};
    END IF;
    SELECT CASE TG_OP WHEN 'INSERT' THEN inserted WHEN 'UPDATE' THEN updated
                      WHEN 'DELETE' THEN deleted ELSE truncated END
    INTO q FROM {HASH_TABLE} WHERE table_name = TG_TABLE_NAME;
    IF q IS NOT NULL THEN
        EXECUTE q INTO s;
        IF COALESCE(s, 0) <> 0 THEN
            PERFORM dbsync_capture_count(TG_ARGV[0], 0, false, s);
        END IF;
    END IF;
    RETURN NULL;
END $$;
"""


# The counters only (install_counters): a deletion or a TRUNCATE moves max_deleted_xid
# and writes no tombstone.
COUNTED_SQL = f"""
CREATE OR REPLACE FUNCTION dbsync_capture_counted_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    SELECT count(*) INTO n FROM old_rows;
    IF n > 0 THEN PERFORM dbsync_capture_count(TG_TABLE_NAME, -n, true, 0); END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION dbsync_capture_counted_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {COUNTER_TABLE} SET row_count = 0 WHERE table_name = TG_TABLE_NAME;
    PERFORM dbsync_capture_count(TG_TABLE_NAME, 0, true, 0);
    RETURN NULL;
END $$;
"""


def trigger_names(table):
    kinds = ("mark", "ins", "upd", "del", "trunc", "emptied")
    return [f"{TRIGGER_PREFIX}{what}_{table}"[:63] for what in kinds]


def add_marker_column(cursor, table):
    """The column, nullable and without a stored default value: no table rewrite; the
    DEFAULT set after it applies to new rows only (a catalog change)."""
    cursor.execute(f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS {MARKER_COLUMN} bigint')
    cursor.execute(f'ALTER TABLE "{table}" ALTER COLUMN {MARKER_COLUMN} SET DEFAULT {CURRENT_XID}')


def backfill_batches(connection, table, pk):
    """Mark the rows that predate capture with 0 ("before any cursor"), a batch of
    BACKFILL_BATCH keys per transaction, so no lock is held long. Before the triggers
    exist (the UPDATE would mark them as changed now)."""
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT min("{pk}"), max("{pk}") FROM "{table}"')
        low, high = cursor.fetchone()
    if low is None:
        return
    start = low
    while start <= high:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(
                f'UPDATE "{table}" SET {MARKER_COLUMN} = 0 WHERE "{pk}" >= %s AND "{pk}" < %s '
                f"AND {MARKER_COLUMN} IS NULL",
                [start, start + BACKFILL_BATCH],
            )
        start += BACKFILL_BATCH


def create_triggers(cursor, table, pk):
    mark, ins, upd, dele, trunc, emptied = names = trigger_names(table)
    cursor.execute(
        f"""
        CREATE TRIGGER {mark} BEFORE UPDATE ON "{table}"
            FOR EACH ROW EXECUTE FUNCTION dbsync_capture_mark();
        CREATE TRIGGER {ins} AFTER INSERT ON "{table}" REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_inserted();
        CREATE TRIGGER {upd} AFTER UPDATE ON "{table}"
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_updated();
        CREATE TRIGGER {dele} AFTER DELETE ON "{table}" REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_deleted('{pk}');
        CREATE TRIGGER {trunc} BEFORE TRUNCATE ON "{table}"
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_truncated('{pk}');
        CREATE TRIGGER {emptied} AFTER TRUNCATE ON "{table}"
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_emptied();
        """
    )
    for name in names:
        cursor.execute(f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER {name}')


def drop_triggers(cursor, table):
    for name in trigger_names(table):
        cursor.execute(f'DROP TRIGGER IF EXISTS {name} ON "{table}"')


def link_trigger_names(through):
    return [f"{TRIGGER_PREFIX}link{what}_{through}"[:63] for what in ("i", "u", "d", "t")]


def drop_link_triggers(cursor, through):
    for name in link_trigger_names(through):
        cursor.execute(f'DROP TRIGGER IF EXISTS {name} ON "{through}"')


def create_link_triggers(cursor, through, owner, owner_pk, owner_column):
    args = f"'{owner}', '{owner_pk}', '{owner_column}'"
    names = link_trigger_names(through)
    cursor.execute(
        f"""
        CREATE TRIGGER {names[0]} AFTER INSERT ON "{through}" REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_link({args});
        CREATE TRIGGER {names[1]} AFTER UPDATE ON "{through}"
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_link({args});
        CREATE TRIGGER {names[2]} AFTER DELETE ON "{through}" REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_link({args});
        CREATE TRIGGER {names[3]} BEFORE TRUNCATE ON "{through}"
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_link({args});
        """
    )
    for name in names:
        cursor.execute(f'ALTER TABLE "{through}" ENABLE ALWAYS TRIGGER {name}')


def create_counter_triggers(cursor, table):
    _mark, ins, upd, dele, trunc, _emptied = trigger_names(table)
    cursor.execute(
        f"""
        CREATE TRIGGER {ins} AFTER INSERT ON "{table}" REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_inserted();
        CREATE TRIGGER {upd} AFTER UPDATE ON "{table}" REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_updated();
        CREATE TRIGGER {dele} AFTER DELETE ON "{table}" REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_counted_deleted();
        CREATE TRIGGER {trunc} BEFORE TRUNCATE ON "{table}"
            FOR EACH STATEMENT EXECUTE FUNCTION dbsync_capture_counted_truncated();
        """
    )
    for name in (ins, upd, dele, trunc):
        cursor.execute(f'ALTER TABLE "{table}" ENABLE ALWAYS TRIGGER {name}')


def start_counter(cursor, table):
    """The table's count as it is (one pass, once), in slot 0."""
    cursor.execute(
        f"INSERT INTO {COUNTER_TABLE} (table_name, slot, row_count, max_xid) "
        f'SELECT %s, 0, count(*), 0 FROM "{table}" '
        f"ON CONFLICT (table_name, slot) DO UPDATE SET row_count = EXCLUDED.row_count",
        [table],
    )


def install(connection, tables, links):
    """Capture on ``tables`` ([(table, pk column)]) and ``links`` ([(through table, owner
    table, owner pk column, through column to the owner)]); PostgreSQL only. Run
    outside a transaction (a non-atomic migration): the backfill commits batch by batch."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(SUPPORT_SQL)
        for table, _pk in tables:
            add_marker_column(cursor, table)
    for table, pk in tables:
        backfill_batches(connection, table, pk)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE " + ", ".join(f'"{t}"' for t, _pk in tables))
        for table, pk in tables:
            create_triggers(cursor, table, pk)
            start_counter(cursor, table)
        for through, owner, owner_pk, column in links:
            create_link_triggers(cursor, through, owner, owner_pk, column)


def upgrade(connection, tables, links):
    """The triggers of a database captured before the running checksum: its support
    (SUPPORT_SQL) and every trigger made again, in one transaction; the checksums
    themselves are started by ``hcore.checksums.refresh`` after migrate."""
    if connection.vendor != "postgresql":
        return
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION IF EXISTS dbsync_capture_count(text, bigint, boolean)")
        cursor.execute(SUPPORT_SQL)
        cursor.execute("LOCK TABLE " + ", ".join(f'"{t}"' for t, _pk in tables))
        for table, pk in tables:
            drop_triggers(cursor, table)
            create_triggers(cursor, table, pk)
        for through, owner, owner_pk, column in links:
            drop_link_triggers(cursor, through)
            create_link_triggers(cursor, through, owner, owner_pk, column)


def install_counters(connection, tables):
    """The change counters only, on ``tables`` (not served: no marker, no tombstones),
    so that every write to them moves their highest writer; PostgreSQL only."""
    if connection.vendor != "postgresql":
        return
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(SUPPORT_SQL)
        cursor.execute(COUNTED_SQL)
        cursor.execute("LOCK TABLE " + ", ".join(f'"{t}"' for t in tables))
        for table in tables:
            create_counter_triggers(cursor, table)
            start_counter(cursor, table)


def prune_tombstones(connection, before, batch=PRUNE_BATCH):
    """Publish ``before`` as the horizon (a client whose cursor is older must run in
    full), then drop the tombstones of transactions below it, ``batch`` rows a
    transaction, rows another transaction holds skipped (the next pruning takes them).
    The horizon is committed first: a client that read the old one finds every
    tombstone it covered. Run outside a transaction. Returns the tombstones dropped."""
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {STATE_TABLE} SET horizon = GREATEST(horizon, %s) WHERE id = 1 "
            f"RETURNING horizon",
            [before],
        )
        horizon = cursor.fetchone()[0]
        # Every table that ever had a deletion has change counters: O(tables) rows,
        # where a DISTINCT over the tombstones would read them all.
        cursor.execute(f"SELECT DISTINCT table_name FROM {COUNTER_TABLE} ORDER BY 1")
        tables = [row[0] for row in cursor.fetchall()]
    dropped = 0
    for table in tables:
        while True:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {TOMBSTONE_TABLE} WHERE ctid = ANY(ARRAY("
                    f"SELECT ctid FROM {TOMBSTONE_TABLE} WHERE table_name = %s AND xid < %s "
                    f"LIMIT %s FOR UPDATE SKIP LOCKED))",
                    [table, horizon, batch],
                )
                count = cursor.rowcount
            dropped += count
            if count < batch:
                break
    return dropped
