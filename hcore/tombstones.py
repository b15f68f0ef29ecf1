"""Tombstone retention: the tombstones (``hcore.capture``) older than a number of days
are pruned, and the horizon moves with them; a client whose cursor is older then runs
in full.

Tombstones carry a transaction id, not a time. The clock table
(``dbsync_capture_clock``) says which transaction ids were behind us when: every
pruning (and the migration that made the table) writes a mark, the cursor a client
would get then (the snapshot's xmin, this database's transactions only: ``CURSOR_SQL``)
and now(); every transaction of this database below it had ended by then. The horizon
of a retention of N days is the newest mark at least N days old, so a tombstone below
it is older than N days. On a fresh table no mark is that old yet, and nothing is pruned: the
retention counts from the first mark. ``days=0`` prunes everything that has ended
(the setting at 0, though, turns the schedule off).

One logic path for the command (``hcore_prunetombstones``), the daily task
(``hcore.tasks.prune_tombstones``, scheduled by ``hcore.apps``) and any caller.
"""

import logging
from dataclasses import dataclass

from django.db import transaction

from .capture import (
    CLOCK_TABLE,
    CURSOR_SQL,
    STATE_TABLE,
    TOMBSTONE_TABLE,
    prune_tombstones,
)

logger = logging.getLogger(__name__)

RETENTION_OFF = (
    "DBSYNC_TOMBSTONE_RETENTION_DAYS is 0: tombstones are kept forever; nothing was pruned."
)

# A mark and the horizon it gives, in one statement (one snapshot, one now()).
HORIZON_SQL = f"""
SELECT (SELECT horizon FROM {STATE_TABLE} WHERE id = 1),
       (SELECT max(m.xid) FROM (SELECT xid, at FROM {CLOCK_TABLE}
                                UNION ALL SELECT {CURSOR_SQL}, now()) m
        WHERE m.at <= now() - make_interval(days => %s))
"""


@dataclass
class Pruning:
    """What a pruning did (or, dry, would do)."""

    days: int
    horizon_before: int
    horizon: int  # the horizon published (or that would be)
    tombstones: int  # dropped (or that would be)
    dry_run: bool = False

    def describe(self):
        verb = "would drop" if self.dry_run else "dropped"
        if self.horizon == self.horizon_before and not self.tombstones:
            return (
                f"No tombstone older than {self.days} day(s) to prune; the horizon stays at "
                f"transaction {self.horizon}."
            )
        moved = "would move" if self.dry_run else "moved"
        return (
            f"Tombstones older than {self.days} day(s): {verb} {self.tombstones}; the horizon "
            f"{moved} from transaction {self.horizon_before} to {self.horizon} (a replica "
            f"whose cursor is older runs in full next)."
        )


def supported(connection):
    return connection.vendor == "postgresql"


def prune(connection, days, dry_run=False):
    """Prune the tombstones older than ``days`` days; return a Pruning. PostgreSQL only
    (there are no tombstones elsewhere). Run outside a transaction: the deletes commit
    batch by batch."""
    if days < 0:
        raise ValueError(f"days must be 0 or more, not {days}")
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(HORIZON_SQL, [days])
        before, found = cursor.fetchone()
        horizon = max(before, found or 0)
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM {TOMBSTONE_TABLE} WHERE xid < %s", [horizon])
            return Pruning(days, before, horizon, cursor.fetchone()[0], dry_run=True)
        cursor.execute(f"INSERT INTO {CLOCK_TABLE} (xid, at) SELECT {CURSOR_SQL}, now()")
        # The marks older than the one used are of no more use.
        cursor.execute(f"DELETE FROM {CLOCK_TABLE} WHERE xid < %s", [horizon])
    dropped = prune_tombstones(connection, horizon)
    result = Pruning(days, before, horizon, dropped)
    logger.info("%s", result.describe())
    return result
