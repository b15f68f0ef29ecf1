"""The key map: ``(this remote, root model, remote pk) -> local pk``.

Keyed by the *root* model's label: a multi-table child shares its parent row's pk.
Two compact maps per root (``dbsync.engine.keysets``):

- ``loaded``: this remote's rows as they were before the run, read once from the
  local tables (``original_db_id``/``original_id``); never changed afterwards;
- ``allocated``: local pks drawn from the table's sequence in this run for remote
  pks not in ``loaded``; its keys never overlap ``loaded``'s.

A remote pk's local pk, once known, does not change for the rest of the run; so a
foreign key can be written with its final value before its target is.
"""

from collections import defaultdict

from django.db import connection

from hcore.bulk import qn, sequence_values

from ..keysets import KeyMap
from ..planner import label

# One pass, no sort: whether the key map is one run (remote pks dense, one distance
# to the local ones), as after a first sync of a remote with no gaps in its keys.
KEYMAP_SPAN = (
    "SELECT count(*), min(original_id), max(original_id), min({pk} - original_id), "
    "max({pk} - original_id) FROM {table} WHERE original_db_id = %s"
)
KEYMAP_RUNS = (
    "SELECT min(original_id), min({pk}), count(*), "
    "max(original_id) - min(original_id) + 1 = count(*) FROM ("
    "  SELECT original_id, {pk}, original_id - row_number() OVER (ORDER BY original_id) AS g"
    "  FROM {table} WHERE original_db_id = %s) ranked "
    "GROUP BY g, {pk} - original_id ORDER BY 1"
)
# The same, surely right and slower: a run starts where either key does not step by one.
KEYMAP_RUNS_STEPWISE = (
    "SELECT min(original_id), min(local), count(*) FROM ("
    "  SELECT original_id, local, sum(step) OVER (ORDER BY original_id) AS run FROM ("
    "    SELECT original_id, {pk} AS local, CASE WHEN original_id = "
    "      lag(original_id) OVER w + 1 AND {pk} = lag({pk}) OVER w + 1 THEN 0 ELSE 1 END"
    "      AS step FROM {table} WHERE original_db_id = %s"
    "    WINDOW w AS (ORDER BY original_id)) steps) runs "
    "GROUP BY run ORDER BY 1"
)


class KeyMaps:
    """Remote pk -> local pk for each root model of a plan; see the module docstring."""

    def __init__(self, database, roots):
        """``roots``: root label -> root model, the models whose sequences give pks."""
        self.database = database
        self.roots = roots
        self.vendor = connection.vendor
        self.loaded = {}
        self.allocated = defaultdict(KeyMap)
        self.pools = defaultdict(list)  # root label -> allocated local pks not yet used
        self.pool_sizes = defaultdict(lambda: 1000)
        self.sequence_connection = None

    def close(self):
        if self.sequence_connection is not None:
            self.sequence_connection.close()

    def load(self, roots):
        """Read what this remote's objects are here, as runs of consecutive keys (the
        database finds them: a remote of millions of objects has a handful of runs)."""
        with connection.cursor() as cursor:
            for root in roots:
                sql = {"pk": qn(root._meta.pk.column), "table": qn(root._meta.db_table)}
                cursor.execute(KEYMAP_SPAN.format(**sql), [self.database.pk])
                count, low, high, distance, far = cursor.fetchone()
                if not count or (high - low + 1 == count and distance == far):
                    runs = [(low, low + distance, count)] if count else []
                    self.loaded[label(root)] = KeyMap.from_runs(runs)
                    continue
                # Rows with the same distance from their rank (consecutive remote pks)
                # and from their local pk: a run, if they are contiguous (ok).
                cursor.execute(KEYMAP_RUNS.format(**sql), [self.database.pk])
                runs = cursor.fetchall()
                if not all(ok for *_run, ok in runs):
                    cursor.execute(KEYMAP_RUNS_STEPWISE.format(**sql), [self.database.pk])
                    runs = [(*run, True) for run in cursor.fetchall()]
                self.loaded[label(root)] = KeyMap.from_runs(run for *run, _ok in runs)

    def known_local_pk(self, root_label, remote_pk):
        """The local pk of a remote object installed before or allocated in this run."""
        local = self.loaded[root_label].get(remote_pk)
        return self.allocated[root_label].get(remote_pk) if local is None else local

    def local_pk(self, root_label, remote_pk):
        """The local pk of a remote object; a new one is allocated on first sight."""
        local = self.loaded[root_label].get(remote_pk)  # known_local_pk, inlined (hot)
        if local is None:
            local = self.allocated[root_label].get(remote_pk)
        if local is None:
            pool = self.pools[root_label]
            if not pool:
                size = self.pool_sizes[root_label]
                self.pool_sizes[root_label] = min(size * 4, 100_000)
                pool.extend(reversed(self.next_ids(self.roots[root_label], size)))
            local = self.allocated[root_label][remote_pk] = pool.pop()
        return local

    def next_ids(self, root, count):
        table, column = root._meta.db_table, root._meta.pk.column
        if self.vendor == "postgresql":
            # Keys are allocated while a COPY holds the install's connection, so on a
            # connection of their own; nextval() is outside transactions anyway.
            if self.sequence_connection is None:
                self.sequence_connection = connection.get_new_connection(
                    connection.get_connection_params()
                )
                self.sequence_connection.autocommit = True
            with self.sequence_connection.cursor() as cursor:
                return sequence_values(cursor, connection, table, column, count)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX({qn(column)}), 0) FROM {qn(table)}")
            start = cursor.fetchone()[0]
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
            row = cursor.fetchone()
            start = max(start, row[0] if row else 0, self.allocated[label(root)].max_value())
            return list(range(start + 1, start + 1 + count))
