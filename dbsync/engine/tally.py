"""Tallies: figures of what is replicated here from a remote (its rows of a model, its
time series), kept between runs in ``Database.tallies`` so that a run need not count
the replica again when nothing wrote the tables counted.

A tally is counted in one statement, together with that statement's snapshot xmin
(``hcore.capture.CURSOR_SQL``): every transaction whose writes the count did not see
has that id or a later one. Every write to a captured table, by any writer (a sync, a
hand edit, raw SQL, a ``TRUNCATE``, in any ``session_replication_role``), moves the
highest writer of that table in the change counters (``hcore.capture``). So a tally
still holds while its tables' highest writers (inserts, updates and deletions) are all
below its xmin; otherwise it is counted again. It is also counted again where there
are no counters (SQLite, a table without capture), and is then not kept; and in a
database that is not the one it was counted in (its cluster, timeline or oid changed:
restored elsewhere, where transaction ids may start lower).

``refresh`` counts again, at the end of a run, the tallies that its own writes made
stale, so that the next run, if nothing else wrote those tables meanwhile, reads them
as they are.
"""

from typing import NamedTuple

from django.db import DatabaseError, connection, transaction

from hcore.capture import COUNTER_TABLE, CURSOR_SQL


class Tally:
    """``sql``: a SELECT of one row, ``width`` figures, counted over ``tables``."""

    def __init__(self, key, tables, sql, params=(), width=1):
        self.key, self.tables = key, list(tables)
        self.sql, self.params, self.width = sql, list(params), width


def count_of(key, tables, queryset):
    """The tally of the rows of ``queryset``."""
    sql, params = queryset.values("pk").query.get_compiler(using=connection.alias).as_sql()
    return Tally(key, tables, f"SELECT count(*) FROM ({sql}) AS counted", params)


# Where a tally was counted: transaction ids are comparable within it only.
IDENTITY_SQL = """
(SELECT concat_ws('/', (SELECT system_identifier FROM pg_control_system()),
                  (SELECT timeline_id FROM pg_control_checkpoint()),
                  (SELECT oid FROM pg_database WHERE datname = current_database())))
"""


class Writers(NamedTuple):
    identity: str  # of this database (IDENTITY_SQL)
    highest: dict  # table -> the highest transaction id that inserted, updated or deleted


def highest_writers(tables):
    """The Writers of the ``tables`` that have change counters; None where there are
    none."""
    if connection.vendor != "postgresql":
        return None
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT {IDENTITY_SQL}")
            identity = cursor.fetchone()[0]
            cursor.execute(
                f"SELECT table_name, max(GREATEST(max_xid, max_deleted_xid)) "
                f"FROM {COUNTER_TABLE} WHERE table_name = ANY(%s) GROUP BY table_name",
                [list(tables)],
            )
            return Writers(identity, dict(cursor.fetchall()))
    except DatabaseError:
        return None  # not migrated to change capture


def holds(stored, tally, writers):
    """Whether the stored figures of ``tally`` still hold."""
    if not isinstance(stored, dict) or writers is None:
        return False
    xid = stored.get("xid")
    if not isinstance(xid, int) or not isinstance(stored.get("figures"), list):
        return False
    if stored.get("identity") != writers.identity:
        return False
    highest = writers.highest
    return all(table in highest and highest[table] < xid for table in tally.tables)


def count(tallies):
    """(xmin or None, {key: figures}) of ``tallies``, counted in one statement."""
    sources = ", ".join(f"({tally.sql}) AS tally{n}" for n, tally in enumerate(tallies))
    params = [param for tally in tallies for param in tally.params]
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {CURSOR_SQL + ', ' if postgresql else ''}* FROM {sources}", params)
        row = list(cursor.fetchone())
    xmin = row.pop(0) if postgresql else None
    result = {}
    for tally in tallies:
        result[tally.key] = tuple(int(n or 0) for n in row[: tally.width])
        del row[: tally.width]
    return xmin, result


def figures(database, tallies, log=None):
    """{key: figures} of ``tallies``: the stored ones that still hold, the others
    counted (in one statement) and stored."""
    stored = stored_tallies(database)
    writers = highest_writers({table for tally in tallies for table in tally.tables})
    result, stale = {}, []
    for tally in tallies:
        if holds(stored.get(tally.key), tally, writers):
            result[tally.key] = tuple(stored[tally.key]["figures"])
        else:
            stale.append(tally)
    if log is not None:
        log(f"\t- tallies of the replica: {len(stale)} counted, {len(result)} kept", 2)
    if stale:
        result.update(count_and_keep(database, stale, writers))
    return result


def refresh(database, tallies, log=None):
    """Count again those of ``tallies`` that are stored and no longer hold (a run's own
    writes made them stale): the next run, if nothing else writes their tables
    meanwhile, reads them as they are."""
    stored = stored_tallies(database)
    tallies = [tally for tally in tallies if tally.key in stored]
    if not tallies:
        return
    writers = highest_writers({table for tally in tallies for table in tally.tables})
    stale = [tally for tally in tallies if not holds(stored[tally.key], tally, writers)]
    if not stale:
        return
    if log is not None:
        log(f"\t- tallies of the replica that this run wrote: {len(stale)} counted again", 2)
    count_and_keep(database, stale, writers)


def stored_tallies(database):
    return database.tallies if isinstance(database.tallies, dict) else {}


def count_and_keep(database, tallies, writers):
    """{key: figures} of ``tallies``, counted; kept where there are change counters."""
    xmin, counted = count(tallies)
    if xmin is not None and writers is not None:
        tallies = dict(stored_tallies(database))
        entries = {
            key: {"xid": xmin, "identity": writers.identity, "figures": list(n)}
            for key, n in counted.items()
        }
        tallies.update(entries)
        type(database).objects.filter(pk=database.pk).update(tallies=tallies)
        database.tallies = tallies
    return counted
