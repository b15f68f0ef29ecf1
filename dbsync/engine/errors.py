"""The fatal problems of a sync. Every one derives from :class:`SyncError`.

Per-object problems are not exceptions but entries in the run's result (see
``dbsync.engine.result``), unless the caller asked to halt on them, which is the default.
"""


class SyncError(Exception):
    """A sync could not be completed; the local database was left as it was."""


class PlanError(SyncError):
    """The requested set of models cannot be synced (unknown model, bad exclusion, cycle)."""


class RemoteError(SyncError):
    """The remote could not be reached, or answered with an error."""


class TransientRemoteError(RemoteError):
    """A remote error that may pass: a retry is worth it."""


class DeadlineExceeded(RemoteError):
    """A response did not come whole within the request deadline, or the run's deadline
    passed: not retried (a remote that slow would only use the run's time again)."""


class PayloadError(SyncError):
    """The remote's data is malformed, truncated, or of the wrong model."""


class LocalDatabaseLost(SyncError):
    """The connection to the local database was lost (its transaction with it)."""


class DiskBudgetError(SyncError):
    """The run wrote more than its disk budget (DBSYNC_RUN_DISK_BUDGET)."""


class SchemaMismatch(SyncError):
    """The remote's schema differs from the local one."""


class ObjectError(SyncError):
    """An object could not be installed (and the run was told to halt on errors)."""


class DanglingReferences(ObjectError):
    """Objects refer to objects the remote did not send, even when asked again: bad
    data, or the remote changed during the fetch (a fresh fetch tells which)."""


class InconsistentRemote(PayloadError):
    """The remote's key listing lacks objects that the rest of its data still refers
    to (a cut or wrong listing): a contradiction, not a deletion."""


class TombstonesPruned(InconsistentRemote):
    """The remote pruned the tombstones this run's cursor needs while it fetched the
    deletions: the listing of what was deleted may be cut. A fetch again runs in full."""


class MissingObjects(SyncError):
    """The install found references to objects the dumps lack: its transaction rolls
    back, and its caller fetches them (``missing``: model label -> remote pks) and
    installs again; it never asks the remote from inside the transaction."""

    def __init__(self, database, missing):
        count = sum(len(pks) for pks in missing.values())
        super().__init__(f"{database}: {count} object(s) referenced but not sent")
        self.missing = missing


class DeleteGuardError(SyncError):
    """The run would delete more than allowed: replicated objects (with what cascades
    from them) or records. ``deletions`` is what it would have removed, as JSON
    (``{"objects": {root label: [remote pks]}, "records": {series remote pk: records
    left}, "counts": {...}}``), kept with the run so that an operator may approve it
    once."""

    def __init__(self, message, deletions=None):
        super().__init__(message)
        self.deletions = deletions or {}


class AlreadyRunning(SyncError):
    """Another sync of the same remote is in progress."""


class RemoteRemoved(SyncError):
    """The remote was offboarded (``dbsync_removeremote``): it is never synced again."""


class RemoteIdentityChanged(SyncError):
    """The remote's database is not the one synced before (rebuilt, restored into a new
    cluster or database): its keys and transaction ids mean something else now."""


class RemoteBehind(SyncError):
    """The remote's snapshot is behind this replica's cursor: restored from a backup or
    recovered to an earlier point, it may reuse transaction ids already seen."""
