"""The journal of a run: what it changed, kept so that ``revert`` can undo it exactly.

A run's changes are journaled in its own transactions, by the database itself:
statement-level AFTER triggers (``dbsync_journal_*``, ENABLE ALWAYS, so that they
fire under ``session_replication_role = replica`` too) on every replicated table
write, into the table ``dbsync_journal``, the before-image of every row a statement
updates or deletes and the key of every row it inserts (of a records' insert, one
range per series). They do nothing unless the transaction has said whose changes
these are: ``recording(run_id)``, inside the caller's ``transaction.atomic()``.
Files are not in the database: a file the run replaces or deletes is moved into the
run's folder of ``DBSYNC_JOURNAL_DIR`` instead (``files``), and put back by the revert.

- ``schema``: the journal's table, trigger function and triggers; which tables are
  journaled (``journaled_tables``);
- ``recording``: ``recording(run_id)``, ``supported()``;
- ``files``: ``FileJournal``, a run's files kept and noted;
- ``revert``: ``conflicts``, ``revert``, ``size``, ``discard``.

PostgreSQL only: on SQLite (the embedded default) runs are not journaled and cannot
be reverted; ``supported()`` says so.
"""

from .files import FileJournal, revert_files
from .recording import recording, supported
from .revert import JournalConflict, conflicts, discard, has_journal, revert, size
from .schema import journaled_tables

__all__ = [
    "FileJournal",
    "JournalConflict",
    "conflicts",
    "discard",
    "has_journal",
    "journaled_tables",
    "recording",
    "revert",
    "revert_files",
    "size",
    "supported",
]
