"""At most DBSYNC_MAX_REQUESTS_PER_REMOTE requests in flight to one remote, counted
across every thread and every process of the aggregator (commands, Celery workers).

A request holds one of the remote's N slots from before it is sent until its response
is closed (``request_slot``). Where the slots live:

- PostgreSQL: a slot is a session advisory lock, ``(SLOT_NAMESPACE + slot, remote
  pk)``, so every process on every host that shares the database sees it, and the
  server frees it when the holder's session ends (a process killed with ``kill -9``
  frees its slots at once; there is no expiry to tune). The locks are taken on one
  connection per process of their own, in autocommit, never on a thread's Django
  connection: the install holds that one in a long transaction, and a slot must not
  live or die with it. Session advisory locks stack within a session, so the process
  keeps the list of the slots it holds and asks the server only for the others.
- SQLite (the embedded default: one process): a slot is counted in this process only.

A request that finds every slot taken waits (polling the server with a short backoff;
a slot freed in this process wakes it at once) for at most
DBSYNC_REQUEST_SLOT_WAIT_SECONDS, then fails with SlotTimeout. A limit of 0 or less
means no limit.
"""

import atexit
import logging
import os
import random
import threading
import time
import zlib
from contextlib import contextmanager

from django.conf import settings
from django.db import connections

from .errors import RemoteError

logger = logging.getLogger(__name__)

# The first key of a slot's advisory lock is SLOT_NAMESPACE + slot; its low 16 bits are
# zero, so slots 0..MAX_SLOTS-1 stay apart from other keys of this database (the sync
# lock of dbsync.locking uses the pair (LOCK_NAMESPACE, remote pk)).
SLOT_NAMESPACE = zlib.crc32(b"dbsync.request-slot") & 0x7FFF0000
MAX_SLOTS = 0xFFFF
FIRST_POLL = 0.005  # seconds; doubled up to LAST_POLL while the slots are held elsewhere
LAST_POLL = 0.1


class SlotTimeout(RemoteError):
    """Every request slot of the remote stayed taken for the whole wait."""


def limit():
    """The slots per remote, or None for no limit."""
    n = settings.DBSYNC_MAX_REQUESTS_PER_REMOTE
    if n <= 0:
        return None
    if n > MAX_SLOTS:
        raise RemoteError(
            f"DBSYNC_MAX_REQUESTS_PER_REMOTE={n} is over the most this aggregator can "
            f"count ({MAX_SLOTS}); set it lower, or to 0 for no limit."
        )
    return n


@contextmanager
def request_slot(database):
    """Hold one of the request slots of ``database`` (a dbsync Database) for the block."""
    n = limit()
    if n is None:
        yield None
        return
    key = remote_key(database)
    wait = settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS
    slot = _state.acquire(key, n, wait, database)
    try:
        yield slot
    finally:
        _state.release(key, slot)


def remote_key(database):
    """The second key of the remote's locks: its pk; for a remote not saved yet (none
    is fetched from, but a check of its address may be), a negative number from its
    address, apart from every pk."""
    if database.pk is not None:
        return int(database.pk)
    address = f"{database.hostname}|{database.ip_address}|{database.port}".encode()
    return -(zlib.crc32(address) & 0x7FFFFFFF) - 1


def close():
    """Close this process's slot connection (its slots must be released already): e.g.
    before the database is dropped, which an open session would prevent."""
    if _state.backend is not None:
        _state.backend.close()


# --- where the slots live ---------------------------------------------------------------------


class _LocalSlots:
    """One process: the slots this process holds are all there is."""

    def take(self, key, free):
        return free[0]

    def give_back(self, key, slot):
        pass

    def close(self):
        pass


