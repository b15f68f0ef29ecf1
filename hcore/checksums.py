"""The running checksum of each served table's content, kept by the capture triggers.

A served model's checksum is the sum of its rows' hashes modulo 2**64, each row
encoded as ``protocol.rowhash`` defines it (the same as the checksums endpoint's, so
the manifest's figure is that endpoint's over every key). The capture triggers
(``hcore.capture``) add each statement's change to the table's change counters:

- INSERT: the new rows' hashes; DELETE: less the old rows'; UPDATE: the new rows'
  less the old rows'; TRUNCATE: zero, once every table the statement names is empty;
- a many-to-many link written, removed or truncated: for each owner it belongs to,
  the owner's hash with the links as they are less its hash with the links as they
  were (the statement's transition table added back or taken out).

The triggers are the same functions for every table; the SELECTs that compute a
statement's change are per table, written here from the models into
``dbsync_capture_hash``, and run by the triggers (``EXECUTE``). ``refresh`` (after
every migrate) writes them where the models' served fields changed, and computes the
table's checksum anew under a lock that keeps writers out for that one pass. A table
without its SELECTs is counted, not summed: the manifest gives no checksum for it.

PostgreSQL only.
"""

import hashlib

from django.db import transaction

from protocol.rowhash import hashed_m2m_fields, linked_keys_sql, quote, served_hash_sql
from protocol.schema import served_models

from .capture import COUNTER_TABLE, HASH_TABLE, MARKER_COLUMN

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


def link_statements(model, field):
    """The SELECTs of the change of the owners' checksum by a statement on the through
    table of many-to-many ``field`` of ``model``: each owner's hash now less its hash
    with the links before the statement."""
    opts = model._meta
    key = f"t.{quote(opts.pk.column)}"
    source, target = quote(field.m2m_column_name()), quote(field.m2m_reverse_name())
    now = linked_keys_sql(field, key)
    added = f"SELECT n.{target} FROM new_rows n WHERE n.{source} = {key}"
    removed = f"SELECT o.{target} FROM old_rows o WHERE o.{source} = {key}"
    before = {
        "inserted": f"{now} EXCEPT ALL {added}",
        "deleted": f"{now} UNION ALL {removed}",
        "updated": f"SELECT c.k FROM ({now} EXCEPT ALL {added}) AS c(k) UNION ALL {removed}",
    }
    owners = {
        "inserted": f"SELECT n.{source} FROM new_rows n",
        "deleted": f"SELECT o.{source} FROM old_rows o",
        "updated": f"SELECT n.{source} FROM new_rows n UNION SELECT o.{source} FROM old_rows o",
    }
    current = served_hash_sql(model)
    table = quote(opts.db_table)
    statements = {
        what: (
            f"SELECT sum(({current})::numeric "
            f"- ({served_hash_sql(model, links=links_as(field, keys))})::numeric) "
            f"FROM {table} t WHERE {key} IN ({owners[what]})"
        )
        for what, keys in before.items()
    }
    # BEFORE TRUNCATE: the links are still there, and will all go.
    through = quote(field.remote_field.through._meta.db_table)
    statements["truncated"] = (
        f"SELECT sum(({served_hash_sql(model, links=links_as(field, NO_LINKS))})::numeric "
        f"- ({current})::numeric) "
        f"FROM {table} t WHERE {key} IN (SELECT x.{source} FROM {through} x)"
    )
    return statements


def entries(model):
    """{table: (owner table, statements)} of ``model``'s table and its through tables."""
    table = model._meta.db_table
    result = {table: (table, row_statements(model))}
    for field in model._meta.local_many_to_many:
        through = field.remote_field.through
        if field in hashed_m2m_fields(model):
            result[through._meta.db_table] = (table, link_statements(model, field))
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
        cursor.execute(f"UPDATE {COUNTER_TABLE} SET checksum = 0 WHERE table_name = %s", [table])
        cursor.execute(
            f"INSERT INTO {COUNTER_TABLE} AS c (table_name, slot, row_count, max_xid, checksum) "
            f"SELECT %s, 0, count(*), 0, COALESCE(sum({served_hash_sql(model)}), 0) "
            f"FROM {quote(table)} t "
            "ON CONFLICT (table_name, slot) DO UPDATE SET checksum = EXCLUDED.checksum",
            [table],
        )
