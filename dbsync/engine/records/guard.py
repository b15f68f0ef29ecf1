"""The records guard: a series may not lose more than a share of its records in a run.

A series cleared at the remote, or replaced by a shorter one, loses records here. One
run may take from a series at most ``deletion_allowance(max_delete, the records it
held)`` (``DBSYNC_MAX_RECORDS_DELETE`` or ``--max-records-delete``: a count, a share or
"all"; no floor), unless an approval names the series and it is left with at least as
many records as listed. A series over it refuses the whole records sync (its one
transaction rolls back), naming every such series.

Checked twice: from the summary, before anything is fetched (a clear, a replace by a
known count), and as each series is loaded (what really came).
"""

from ..errors import DeleteGuardError
from ..guard import deletion_allowance
from .plan import APPEND, CLEAR, REPLACE
from .summary import NOT_LISTED

MAX_LISTED = 20


class RecordsGuard:
    def __init__(self, database, max_delete, approval=None):
        self.database = database
        self.max_delete = max_delete
        self.approval = approval
        self.refused = {}  # remote pk -> (local pk, held, left, allowed)

    def check_plan(self, jobs):
        """Before the fetch: the series the summary says would lose too much."""
        for job in jobs:
            if job.state is None or job.mode == APPEND:
                continue
            if job.mode == CLEAR or (job.mode == REPLACE and job.remote is not NOT_LISTED):
                self.check(job, job.state.count, job.remote.count)
        self.raise_if_refused()

    def check(self, job, held, left):
        """A series that held ``held`` records and would be left with ``left``."""
        lost = held - left
        if lost <= 0 or lost <= deletion_allowance(self.max_delete, held):
            return
        if self.approval is not None and self.approval.covers_series(job.remote_pk, left):
            self.approval.used_records = True
            return
        self.refused[job.remote_pk] = (job.local_pk, held, left)

    def raise_if_refused(self):
        if not self.refused:
            return
        lines = [
            f"hcore.timeseries(pk={pk}; here {local}): {held} -> {left} records"
            for pk, (local, held, left) in sorted(self.refused.items())
        ]
        more = len(lines) - MAX_LISTED
        lost = sum(held - left for _local, held, left in self.refused.values())
        raise DeleteGuardError(
            f"{self.database}: refused: the records sync would remove more records than "
            f"allowed (--max-records-delete / DBSYNC_MAX_RECORDS_DELETE={self.max_delete}, "
            f"of each series' records) from {len(lines)} time series: "
            f"{'; '.join(lines[:MAX_LISTED])}{f'; and {more} more' if more > 0 else ''} "
            f"({lost} records in all). No records were changed. If the remote really "
            f"removed them, run the command again with --max-records-delete=all, or approve "
            f'these deletions once in the admin ("Sync runs", select this run, action '
            f'"Approve these deletions once"): the next run may then remove these, and no '
            f"more.",
            deletions={
                "records": {str(pk): left for pk, (_l, _h, left) in self.refused.items()},
                "counts": {"hcore.timeseries": len(lines), "records": lost},
            },
        )
