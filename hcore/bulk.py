"""Bulk SQL, on PostgreSQL and SQLite: keys from sequences, COPY, batched inserts,
foreign keys checked once at the end. One module for the sync's install and records
(``dbsync.engine``) and the sample-data generator (``hcore.management``).

It lives in ``hcore``, the lowest of the apps: the sync engine depends on hcore
already (its models), and the generator must not depend on the sync; this module
imports neither, only Django.

Django's ``bulk_create`` refuses multi-table children, and building model
instances costs more than the insert itself. ``insert_rows`` writes plain tuples
into a model's own table (its local columns only, the parent link included):
with ``COPY`` on PostgreSQL, with batched ``executemany`` elsewhere. Values are
Python values (keys as integers); nothing calls ``save()``, sends signals or fills
``auto_now`` fields, so the caller supplies every NOT NULL column.
"""

import logging
from contextlib import contextmanager
from itertools import islice

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.db.models import DateField
from django.db.transaction import TransactionManagementError

logger = logging.getLogger(__name__)

BATCH_SIZE = 5_000
COPY_BLOCK = 1 << 20
NEXTVAL_SQL = "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)"


def qn(name):
    """``name`` quoted as an identifier of the default database."""
    return connection.ops.quote_name(name)


def insert_rows(model, field_names, rows, using=DEFAULT_DB_ALIAS):
    """Insert ``rows`` (tuples ordered as ``field_names``) into ``model``'s table.

    ``rows`` may be a generator: on PostgreSQL the server then stores one batch
    while the next is being made. Returns the number of rows.
    """
    connection = connections[using]
    table = connection.ops.quote_name(model._meta.db_table)
    columns = ", ".join(
        connection.ops.quote_name(model._meta.get_field(name).column) for name in field_names
    )
    if connection.vendor == "postgresql":
        # psycopg adapts Python values itself, dates and aware datetimes included.
        return copy_rows(connection, f"COPY {table} ({columns}) FROM STDIN", rows)
    rows = adapt_rows(rows, value_adapters(model, field_names, connection))
    placeholders = ", ".join(["%s"] * len(field_names))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
    with connection.cursor() as cursor:
        return execute_batches(cursor, sql, rows, BATCH_SIZE)


def execute_batches(cursor, sql, rows, size=BATCH_SIZE):
    """``executemany`` of ``rows`` (any iterable) ``size`` rows at a time, so that a
    generator is never held whole; return the number of rows."""
    rows = iter(rows)
    count = 0
    while batch := list(islice(rows, size)):
        cursor.executemany(sql, batch)
        count += len(batch)
    return count


def insert_rows_returning_pks(model, field_names, rows, using=DEFAULT_DB_ALIAS):
    """Insert rows of a model with an auto-incremented key; return the keys, in order.

    On PostgreSQL the keys are taken from the table's sequence first and the rows
    copied with them; elsewhere ``bulk_create`` (which returns keys on SQLite 3.35+).
    """
    if not rows:
        return []
    connection = connections[using]
    if connection.vendor == "postgresql":
        pks = allocate_pks(connection, model, len(rows))
        insert_rows(
            model,
            [model._meta.pk.name, *field_names],
            [(pk, *row) for pk, row in zip(pks, rows, strict=True)],
            using=using,
        )
        return pks
    attnames = [model._meta.get_field(name).attname for name in field_names]
    objects = [model(**dict(zip(attnames, row, strict=True))) for row in rows]
    model.objects.using(using).bulk_create(objects, batch_size=BATCH_SIZE)
    return [obj.pk for obj in objects]


def allocate_pks(connection, model, count):
    """``count`` new keys from the sequence of ``model``'s table (PostgreSQL)."""
    with connection.cursor() as cursor:
        return sequence_values(
            cursor, connection, model._meta.db_table, model._meta.pk.column, count
        )


def sequence_values(cursor, connection, table, column, count):
    """``count`` values of the sequence of ``table``'s ``column`` (PostgreSQL), through
    ``cursor`` (Django's, or psycopg's own on a connection of its own)."""
    cursor.execute(NEXTVAL_SQL, [connection.ops.quote_name(table), column, count])
    return [value for (value,) in cursor.fetchall()]


