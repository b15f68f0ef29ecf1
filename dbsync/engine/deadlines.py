"""The deadlines that bound a sync in time, longest last (``dbsync.checks`` keeps them
in this order):

- ``DBSYNC_HTTP_TIMEOUT``: one read of a response (the client's socket timeout);
- ``DBSYNC_REQUEST_DEADLINE``: one whole response, from the request to its last byte;
- ``DBSYNC_RUN_DEADLINE``: a whole run, from its start (``RunDeadline``);
- the Celery soft time limit: one task of the Celery pipeline.

A remote that sends a byte now and then keeps every read within the read timeout, so
only the two deadlines end it. ``RemoteClient`` (``dbsync.engine.remote``) enforces
both while a response streams; the sync checks the run's before each transaction.
"""

import time
from dataclasses import dataclass

from django.conf import settings

from .errors import DeadlineExceeded


@dataclass(frozen=True)
class RunDeadline:
    """When a run must end: ``expires`` on the wall clock (``time.time()``), so that
    the Celery tasks of one run, in several processes, share it."""

    expires: float
    seconds: float

    @classmethod
    def since(cls, started=None, seconds=None):
        """The deadline of a run started at ``started`` (an aware datetime; default
        now), ``seconds`` long (default DBSYNC_RUN_DEADLINE)."""
        seconds = settings.DBSYNC_RUN_DEADLINE if seconds is None else seconds
        begin = time.time() if started is None else started.timestamp()
        return cls(begin + seconds, seconds)

    def remaining(self):
        return self.expires - time.time()

    def describe(self):
        return f"the run's deadline (DBSYNC_RUN_DEADLINE={self.seconds:g} s)"

    def check(self, what):
        """Raise DeadlineExceeded, naming ``what`` was to be done, once it has passed."""
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"{what}: {self.describe()} has passed")
