"""At most DBSYNC_MAX_REQUESTS_PER_REMOTE requests in flight to one remote, counted
across every thread and every process of the aggregator (commands, Celery workers).

A request holds one of the remote's N slots from before it is sent until its response
is closed (``request_slot``). Where the slots live:

- PostgreSQL: a slot is a session advisory lock, ``(SLOT_NAMESPACE + slot, remote
  pk)``, so every process on every host that shares the database sees it, and the
  server frees it when the holder's session ends (a process killed with ``kill -9``
  frees its slots at once; there is no expiry to tune). The locks are taken on
  connections of their own, in autocommit, never on a thread's Django connection: the
  install holds that one in a long transaction, and a slot must not live or die with
  it. A holder keeps its connection until it gives the slot back; idle ones are kept
  in a small pool of the process.
- SQLite (the embedded default: one process): a slot is counted in this process only.

Slots go in the order they were asked for, across processes too: a process whose
threads ask again and again must not keep the slots from another process's requests
(which would wait until they fail). On PostgreSQL, a request first queues for the
remote's *gate*, a transaction-level advisory lock that the server grants in order;
the gate's holder takes the first free slot (asking again every few milliseconds while
all are taken) and lets the gate go. In the process, a freed slot is handed to the
thread that waited longest.

A request waits at most DBSYNC_REQUEST_SLOT_WAIT_SECONDS for its slot, then fails with
SlotTimeout; and never past its run's deadline (``deadlines.RunDeadline``), when it has
one: then it fails with DeadlineExceeded, naming that deadline. A limit of 0 or less
means no limit.
"""

import atexit
import logging
import os
import threading
import time
import zlib
from collections import deque
from contextlib import contextmanager

from django.conf import settings
from django.db import connections

from .errors import DeadlineExceeded, RemoteError

logger = logging.getLogger(__name__)

# The first key of a slot's advisory lock is SLOT_NAMESPACE + slot, and of the remote's
# gate SLOT_NAMESPACE + MAX_SLOTS. The low 16 bits of SLOT_NAMESPACE are zero: these keys
# stay apart from the others of this database (the sync lock of dbsync.runs.locking is the
# pair (LOCK_NAMESPACE, remote pk)).
SLOT_NAMESPACE = zlib.crc32(b"dbsync.request-slot") & 0x7FFF0000
MAX_SLOTS = 0xFFFF
GATE = SLOT_NAMESPACE + MAX_SLOTS
FIRST_POLL = 0.002  # seconds; doubled up to LAST_POLL while every slot is taken
LAST_POLL = 0.025
IDLE_CONNECTIONS = 8  # kept open per process for the next requests


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
def request_slot(database, run_deadline=None):
    """Hold one of the request slots of ``database`` (a dbsync Database) for the block,
    waiting for it until DBSYNC_REQUEST_SLOT_WAIT_SECONDS or ``run_deadline`` (a
    ``deadlines.RunDeadline``), whichever comes first."""
    n = limit()
    if n is None:
        yield None
        return
    key = remote_key(database)
    wait = settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS
    run_left = None if run_deadline is None else run_deadline.remaining()
    if run_left is not None and run_left <= 0:
        raise DeadlineExceeded(
            f"{database}: waiting for a request slot: {run_deadline.describe()} has passed"
        )
    bounded_by_run = run_left is not None and run_left < wait
    backend = _backend()
    try:
        held = backend.acquire(key, n, time.monotonic() + (run_left if bounded_by_run else wait))
    except _Waited:
        if bounded_by_run:
            raise DeadlineExceeded(
                f"{database}: all {n} request slots of this remote stayed taken until "
                f"{run_deadline.describe()} (DBSYNC_MAX_REQUESTS_PER_REMOTE={n}): other "
                f"requests to it (of this sync or others) are still in flight."
            ) from None
        raise SlotTimeout(
            f"{database}: all {n} request slots of this remote stayed taken for {wait:g} s "
            f"(DBSYNC_MAX_REQUESTS_PER_REMOTE={n}, DBSYNC_REQUEST_SLOT_WAIT_SECONDS="
            f"{wait:g}): other requests to it (of this sync or others) are still in "
            f"flight. Raise the wait, or sync it less at once (fewer runs, threads or "
            f"workers)."
        ) from None
    try:
        yield held
    finally:
        backend.release(key, n, held)


def remote_key(database):
    """The second key of the remote's locks: its pk; for a remote not saved yet (none
    is fetched from, but a check of its address may be), a negative number from its
    address, apart from every pk."""
    if database.pk is not None:
        return int(database.pk)
    address = f"{database.hostname}|{database.ip_address}|{database.port}".encode()
    return -(zlib.crc32(address) & 0x7FFFFFFF) - 1


def close():
    """Close this process's idle slot connections: e.g. before the database is dropped,
    which an open session would prevent."""
    if _state["backend"] is not None:
        _state["backend"].close()