def copy_rows(connection, sql, rows):
    """COPY ``rows`` (tuples of Python values, adapted by psycopg); return their number."""
    count = 0
    with connection.cursor() as cursor:
        # The psycopg cursor under Django's wrapper: COPY is psycopg's own API.
        with cursor.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


def copy_text(connection, sql, blocks):
    """COPY ``blocks`` of text, already in COPY's text format (the fastest way in)."""
    with connection.cursor() as cursor:
        with cursor.cursor.copy(sql) as copy:
            for block in blocks:
                copy.write(block)


def copy_file(connection, sql, path, block_size=COPY_BLOCK):
    """COPY a file already in COPY's text format, a block at a time."""
    with open(path, "rb") as fh:
        copy_text(connection, sql, iter(lambda: fh.read(block_size), b""))


def value_adapters(model, field_names, connection):
    """Per column, a function preparing a value for the database, or None."""
    adapters = []
    for name in field_names:
        field = model._meta.get_field(name)
        # DateTimeField is a DateField; both need the backend's adaptation (SQLite
        # stores text, aware datetimes in UTC). Other values go in as they are.
        if isinstance(field, DateField):
            adapters.append(lambda value, f=field: f.get_db_prep_save(value, connection))
        else:
            adapters.append(None)
    return adapters


def adapt_rows(rows, adapters):
    if not any(adapters):
        return iter(rows)
    return (
        tuple(
            value if adapt is None else adapt(value)
            for value, adapt in zip(row, adapters, strict=True)
        )
        for row in rows
    )


@contextmanager
def foreign_keys_checked_at_end(models, using=DEFAULT_DB_ALIAS):
    """Check the foreign keys of ``models``' tables once, at the end of the block.

    On PostgreSQL a foreign key is checked by a trigger per inserted row, which for
    a large load costs more than the load itself. As the PostgreSQL manual advises
    ("Populating a Database"), the block runs with the tables' foreign key constraints
    dropped; at its end they are added again as they were (same names, same
    definitions), which checks all rows in one query per constraint. Inside a
    transaction only: a failure rolls the constraints back with the data. The tables,
    and those they point to, stay locked (ACCESS EXCLUSIVE) until the transaction ends.

    PostgreSQL refuses to alter a table with pending deferred checks; if the outer
    transaction already wrote to the tables, if the user does not own them, or
    elsewhere than on PostgreSQL, the block runs with the usual per-row checks.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        raise TransactionManagementError("Foreign keys can be dropped inside a transaction only.")
    constraints = []
    if connection.vendor == "postgresql":
        constraints = drop_foreign_keys(connection, [m._meta.db_table for m in models])
    yield
    if constraints:
        with connection.cursor() as cursor:
            alter_constraints(cursor, constraints, "ADD CONSTRAINT {name} {definition}")


def drop_foreign_keys(connection, tables):
    """Drop the foreign keys of ``tables``; return (table, name, definition) of each."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY(%s::regclass[]) "
            "ORDER BY 1, 2",
            [[connection.ops.quote_name(table) for table in tables]],
        )
        constraints = cursor.fetchall()
        try:
            with transaction.atomic(using=connection.alias):
                alter_constraints(cursor, constraints, "DROP CONSTRAINT {name}")
        except DatabaseError as error:  # pending checks, or not the tables' owner
            logger.warning("Foreign keys stay checked row by row (slower): %s", error)
            return []
    return constraints


def alter_constraints(cursor, constraints, action):
    """One ALTER TABLE per table, ``action`` formatted with each constraint's name and
    definition."""
    quote = cursor.db.ops.quote_name
    by_table = {}
    for table, name, definition in constraints:
        by_table.setdefault(table, []).append(
            action.format(name=quote(name), definition=definition)
        )
    for table, actions in by_table.items():
        cursor.execute(f"ALTER TABLE {table} {', '.join(actions)}")
