"""The disk budget of a run: the bytes it may write into its folders.

Every byte a run downloads (dumps, keys listings, the records summary and batches,
files) is counted as it is written, by the remote's client and its clones (one per
thread) through one shared, thread-safe ``DiskBudget``. Past DBSYNC_RUN_DISK_BUDGET
the download stops with a DiskBudgetError: a remote that sends far more than
expected cannot fill the disk of a machine nobody is watching. The count is of bytes
written, not of bytes present: what a run writes and then removes still counts.
A Celery run's fetch tasks, in processes of their own, share theirs through the
run's row (``dbsync.runs.diskbudget``).
"""

import threading

from django.conf import settings

from .errors import DiskBudgetError


class DiskBudget:
    def __init__(self, limit=None, spent=0):
        self.limit = settings.DBSYNC_RUN_DISK_BUDGET if limit is None else limit
        self.spent = spent
        self.lock = threading.Lock()

    def spend(self, size, what):
        """Count ``size`` more bytes written for ``what``; raise past the budget."""
        with self.lock:
            self.spent += size
            spent = self.spent
        if self.limit and spent > self.limit:
            self.over(spent, what)

    def over(self, spent, what, whose="the run has written"):
        raise DiskBudgetError(
            f"{what}: {whose} {spent} bytes, over its disk budget of "
            f"{self.limit} bytes (DBSYNC_RUN_DISK_BUDGET); stopped. Raise the budget if "
            f"the remote really is this large."
        )