class _Waited(Exception):
    """The deadline passed without a slot."""


# --- PostgreSQL -------------------------------------------------------------------------------


class _PostgresSlots:
    def __init__(self):
        self.idle = []
        self.mutex = threading.Lock()

    def _connect(self):
        import psycopg

        params = connections["default"].get_connection_params()
        # Django's cursor class and type adapters are for its own use: plain psycopg.
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "dbsync request slots")
        return psycopg.connect(**params, autocommit=True)

    def _checkout(self):
        with self.mutex:
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    return conn
        return self._connect()

    def _checkin(self, conn):
        from psycopg.pq import TransactionStatus

        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            with self.mutex:
                if len(self.idle) < IDLE_CONNECTIONS:
                    self.idle.append(conn)
                    return
        conn.close()

    def acquire(self, key, n, deadline):
        """(connection, slot): the connection holds the slot's lock until released."""
        import psycopg

        conn = self._checkout()
        try:
            slot = self._take(conn, key, n, deadline)
        except psycopg.errors.LockNotAvailable:
            conn.execute("ROLLBACK")
            self._checkin(conn)
            raise _Waited from None
        except _Waited:
            conn.execute("ROLLBACK")
            self._checkin(conn)
            raise
        except BaseException:
            conn.close()  # a session in an unknown state: its locks go with it
            raise
        return conn, slot

    def _take(self, conn, key, n, deadline):
        # The first free slot, in one round trip: CASE stops at the first lock it gets
        # (unlike a WHERE over a set, which may try more than it returns).
        cases = " ".join(
            "WHEN pg_try_advisory_lock(%s::int4, %s::int4) THEN %s::int4" for _ in range(n)
        )
        try_slots = f"SELECT CASE {cases} ELSE NULL END"
        params = [value for slot in range(n) for value in (SLOT_NAMESPACE + slot, key, slot)]
        milliseconds = max(1, int((deadline - time.monotonic()) * 1000))  # 0: no timeout
        # Queue for the gate (granted in order; freed by the COMMIT or ROLLBACK), then
        # try the slots: one round trip.
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{milliseconds}ms"])
            conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", [GATE, key])
            cursor = conn.execute(try_slots, params)
        slot = cursor.fetchone()[0]
        poll = FIRST_POLL
        while slot is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Waited
            time.sleep(min(poll, remaining))
            poll = min(poll * 2, LAST_POLL)
            slot = conn.execute(try_slots, params).fetchone()[0]
        conn.execute("COMMIT")  # lets the gate go; the slot's lock is the session's
        return slot

    def release(self, key, n, held):
        conn, slot = held
        try:
            conn.execute(
                "SELECT pg_advisory_unlock(%s::int4, %s::int4)", [SLOT_NAMESPACE + slot, key]
            )
        except Exception as exc:  # noqa: BLE001 - the session, and its lock, are gone
            logger.warning("Request slot %s of remote %s: unlock failed (%s)", slot, key, exc)
            conn.close()
            return
        self._checkin(conn)

    def close(self):
        with self.mutex:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


# --- one process ------------------------------------------------------------------------------


class _LocalSlots:
    """Counted in this process; a freed slot goes to the thread that waited longest."""

    def __init__(self):
        self.mutex = threading.Lock()
        self.free = {}  # (key, n) -> slots free
        self.waiting = {}  # (key, n) -> deque of waiters, longest first

    def acquire(self, key, n, deadline):
        with self.mutex:
            free = self.free.setdefault((key, n), n)
            queue = self.waiting.setdefault((key, n), deque())
            if free and not queue:
                self.free[(key, n)] = free - 1
                return None
            waiter = threading.Event()
            queue.append(waiter)
        if waiter.wait(max(0.0, deadline - time.monotonic())):
            return None
        with self.mutex:
            if waiter.is_set():  # handed a slot as the wait ended
                return None
            queue.remove(waiter)
        raise _Waited

    def release(self, key, n, held):
        with self.mutex:
            queue = self.waiting.get((key, n))
            if queue:
                queue.popleft().set()  # the slot passes to it directly
            else:
                self.free[(key, n)] += 1

    def close(self):
        pass


_state = {"backend": None}
_backend_lock = threading.Lock()
_inherited = []


def _backend():
    with _backend_lock:
        if _state["backend"] is None:
            vendor = connections["default"].vendor
            _state["backend"] = _PostgresSlots() if vendor == "postgresql" else _LocalSlots()
        return _state["backend"]


def _after_fork():
    """A forked child (a Celery worker) starts with no slots and no connections: its
    parent's sessions and locks are its parent's. The parent's connection objects are
    kept, unused and unclosed, so that their cleanup never touches those sessions."""
    global _backend_lock
    backend = _state["backend"]
    if isinstance(backend, _PostgresSlots):
        _inherited.extend(backend.idle)
    _state["backend"] = None
    _backend_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(close)
