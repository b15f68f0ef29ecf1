"""The foreign keys of the rows an install inserts, checked with one query per key.

PostgreSQL checks a deferred foreign key with a trigger per row at COMMIT, a large
part of a first sync's time (docs/benchmarks.md). With the
right to set ``session_replication_role`` (a superuser has it; on PostgreSQL 15+
``GRANT SET ON PARAMETER session_replication_role TO <role>`` gives it), the install
COPYs its new rows with triggers off, then checks each foreign key of those rows in
one query before its COMMIT, and locks the rows they refer to that other sessions
can see (``FOR KEY SHARE``, as the triggers would have). Nothing else changes:
updates and deletions keep their triggers, and so does every insert into a table that
has triggers of its own (replica mode would silence them). The product's change-capture
triggers (``hcore.capture``, ``dbsync_``-named) are ``ENABLE ALWAYS``: they fire in
replica mode too, so a table that has only them keeps the fast path. Without that right, or with
``DBSYNC_BULK_KEY_CHECKS`` off, the triggers check every row, as before.
"""

import logging
from collections import defaultdict
from contextlib import contextmanager, suppress

from django.conf import settings
from django.db import DatabaseError, connection, transaction

from hcore.bulk import qn

from .errors import ObjectError
from .keysets import KeySet

logger = logging.getLogger(__name__)

MAX_LISTED = 20


def _bulk_allowed():
    if connection.vendor != "postgresql" or not settings.DBSYNC_BULK_KEY_CHECKS:
        return False
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute("SET LOCAL session_replication_role = origin")
    except DatabaseError as exc:
        logger.info("Foreign keys checked row by row (%s)", " ".join(str(exc).split()))
        return False
    return True


# Up to this many runs of keys are written into a query as ranges (which PostgreSQL
# plans well: index range scans, estimates); more go as arrays.
INLINE_RUNS = 32


def _runs(keys):
    """Two arrays (starts, ends) of the runs of a KeySet, for ``unnest``."""
    starts, ends = list(keys.starts), list(keys.ends)
    for key in sorted(keys.extra):
        starts.append(key)
        ends.append(key + 1)
    return starts, ends


def in_runs(column, keys):
    """(SQL condition, params): ``column`` is one of ``keys`` (a KeySet, or None)."""
    starts, ends = _runs(keys) if keys else ([], [])
    if not starts:
        return "false", []
    if len(starts) <= INLINE_RUNS:
        ranges = " OR ".join(f"({column} >= %s AND {column} < %s)" for _ in starts)
        return f"({ranges})", [v for pair in zip(starts, ends, strict=True) for v in pair]
    return (
        f"EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::bigint[]) r(s, e) "
        f"WHERE {column} >= r.s AND {column} < r.e)",
        [starts, ends],
    )


def foreign_keys(table):
    """(column, referenced table, referenced column) of each foreign key of ``table``;
    None if one spans several columns (then the triggers must check it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT array_length(c.conkey, 1), a.attname, t.relname, f.attname "
            "FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "JOIN pg_class t ON t.oid = c.confrelid "
            "JOIN pg_attribute f ON f.attrelid = c.confrelid AND f.attnum = c.confkey[1] "
            "WHERE c.contype = 'f' AND c.conrelid = %s::regclass ORDER BY a.attname",
            [qn(table)],
        )
        rows = cursor.fetchall()
    if any(n != 1 for n, *_ in rows):
        return None
    return [tuple(row[1:]) for row in rows]


def own_triggers(table):
    """The triggers on ``table`` that are not PostgreSQL's own (foreign keys) and that
    ``session_replication_role = replica`` would silence (an audit trigger, say). The
    product's own (``dbsync_``-named, ``ENABLE ALWAYS``: capture, journal) fire in
    replica mode too, and are not counted."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal AND tgenabled = 'O'",
            [qn(table)],
        )
        return [row[0] for row in cursor.fetchall()]


