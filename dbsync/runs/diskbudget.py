"""The disk budget of a Celery run, shared by its fetch tasks.

A run's fetch tasks run at once, in several worker processes or machines, so no one
of them can count the run's bytes in memory (``engine.diskbudget.DiskBudget`` does
for the command's threads). They count them in the run's row instead:
``SyncRun.disk_spent``, raised by an ``UPDATE`` whose condition keeps it within the
budget, which PostgreSQL checks again under the row's lock, so that two tasks
cannot both take the last bytes. A task reserves a block at a time, spends it as it
writes, and gives back what it did not write when it ends; the row then holds the
bytes the run's tasks have written (a task killed first leaves its reservation
counted: a run errs on the side of stopping).
"""

import logging

from django.db import DatabaseError
from django.db.models import F

from dbsync.engine.diskbudget import DiskBudget
from dbsync.models import SyncRun

logger = logging.getLogger(__name__)

# A reservation: a hundredth of the budget, between 64 KiB (a read's chunk) and 8 MiB,
# so that a task writes the run's row once a block, not once a read, and the blocks that
# other tasks hold unwritten stay small against the budget.
MIN_BLOCK, MAX_BLOCK = 1 << 16, 8 << 20


class RunDiskBudget(DiskBudget):
    """The budget of run ``run_id``, drawn from its row; use it as a context manager
    (on leaving, what was reserved and not written is given back)."""

    def __init__(self, run_id, limit=None):
        super().__init__(limit=limit)
        self.run_id = run_id
        self.block = min(max(self.limit // 100, MIN_BLOCK), MAX_BLOCK) if self.limit else MAX_BLOCK
        self.reserved = 0  # reserved in the row and not yet written

    def spend(self, size, what):
        with self.lock:
            if size > self.reserved:
                self.reserve(size - self.reserved, what)
            self.reserved -= size
            self.spent += size

    def reserve(self, needed, what):
        """Raise the run's count by a block (or by ``needed`` only, when a block would
        pass the budget); past the budget, raise DiskBudgetError."""
        runs = SyncRun.objects.filter(pk=self.run_id)
        for amount in dict.fromkeys((max(needed, self.block), needed)):
            within = runs.filter(disk_spent__lte=self.limit - amount) if self.limit else runs
            if within.update(disk_spent=F("disk_spent") + amount):
                self.reserved += amount
                return
        total = runs.values_list("disk_spent", flat=True).first() or 0
        self.over(total + needed, what, "this write would bring the run's fetch tasks to")

    def release(self):
        """Give back what was reserved and not written."""
        with self.lock:
            if self.reserved:
                SyncRun.objects.filter(pk=self.run_id).update(
                    disk_spent=F("disk_spent") - self.reserved
                )
                self.reserved = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            self.release()
        except DatabaseError as error:
            if exc is None:
                raise
            # The task's own error says more (the local database may be what failed).
            logger.warning(
                "Run %s: could not give back its unwritten bytes: %s", self.run_id, error
            )
