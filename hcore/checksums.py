"""The running checksum of each served table's content, kept by the capture triggers.

A served model's checksum is the sum of its rows' hashes modulo 2**64, each row
encoded as ``protocol.rowhash`` defines it (the same as the checksums endpoint's, so
the manifest's figure is that endpoint's over every key). The capture triggers
(``hcore.capture``) add each statement's change to the table's change counters:

- INSERT: the new rows' hashes; DELETE: less the old rows'; UPDATE: the new rows'
  less the old rows'; TRUNCATE: zero, once every table the statement names is empty;
- a model with many-to-many links (their owner: its content includes its links): each
  row's hash is also stored (``dbsync_capture_owner_hash``), and a statement that
  writes owners or their links changes the checksum by the hashes of the owners it
  touched as they now are, less those stored, which it then stores. This holds however
  a statement combines writes of owners and links (a MERGE, a CTE, an upsert that
  moves a link), and costs one pass over the touched owners. A link table's trigger
  first marks (so locks) the owners' rows, so that concurrent link writes to one owner
  follow one another.

The triggers are the same functions for every table; the SELECTs that compute a
statement's change are per table, written here from the models into
``dbsync_capture_hash``, and run by the triggers (``EXECUTE``). ``refresh`` (after
every migrate) writes them where the models' served fields changed, and computes the
table's checksum anew under a lock that keeps writers out for that one pass. A table
without its SELECTs is counted, not summed: the manifest gives no checksum for it.
Before a migrate that applies anything, every table's SELECTs are dropped
(``forget``): a migration may drop or rename a column they name, and the triggers
must never fail a write; after it, ``refresh`` writes them all again and computes
every checksum anew (one pass over each served table). A migrate that fails leaves the
tables counted, not summed, until the next migrate.

Not kept: a link written, in a transaction still open, to an owner that another
transaction inserted and had not committed (neither sees the other's row); writes made
with the triggers disabled. ``--verify`` therefore hashes the remote's rows as they
are, never this figure.

PostgreSQL only.
"""

import hashlib

from django.db import transaction

from protocol.rowhash import hashed_m2m_fields, quote, served_hash_sql
from protocol.schema import served_models

from .capture import COUNTER_TABLE, HASH_TABLE, MARKER_COLUMN, OWNER_HASH_TABLE

NO_LINKS = "SELECT NULL::bigint WHERE false"


def links_as(field, keys_sql):
    """A ``links`` argument of ``served_hash_sql``: ``field``'s keys from ``keys_sql``."""
    return lambda f: keys_sql if f is field else None


def row_statements(model):
    """The SELECTs of the change of ``model``'s checksum by a statement on its table."""
    new = f"SELECT sum({served_hash_sql(model)}) FROM new_rows t"
    old = f"SELECT sum({served_hash_sql(model)}) FROM old_rows t"
    return {
        "inserted": new,
        "updated": f"SELECT COALESCE(({new}), 0) - COALESCE(({old}), 0)",
        "deleted": f"SELECT -COALESCE(({old}), 0)",
        "truncated": None,
    }


def owner_statement(model, affected_sql, links=None):
    """The SELECT of the change of owner ``model``'s checksum by a statement that
    touched the owners whose pks ``affected_sql`` (one column) gives: their hashes now
    (``links``: as ``served_hash_sql`` takes it) less their stored hashes, which it
    stores (and forgets those of owners gone). One statement: its parts see the same
    snapshot, the stored hashes as they were before it."""
    opts = model._meta
    key = f"t.{quote(opts.pk.column)}"
    table = opts.db_table
    name = "'" + table.replace("'", "''") + "'"
    stored = f"{OWNER_HASH_TABLE} o WHERE o.table_name = {name} AND o.pk IN (SELECT k FROM a)"
    return (
        f"WITH a AS (SELECT DISTINCT x.k FROM ({affected_sql}) AS x(k)), "
        f"cur AS (SELECT {key} AS k, {served_hash_sql(model, links=links)} AS h "
        f"FROM {quote(table)} t WHERE {key} IN (SELECT k FROM a)), "
        f"old AS (SELECT o.hash AS h FROM {stored}), "
        f"up AS (INSERT INTO {OWNER_HASH_TABLE} (table_name, pk, hash) "
        f"SELECT {name}, k, h FROM cur "
        f"ON CONFLICT (table_name, pk) DO UPDATE SET hash = EXCLUDED.hash), "
        f"gone AS (DELETE FROM {stored} AND o.pk NOT IN (SELECT k FROM cur)) "
        f"SELECT COALESCE((SELECT sum(h) FROM cur), 0) - COALESCE((SELECT sum(h) FROM old), 0)"
    )


def owner_row_statements(model):
    """The SELECTs of an owner's own table: the owners its statement wrote."""
    pk = quote(model._meta.pk.column)
    return {
        "inserted": owner_statement(model, f"SELECT n.{pk} FROM new_rows n"),
        "updated": owner_statement(
            model, f"SELECT n.{pk} FROM new_rows n UNION ALL SELECT o.{pk} FROM old_rows o"
        ),
        "deleted": owner_statement(model, f"SELECT o.{pk} FROM old_rows o"),
        "truncated": None,
    }