class KeyChecks:
    """Rows inserted with their foreign-key triggers off, and the check of them."""

    def __init__(self, database):
        self.database = database
        self.enabled = _bulk_allowed()
        self.inserted = defaultdict(KeySet)  # (table, pk column) -> local pks
        self.labels = {}  # table -> model label
        self.keys = {}  # table -> its foreign keys, or None

    def allowed(self, table):
        if not self.enabled:
            return False
        if table not in self.keys:
            self.keys[table] = foreign_keys(table)
            if self.keys[table] is not None and own_triggers(table):
                # With triggers off they would not fire: that table keeps them all.
                logger.info("%s has triggers of its own: its keys checked row by row", table)
                self.keys[table] = None
        return self.keys[table] is not None

    @contextmanager
    def unchecked(self, spec):
        """Rows written in this block are checked by ``check()``, not by triggers."""
        if not self.allowed(spec.table):
            yield None
            return
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = replica")
            try:
                yield self.inserted[(spec.table, spec.pk_column)]
            except BaseException:
                # The transaction is failing; its rollback ends replica mode. Ending it
                # here, where the transaction may still be usable, costs nothing.
                with suppress(DatabaseError):
                    cursor.execute("SET LOCAL session_replication_role = origin")
                raise
            cursor.execute("SET LOCAL session_replication_role = origin")
        self.labels[spec.table] = spec.label

    def check(self):
        """Lock what the inserted rows refer to, then refuse any reference that dangles.
        Return the number of rows checked."""
        problems = []
        with connection.cursor() as cursor:
            for (table, pk), keys in self.inserted.items():
                if not keys or not self.keys[table]:
                    continue
                where, params = in_runs(f"t.{qn(pk)}", keys)
                rows = (f"SELECT t.* FROM {qn(table)} t WHERE {where}", params)
                for column, target, target_column in self.keys[table]:
                    self.lock(cursor, rows, column, target, target_column)
                problems += self.dangling(cursor, table, pk, rows)
        if problems:
            raise ObjectError(
                f"{self.database}: foreign keys of the new rows do not hold (was something "
                f"deleted here during the sync?): {'; '.join(problems[:MAX_LISTED])}"
            )
        return sum(len(keys) for keys in self.inserted.values())

    def lock(self, cursor, rows, column, target, target_column):
        """Lock the rows referred to that other sessions see (those inserted by this
        run they do not: they need no lock, and are left out before the join)."""
        mine, mine_params = in_runs(f"n.{qn(column)}", self.inserted.get((target, target_column)))
        cursor.execute(
            f"SELECT 1 FROM {qn(target)} p WHERE p.{qn(target_column)} IN ("
            f"SELECT DISTINCT n.{qn(column)} FROM ({rows[0]}) n WHERE n.{qn(column)} IS NOT "
            f"NULL AND NOT {mine}) FOR KEY SHARE OF p",
            [*rows[1], *mine_params],
        )

    def dangling(self, cursor, table, pk, rows):
        """Every foreign key of the new rows of ``table`` checked in one pass over them."""
        joins, failed = [], []
        for i, (column, target, target_column) in enumerate(self.keys[table]):
            joins.append(
                f"LEFT JOIN {qn(target)} p{i} ON p{i}.{qn(target_column)} = n.{qn(column)}"
            )
            failed.append(f"(n.{qn(column)} IS NOT NULL AND p{i}.{qn(target_column)} IS NULL)")
        cursor.execute(
            f"SELECT n.{qn(pk)}, {', '.join(failed)}, "
            f"{', '.join(f'n.{qn(column)}' for column, _t, _c in self.keys[table])} "
            f"FROM ({rows[0]}) n {' '.join(joins)} WHERE {' OR '.join(failed)} "
            f"LIMIT {MAX_LISTED}",
            rows[1],
        )
        problems = []
        width = len(self.keys[table])
        for row in cursor.fetchall():
            local, flags, values = row[0], row[1 : 1 + width], row[1 + width :]
            for flag, value, (column, target, _c) in zip(
                flags, values, self.keys[table], strict=True
            ):
                if flag:
                    problems.append(
                        f"{self.labels.get(table, table)}(local pk={local}).{column} = "
                        f"{value}: no such row in {target}"
                    )
        return problems
