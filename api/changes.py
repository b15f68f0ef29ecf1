"""What changed, as the database captured it (``hcore.capture``): the manifest's
``capture`` section, a dump's ``changed_since`` and a keys listing's ``deleted_since``.

The manifest's figures are read in **one statement**, so in one snapshot: the
snapshot's xmin (the oldest transaction still running: every one below it has ended,
and all its writes are visible; transactions of other databases of the cluster left
out), each table's count and highest writer, the
tombstones' horizon and the cluster's identity. A client that stores that xmin as its
cursor and next asks for rows and tombstones with a marker at or above it misses no
transaction, whenever it commits; it may get a row twice, which an upsert absorbs.

PostgreSQL only: on another database the manifest says ``"guarantee": "clock"`` and
the client keeps the timestamp cursor (``last_modified``, with its overlap window).
"""

from django.db import DatabaseError, connection, transaction

from hcore.capture import (
    COUNTED_ONLY_TABLES,
    COUNTER_TABLE,
    CURSOR_SQL,
    HASH_TABLE,
    MARKER_COLUMN,
    STATE_TABLE,
    TOMBSTONE_TABLE,
)

from .errors import ApiError

# The protocol this release speaks: 1 had no "protocol" (the timestamp cursor only);
# 2 adds the capture section, changed_since and deleted_since; 3, the hashes'
# changed_since (api.checksums), which --verify sends only to a server of 3 or later.
PROTOCOL_VERSION = 3
GUARANTEE_SNAPSHOT = "snapshot"  # the cursor is a snapshot's xmin: nothing is missed
GUARANTEE_CLOCK = "clock"  # last_modified on the server's clock, with an overlap window

STATE_SQL = f"""
SELECT {CURSOR_SQL},
       (SELECT horizon FROM {STATE_TABLE} WHERE id = 1),
       (SELECT system_identifier::text FROM pg_control_system()),
       (SELECT timeline_id FROM pg_control_checkpoint()),
       current_database(),
       (SELECT oid::bigint FROM pg_database WHERE datname = current_database()),
       (SELECT coalesce(json_object_agg(table_name, json_build_array(n, m, d, c)), '{{}}')
        FROM (SELECT table_name, sum(row_count) AS n, max(max_xid) AS m,
                     max(max_deleted_xid) AS d,
                     CASE WHEN table_name IN (SELECT table_name FROM {HASH_TABLE}
                                              WHERE owner = table_name)
                          THEN sum(checksum)::text END AS c
              FROM {COUNTER_TABLE}
              WHERE table_name NOT IN ({", ".join(f"'{t}'" for t in COUNTED_ONLY_TABLES)})
              GROUP BY table_name) t)
"""


def capture_state():
    """The capture section and per-table figures, or None where there is no capture
    (another database, or a PostgreSQL database not migrated yet)."""
    if connection.vendor != "postgresql":
        return None
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(STATE_SQL)
            xmin, horizon, system, timeline, name, oid, tables = cursor.fetchone()
    except DatabaseError:
        return None  # a table of hcore.capture missing: served as a clock remote
    if isinstance(tables, str):
        import json

        tables = json.loads(tables)
    return {
        "guarantee": GUARANTEE_SNAPSHOT,
        "cursor": xmin,
        "horizon": horizon,
        "identity": {
            "system_identifier": system,
            "timeline": timeline,
            "database": name,
            "database_oid": oid,
        },
        # table -> (count, highest writer, highest deleter, checksum or None: a table
        # whose running checksum is not kept, hcore.checksums)
        "tables": {
            table: (*map(int, figures[:3]), None if figures[3] is None else int(figures[3]))
            for table, figures in tables.items()
        },
    }


def filter_changed_since(queryset, model, since):
    """The rows of ``model``'s own table written by transaction ``since`` or later."""
    table = connection.ops.quote_name(model._meta.db_table)
    return queryset.extra(where=[f"{table}.{MARKER_COLUMN} >= %s"], params=[since])


def check_deleted_since(since, name="deleted_since"):
    """Before the response starts: a 400 where there are no tombstones to list."""
    if since is not None and connection.vendor != "postgresql":
        raise ApiError(400, f"{name} needs change capture, which this instance lacks.")


def check_changed_since(since):
    """Before the response starts: a 400 where no row carries a change marker."""
    check_deleted_since(since, "changed_since")


def deleted_keys(model, since):
    """Keys listing chunks ("1,2,3", n) of the model's tombstones since ``since``,
    ascending, each key once (a key deleted, re-inserted and deleted again is one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT string_agg(pk::text, ',' ORDER BY pk), count(*) FROM ("
            f"SELECT DISTINCT pk FROM {TOMBSTONE_TABLE} WHERE table_name = %s AND xid >= %s) t",
            [model._meta.db_table, since],
        )
        keys, count = cursor.fetchone()
    if count:
        yield keys, count
