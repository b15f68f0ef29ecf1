"""The client's side of change capture: from a remote's manifest, how this run asks
for changes (``api.changes`` serves them; ``hcore.capture`` records them).

A remote of protocol 2 on PostgreSQL gives, in its manifest's ``capture`` section,
the xmin of the snapshot the manifest was read in (the **cursor**), the oldest
cursor its tombstones still cover (the **horizon**) and its **identity** (the
cluster's system identifier, timeline, database name and oid). The replica keeps
the cursor and the identity (``Database.capture_cursor``, ``remote_identity``) with
the objects it installs, in their transaction; the next run asks for the rows and
tombstones written by that transaction id or later, of the models whose change
counter moved since, and for nothing else.

Everything else (a remote of protocol 1, a SQLite remote, the first run after an
upgrade, ``--full``) is the timestamp cursor of before: ``last_modified`` after the
remote's clock at the last run, less DBSYNC_OVERLAP_SECONDS.
"""

from dataclasses import dataclass

from .errors import PayloadError, RemoteBehind, RemoteIdentityChanged

GUARANTEE_SNAPSHOT = "snapshot"
IDENTITY_KEYS = ("system_identifier", "timeline", "database", "database_oid")


@dataclass
class Capture:
    """A remote's capture section, checked."""

    cursor: int
    horizon: int
    identity: dict

    def as_json(self):
        return {"cursor": self.cursor, "horizon": self.horizon, "identity": self.identity}


def read_capture(manifest, remote):
    """The manifest's capture section, or None (a remote that gives the clock only)."""
    section = manifest.get("capture")
    if not isinstance(manifest.get("protocol"), int) or manifest["protocol"] < 2:
        return None
    if not isinstance(section, dict) or section.get("guarantee") != GUARANTEE_SNAPSHOT:
        return None
    cursor, horizon, identity = (
        section.get("cursor"),
        section.get("horizon"),
        section.get("identity"),
    )
    if (
        not _transaction(cursor)
        or not _transaction(horizon)
        or not isinstance(identity, dict)
        or any(not isinstance(identity.get(k), str | int) for k in IDENTITY_KEYS)
    ):
        raise PayloadError(f"{remote}: the manifest's capture section is malformed: {section!r}")
    return Capture(cursor, horizon, {k: identity[k] for k in IDENTITY_KEYS})


def _transaction(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def describe_identity(identity):
    return (
        f"cluster {identity['system_identifier']}, timeline {identity['timeline']}, "
        f"database {identity['database']} (oid {identity['database_oid']})"
    )


def check_identity(database, capture, accept_new=False):
    """Refuse a remote that is not the one synced before, or that went back in time."""
    stored = database.remote_identity
    if stored and stored != capture.identity and not accept_new:
        raise RemoteIdentityChanged(
            f"{database}: the remote's database is not the one synced before: it was "
            f"{describe_identity(stored)}, it is now {describe_identity(capture.identity)} "
            f"(rebuilt, restored elsewhere, or another server behind the same address). "
            f"Nothing was changed. If it really replaces the old one, run again with "
            f"--accept-new-identity: this remote's old objects are then deleted, under "
            f"the delete guard, and it is synced anew."
        )
    cursor = database.capture_cursor
    if stored == capture.identity and cursor is not None and capture.cursor < cursor:
        raise RemoteBehind(
            f"{database}: the remote's snapshot (transaction {capture.cursor}) is behind "
            f"what this replica has seen (transaction {cursor}): it was restored from a "
            f"backup or recovered to an earlier point, and may reuse transaction ids. "
            f"Nothing was changed. Check the remote; a --full run syncs it as it is now."
        )


def changed_since(database, capture, full):
    """The transaction id this run asks changes from, or None (a full or clock run)."""
    if full or capture is None or database.capture_cursor is None:
        return None
    if database.remote_identity != capture.identity:
        return None
    if behind_horizon(database, capture):
        return None  # its tombstones were pruned past our cursor: a full run
    return database.capture_cursor


def behind_horizon(database, capture):
    """Whether the remote pruned the tombstones our cursor needs (its horizon passed
    it): then neither the capture nor the clock can say what changed (an ``update()``
    at the remote leaves ``last_modified`` alone), and only a full run is sure."""
    return (
        capture is not None
        and database.capture_cursor is not None
        and database.remote_identity == capture.identity
        and database.capture_cursor < capture.horizon
    )


def model_changed(entry, since, figure="changed"):
    """Whether a model's manifest entry says its table was written (``figure``
    "changed") or deleted from ("deleted") at or after ``since`` (an entry without the
    figure: asked for, to be safe)."""
    changed = entry.get(figure)
    return not _transaction(changed) or changed >= since


class AllBut:
    """The keys a remote still has, given those it deleted (its tombstones): every key
    but those. Stands for a keys listing where the install asks ``key in listing``."""

    def __init__(self, gone):
        self.gone = gone  # a KeySet

    def __contains__(self, key):
        return key not in self.gone