def link_statements(model, field):
    """The SELECTs of a statement on the through table of many-to-many ``field`` of
    ``model``: the owners of the links it wrote or removed."""
    source = quote(field.m2m_column_name())
    through = quote(field.remote_field.through._meta.db_table)
    return {
        "inserted": owner_statement(model, f"SELECT n.{source} FROM new_rows n"),
        "updated": owner_statement(
            model,
            f"SELECT n.{source} FROM new_rows n UNION ALL SELECT o.{source} FROM old_rows o",
        ),
        "deleted": owner_statement(model, f"SELECT o.{source} FROM old_rows o"),
        # BEFORE TRUNCATE: the links are still there, and will all go.
        "truncated": owner_statement(
            model, f"SELECT x.{source} FROM {through} x", links=links_as(field, NO_LINKS)
        ),
    }


def entries(model):
    """{table: (owner table, statements)} of ``model``'s table and its through tables."""
    table = model._meta.db_table
    fields = hashed_m2m_fields(model)
    result = {table: (table, owner_row_statements(model) if fields else row_statements(model))}
    for field in fields:
        result[field.remote_field.through._meta.db_table] = (table, link_statements(model, field))
    return result


def fingerprint(group):
    text = repr(sorted((t, o, sorted(s.items(), key=str)) for t, (o, s) in group.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def captured_tables(cursor):
    """The tables that have change capture (the marker column), or None where the
    running checksum's support is missing (a database migrated back, or not yet)."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s AND column_name = 'checksum')",
        [COUNTER_TABLE],
    )
    if not cursor.fetchone()[0]:
        return None
    cursor.execute(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND column_name = %s",
        [MARKER_COLUMN],
    )
    return {row[0] for row in cursor.fetchall()}


def refresh(using="default"):
    """Write the checksum SELECTs of every captured served table whose models changed
    since they were written (or that has none), and compute its checksum anew. Returns
    the tables computed anew."""
    from django.db import connections

    conn = connections[using]
    if conn.vendor != "postgresql":
        return []
    with conn.cursor() as cursor:
        captured = captured_tables(cursor)
        if captured is None:
            return []
        cursor.execute(f"SELECT table_name, fingerprint FROM {HASH_TABLE}")
        known = dict(cursor.fetchall())
    done = []
    for model in served_models():
        if model._meta.db_table not in captured:
            continue
        group = entries(model)
        mark = fingerprint(group)
        if all(known.get(table) == mark for table in group):
            continue
        compute(conn, model, group, mark)
        done.append(model._meta.db_table)
    return done


def compute(conn, model, group, mark):
    """``model``'s SELECTs written and its checksum computed, in one transaction that
    keeps writers of its tables out (SHARE ROW EXCLUSIVE: readers go on)."""
    table = model._meta.db_table
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        cursor.execute(
            "LOCK TABLE " + ", ".join(quote(t) for t in group) + " IN SHARE ROW EXCLUSIVE MODE"
        )
        for name, (owner, statements) in group.items():
            cursor.execute(
                f"INSERT INTO {HASH_TABLE} "
                "(table_name, owner, fingerprint, inserted, updated, deleted, truncated) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET "
                "owner = EXCLUDED.owner, fingerprint = EXCLUDED.fingerprint, "
                "inserted = EXCLUDED.inserted, updated = EXCLUDED.updated, "
                "deleted = EXCLUDED.deleted, truncated = EXCLUDED.truncated",
                [
                    name,
                    owner,
                    mark,
                    statements["inserted"],
                    statements["updated"],
                    statements["deleted"],
                    statements["truncated"],
                ],
            )
        # A link table no longer served stops changing its owner's checksum.
        cursor.execute(
            f"DELETE FROM {HASH_TABLE} WHERE owner = %s AND NOT table_name = ANY(%s)",
            [table, list(group)],
        )
        cursor.execute(f"UPDATE {COUNTER_TABLE} SET checksum = 0 WHERE table_name = %s", [table])
        total = f"COALESCE(sum({served_hash_sql(model)}), 0)"
        if hashed_m2m_fields(model):
            cursor.execute(f"DELETE FROM {OWNER_HASH_TABLE} WHERE table_name = %s", [table])
            cursor.execute(
                f"INSERT INTO {OWNER_HASH_TABLE} (table_name, pk, hash) "
                f"SELECT %s, t.{quote(model._meta.pk.column)}, {served_hash_sql(model)} "
                f"FROM {quote(table)} t",
                [table],
            )
            total = "COALESCE(sum(o.hash), 0)"
            source, params = f"{OWNER_HASH_TABLE} o WHERE o.table_name = %s", [table]
        else:
            source, params = f"{quote(table)} t", []
        cursor.execute(
            f"INSERT INTO {COUNTER_TABLE} AS c (table_name, slot, row_count, max_xid, checksum) "
            f"SELECT %s, 0, count(*), 0, {total} FROM {source} "
            "ON CONFLICT (table_name, slot) DO UPDATE SET checksum = EXCLUDED.checksum",
            [table, *params],
        )


def forget(using="default"):
    """Drop every table's checksum SELECTs (before a migrate that applies something:
    the triggers then count, not sum, until ``refresh`` writes them again)."""
    from django.db import connections

    conn = connections[using]
    if conn.vendor != "postgresql":
        return
    with conn.cursor() as cursor:
        if captured_tables(cursor) is None:
            return
        cursor.execute(f"DELETE FROM {HASH_TABLE}")