class _PostgresSlots:
    """Session advisory locks on this process's own connection (see the module's doc)."""

    def __init__(self):
        self.conn = None
        self.mutex = threading.Lock()  # one statement at a time on the shared connection

    def _connection(self):
        if self.conn is None or self.conn.closed:
            import psycopg

            params = connections["default"].get_connection_params()
            # Django's cursor class and type adapters are for its own use: plain psycopg.
            params.pop("cursor_factory", None)
            params.pop("context", None)
            params.setdefault("connect_timeout", 10)
            params.setdefault("application_name", "dbsync request slots")
            self.conn = psycopg.connect(**params, autocommit=True)
        return self.conn

    def _execute(self, sql, params):
        with self.mutex:
            try:
                return self._connection().execute(sql, params).fetchone()[0]
            except Exception:
                # A broken session has lost its locks anyway; the next call reconnects.
                self._drop()
                raise

    def take(self, key, free):
        """Try the free slots in turn, in one round trip: CASE stops at the first lock
        it gets (unlike a WHERE over a set, which may try more than it returns)."""
        cases = " ".join(
            "WHEN pg_try_advisory_lock(%s::int4, %s::int4) THEN %s::int4" for _ in free
        )
        params = [value for slot in free for value in (SLOT_NAMESPACE + slot, key, slot)]
        return self._execute(f"SELECT CASE {cases} ELSE NULL END", params)

    def give_back(self, key, slot):
        try:
            self._execute(
                "SELECT pg_advisory_unlock(%s::int4, %s::int4)", [SLOT_NAMESPACE + slot, key]
            )
        except Exception as exc:  # noqa: BLE001 - the session, and its locks, are gone
            logger.warning("Request slot %s of remote %s: unlock failed (%s)", slot, key, exc)

    def _drop(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection
                pass

    def close(self):
        with self.mutex:
            self._drop()


class _State:
    """The slots this process holds, and the backend that shares them with the others."""

    def __init__(self):
        self.cond = threading.Condition()
        self.held = {}  # remote key -> set of slots held by this process
        self.backend = None

    def _backend(self):
        if self.backend is None:
            vendor = connections["default"].vendor
            self.backend = _PostgresSlots() if vendor == "postgresql" else _LocalSlots()
        return self.backend

    def acquire(self, key, n, wait, database):
        deadline = time.monotonic() + wait
        poll = FIRST_POLL
        with self.cond:
            backend = self._backend()
            while True:
                held = self.held.setdefault(key, set())
                free = [slot for slot in range(n) if slot not in held]
                pause = None  # all N held here: a release in this process wakes us
                if free:
                    slot = backend.take(key, free)
                    if slot is not None:
                        held.add(slot)
                        return slot
                    # Held by other processes: ask again soon, a little later each time,
                    # jittered so that waiting processes do not ask in step.
                    pause = poll * random.uniform(0.5, 1.0)
                    poll = min(poll * 2, LAST_POLL)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SlotTimeout(
                        f"{database}: all {n} request slots of this remote stayed taken for "
                        f"{wait:g} s (DBSYNC_MAX_REQUESTS_PER_REMOTE={n}, "
                        f"DBSYNC_REQUEST_SLOT_WAIT_SECONDS={wait:g}): other requests to it (of "
                        f"this sync or others) are still in flight. Raise the wait, or sync "
                        f"it less at once (fewer runs, threads or workers)."
                    )
                self.cond.wait(remaining if pause is None else min(pause, remaining))

    def release(self, key, slot):
        with self.cond:
            try:
                self._backend().give_back(key, slot)
            finally:
                self.held.get(key, set()).discard(slot)
                self.cond.notify_all()


_state = _State()
_inherited = []


def _after_fork():
    """A forked child (a Celery worker) starts with no slots and no connection: its
    parent's session and locks are its parent's. The parent's connection object is
    kept, unused and unclosed, so that its cleanup never touches that session."""
    global _state
    if isinstance(_state.backend, _PostgresSlots) and _state.backend.conn is not None:
        _inherited.append(_state.backend.conn)
    _state = _State()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(close)
