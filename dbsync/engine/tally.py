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
are no counters (SQLite, a table without capture), and is then not kept.

``refresh`` counts again, at the end of a run, the tallies that its own writes made
stale, so that the next run, if nothing else wrote those tables meanwhile, reads them
as they are.
"""

from django.db import DatabaseError, connection, transaction

from hcore.capture import COUNTER_TABLE, CURSOR_SQL


class Tally:
    """``parts``: (sql, params) of scalar subqueries, one a figure, counted over
    ``tables`` (see ``count_of`` and ``sum_of``)."""

    def __init__(self, key, tables, parts):
        self.key, self.tables, self.parts = key, list(tables), list(parts)


def compiled(queryset):
    return queryset.query.get_compiler(using=connection.alias).as_sql()


def count_of(queryset):
    """The rows of ``queryset``, as a part of a Tally."""
    sql, params = compiled(queryset.values("pk"))
    return f"(SELECT count(*) FROM ({sql}) AS counted)", params


def sum_of(queryset, field):
    """The sum of ``field`` over ``queryset`` (0 if none), as a part of a Tally."""
    sql, params = compiled(queryset.values(field))
    column = connection.ops.quote_name(field)
    return f"(SELECT coalesce(sum(summed.{column}), 0) FROM ({sql}) AS summed)", params


def highest_writers(tables):
    """{table: the highest transaction id that inserted, updated or deleted in it}, of
    the ``tables`` that have change counters; None where there are none."""
    if connection.vendor != "postgresql":
        return None
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT table_name, max(GREATEST(max_xid, max_deleted_xid)) "
                f"FROM {COUNTER_TABLE} WHERE table_name = ANY(%s) GROUP BY table_name",
                [list(tables)],
            )
            return dict(cursor.fetchall())
    except DatabaseError:
        return None  # not migrated to change capture


def holds(stored, tally, highest):
    """Whether the stored figures of ``tally`` still hold."""
    if not isinstance(stored, dict) or highest is None:
        return False
    xid = stored.get("xid")
    if not isinstance(xid, int) or not isinstance(stored.get("figures"), list):
        return False
    return all(table in highest and highest[table] < xid for table in tally.tables)


def count(tallies):
    """(xmin or None, {key: figures}) of ``tallies``, counted in one statement."""
    parts = [sql for tally in tallies for sql, _params in tally.parts]
    params = [param for tally in tallies for _sql, args in tally.parts for param in args]
    if connection.vendor == "postgresql":
        parts.insert(0, CURSOR_SQL)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(parts)}", params)
        row = list(cursor.fetchone())
    xmin = row.pop(0) if connection.vendor == "postgresql" else None
    result = {}
    for tally in tallies:
        result[tally.key] = tuple(int(n or 0) for n in row[: len(tally.parts)])
        del row[: len(tally.parts)]
    return xmin, result


def figures(database, tallies, log=None):
    """{key: figures} of ``tallies``: the stored ones that still hold, the others
    counted (in one statement) and stored."""
    stored = stored_tallies(database)
    highest = highest_writers({table for tally in tallies for table in tally.tables})
    result, stale = {}, []
    for tally in tallies:
        if holds(stored.get(tally.key), tally, highest):
            result[tally.key] = tuple(stored[tally.key]["figures"])
        else:
            stale.append(tally)
    if log is not None:
        log(f"\t- tallies of the replica: {len(stale)} counted, {len(result)} kept", 2)
    if stale:
        result.update(count_and_keep(database, stale, highest))
    return result


def refresh(database, tallies, log=None):
    """Count again those of ``tallies`` that are stored and no longer hold (a run's own
    writes made them stale): the next run, if nothing else writes their tables
    meanwhile, reads them as they are."""
    stored = stored_tallies(database)
    tallies = [tally for tally in tallies if tally.key in stored]
    if not tallies:
        return
    highest = highest_writers({table for tally in tallies for table in tally.tables})
    stale = [tally for tally in tallies if not holds(stored[tally.key], tally, highest)]
    if not stale:
        return
    if log is not None:
        log(f"\t- tallies of the replica that this run wrote: {len(stale)} counted again", 2)
    count_and_keep(database, stale, highest)


def stored_tallies(database):
    return database.tallies if isinstance(database.tallies, dict) else {}


def count_and_keep(database, tallies, highest):
    """{key: figures} of ``tallies``, counted; kept where there are change counters."""
    xmin, counted = count(tallies)
    if xmin is not None and highest is not None:
        tallies = dict(stored_tallies(database))
        tallies.update({key: {"xid": xmin, "figures": list(n)} for key, n in counted.items()})
        type(database).objects.filter(pk=database.pk).update(tallies=tallies)
        database.tallies = tallies
    return counted
