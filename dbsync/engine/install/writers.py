"""The SQL writers: rows already converted and keyed (local pks) -> the tables.

They know nothing of remotes, key maps or references: each takes a model's spec and
plain rows or pks, and writes. COPY on PostgreSQL, batched inserts elsewhere
(``hcore.bulk``). A row is ``[local pk, *column values]`` plus, for a root model,
``original_id, original_db_id, last_modified`` (``ModelSpec.column_names``).
"""

from django.db import connection

from hcore.bulk import copy_rows, execute_batches, qn

SQLITE_CHUNK = 500
# A table that gets this many new rows is analyzed after the run's COMMIT: its
# statistics (none after a first sync) steer every later query on it. Not before:
# ANALYZE counts the uncommitted rows into pg_class at once, for every session.
ANALYZE_MIN_ROWS = 10_000


def write_rows(spec, table, rows):
    """Write ``rows`` (all columns of ``spec``) into ``table``: COPY on PostgreSQL."""
    columns = spec.column_names
    cols = ", ".join(qn(c) for c in columns)
    if connection.vendor == "postgresql":
        copy_rows(connection, f"COPY {qn(table)} ({cols}) FROM STDIN", rows)
        return
    fields = spec.column_fields
    sql = f"INSERT INTO {qn(table)} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})"
    prepared = (
        [f.get_db_prep_save(v, connection) for f, v in zip(fields, row, strict=True)]
        for row in rows
    )
    with connection.cursor() as cursor:
        execute_batches(cursor, sql, prepared, SQLITE_CHUNK)


def merge(spec, rows):
    """Stage the rows of existing objects and merge them into the model's table,
    touching only rows where something changed; return the local pks that changed."""
    vendor = connection.vendor
    columns = spec.column_names
    stage = f"dbsync_stage_{spec.table}"[:60]
    cols = ", ".join(qn(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {qn(stage)}")
        suffix = "WITH NO DATA" if vendor == "postgresql" else "LIMIT 0"
        cursor.execute(
            f"CREATE TEMP TABLE {qn(stage)} AS SELECT {cols} FROM {qn(spec.table)} {suffix}"
        )
    write_rows(spec, stage, rows)
    compared = spec.compared_columns
    updates = [
        c
        for c in columns
        if c != spec.pk_column
        and c not in ("original_id", "original_db_id")
        and c not in spec.file_columns
    ]
    target = qn(spec.table)
    if not compared:
        conflict = "DO NOTHING"
    else:
        same = "IS DISTINCT FROM" if vendor == "postgresql" else "IS NOT"
        differs = " OR ".join(f"{target}.{qn(c)} {same} EXCLUDED.{qn(c)}" for c in compared)
        set_clause = ", ".join(f"{qn(c)} = EXCLUDED.{qn(c)}" for c in updates)
        conflict = f"DO UPDATE SET {set_clause} WHERE {differs}"
    where = "" if vendor == "postgresql" else " WHERE true"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {qn(stage)}{where} "
            f"ON CONFLICT ({qn(spec.pk_column)}) {conflict} RETURNING {qn(spec.pk_column)}"
        )
        changed = {row[0] for row in cursor.fetchall()}
        cursor.execute(f"DROP TABLE {qn(stage)}")
    return changed


def replace_links(f, owners, wanted):
    """Make the links of ``owners`` exactly ``wanted``; return owners that changed."""
    if not owners:
        return set()
    through = f.remote_field.through._meta
    table = qn(through.db_table)
    src = qn(f.m2m_column_name())
    dst = qn(f.m2m_reverse_name())
    existing = set()
    with connection.cursor() as cursor:
        for chunk in chunks(sorted(owners), 5000):
            cursor.execute(
                f"SELECT {src}, {dst} FROM {table} WHERE {src} IN "
                f"({', '.join(['%s'] * len(chunk))})",
                chunk,
            )
            existing.update(cursor.fetchall())
        stale = existing - wanted
        fresh = wanted - existing
        for chunk in chunks(sorted(stale), 500):
            cursor.executemany(f"DELETE FROM {table} WHERE {src} = %s AND {dst} = %s", chunk)
        for chunk in chunks(sorted(fresh), 5000):
            cursor.executemany(f"INSERT INTO {table} ({src}, {dst}) VALUES (%s, %s)", chunk)
    return {s for s, _ in stale} | {s for s, _ in fresh}


def touch(root, pks, now):
    """Set last_modified of objects changed through a child row or a link to ``now``."""
    with connection.cursor() as cursor:
        for chunk in chunks(sorted(pks), 5000):
            cursor.execute(
                f"UPDATE {qn(root._meta.db_table)} SET last_modified = %s "
                f"WHERE {qn(root._meta.pk.column)} IN ({', '.join(['%s'] * len(chunk))})",
                [now, *chunk],
            )


def analyze_grown_tables(grown):
    """After the COMMIT: statistics of the tables that grew much (table -> rows added)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for table, count in grown.items():
            if count >= ANALYZE_MIN_ROWS:
                cursor.execute(f"ANALYZE {qn(table)}")


def chunks(items, size):
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]
