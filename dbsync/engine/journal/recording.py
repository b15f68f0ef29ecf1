"""Whose changes a transaction makes: ``recording(run_id)`` sets ``dbsync.run_id``
for the rest of the caller's transaction (``SET LOCAL``), which the journal's
triggers read; leaving the block unsets it."""

from contextlib import contextmanager

from django.db import connection


def supported():
    """Whether runs can be journaled here (PostgreSQL; not SQLite)."""
    return connection.vendor == "postgresql"


@contextmanager
def recording(run_id):
    """Inside the caller's ``transaction.atomic()``: every change the transaction
    makes to a journaled table until the block ends is journaled under ``run_id``.
    ``run_id`` None, or a database that has no journal (SQLite): nothing is."""
    if run_id is None or not supported():
        yield
        return
    if not connection.in_atomic_block:
        raise RuntimeError("journal.recording() must be used inside transaction.atomic()")
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('dbsync.run_id', %s, true)", [str(int(run_id))])
    yield
    # Not after an error: the transaction is failing, and its rollback unsets it.
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('dbsync.run_id', '', true)")
