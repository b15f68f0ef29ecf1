"""A running run's phase and counts on its record, for the admin to show as they grow.

The engine counts its long steps (``dbsync.engine.progress``); ``recording`` passes
them on to the caller's ``log`` and, from a thread of its own, writes the latest as
one line in ``SyncRun.progress`` (and touches the heartbeat) at most once every
``DBSYNC_PROGRESS_SECONDS``, and at least every ``DBSYNC_HEARTBEAT_SECONDS``. The
thread has its own database connection, in autocommit: the objects' install is one
long transaction on the caller's connection, and what that transaction writes no
other session sees before its COMMIT. A write that fails is logged and the next one
tried: the progress line is never worth failing a run for. On SQLite (the embedded
default) nothing is written while the run works: a second connection's write would
wait on the install's lock of the whole file, and could hold up its COMMIT.
"""

import logging
import threading
import time
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from dbsync.engine.progress import FETCH, FILES, OBJECTS, RECORDS, RECORDS_FETCH, UNITS, Forward
from dbsync.models import SyncRun

logger = logging.getLogger(__name__)

PHASES = {
    FETCH: "fetching",
    OBJECTS: "installing objects",
    RECORDS_FETCH: "fetching records",
    RECORDS: "installing records",
    FILES: "fetching files",
}
MAX_LENGTH = SyncRun._meta.get_field("progress").max_length


def size_text(n):
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns at GB


def describe(step, done, total, amounts):
    """One line: ``installing records: 12 of 40 series, 48,000 records``."""
    counted = f"{done} of {total}" if total is not None else f"{done}"
    parts = [f"{PHASES.get(step, step)}: {counted} {UNITS.get(step, '')}".rstrip()]
    for name, value in amounts.items():
        parts.append(size_text(value) if name == "bytes" else f"{value:,} {name}")
    return ", ".join(parts)[:MAX_LENGTH]


class RunProgress(Forward):
    """The steps' counts of one run, kept in memory (the writer thread reads them)."""

    def __init__(self, run_id, log):
        super().__init__(log)
        self.run_id = run_id
        self.lock = threading.Lock()
        self.line = None  # nothing counted yet: the run's line is left as it is
        self.step = None
        self.done, self.total, self.amounts = 0, None, {}

    def begin(self, step, total):
        with self.lock:
            self.step, self.done, self.total, self.amounts = step, 0, total, {}
            self.line = describe(step, 0, total, {})
        super().begin(step, total)

    def advance(self, step, n=1, **amounts):
        with self.lock:
            if step == self.step:
                self.done += n
                for name, value in amounts.items():
                    self.amounts[name] = self.amounts.get(name, 0) + value
                self.line = describe(step, self.done, self.total, self.amounts)
        super().advance(step, n, **amounts)

    def current(self):
        with self.lock:
            return self.line


def write(run_id, line):
    """The line (None: only the heartbeat) on the run's record, if the run is still
    active (one UPDATE)."""
    fields = {"heartbeat": timezone.now()}
    if line is not None:
        fields["progress"] = line
    SyncRun.objects.filter(pk=run_id, status__in=SyncRun.ACTIVE).update(**fields)


@contextmanager
def recording(run_id, log, every=None):
    """A RunProgress for the block, whose line a thread writes on the run as it changes."""
    every = every or settings.DBSYNC_PROGRESS_SECONDS
    heartbeat = settings.DBSYNC_HEARTBEAT_SECONDS
    progress = RunProgress(run_id, log)
    if connection.vendor != "postgresql":
        yield progress
        return
    stop = threading.Event()

    def writer():
        written, beaten = object(), time.monotonic()
        try:
            while not stop.wait(every):
                line = progress.current()
                # an unchanged line is written again as a heartbeat (a long step)
                if line == written and time.monotonic() - beaten < heartbeat:
                    continue
                try:
                    write(run_id, line)
                    written, beaten = line, time.monotonic()
                except DatabaseError as exc:
                    logger.warning("Could not record the progress of run %s: %s", run_id, exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=writer, name=f"progress-run-{run_id}", daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
