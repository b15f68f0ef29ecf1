"""The progress of a sync: its messages, and the counts of its long steps.

Every step takes ``log(message, level)``: the command passes one that writes to its
stdout by verbosity (1 summary, 2 per model, 3 per object or series), the Celery tasks
one that writes the worker's log. ``quiet``, the default, keeps them at DEBUG.

A ``log`` may also be a ``Progress``, which hears besides how far each long step has
gone (``begin``, ``advance``, ``end``): the command draws bars from it, a run writes it
on its record for the admin. A plain function hears the messages only; ``steps(log)``
gives the engine something to tell the steps to either way. Nothing here draws or
writes: the engine only counts.
"""

import logging

logger = logging.getLogger(__name__)

# The long steps, each counted in its own unit (and, in ``amounts``, what it moves).
FETCH = "fetch"  # dumps (bytes)
OBJECTS = "objects"  # models (objects installed)
RECORDS_FETCH = "records-fetch"  # time series (records), fetched to disk
RECORDS = "records"  # time series (records), installed
FILES = "files"  # files (bytes)
UNITS = {
    FETCH: "dumps",
    OBJECTS: "models",
    RECORDS_FETCH: "series",
    RECORDS: "series",
    FILES: "files",
}


class Progress:
    """Says nothing: messages at DEBUG, steps ignored. Subclasses override what they
    show. ``advance`` may be called from several threads (the fetch's)."""

    def __call__(self, message, level=1):
        logger.debug("%s", message)

    def begin(self, step, total):
        """``step`` starts, with ``total`` units to do (None: not known)."""

    def advance(self, step, n=1, **amounts):
        """``n`` more units of ``step`` done, moving ``amounts`` (e.g. ``bytes=``)."""

    def end(self, step):
        """``step`` has finished (or stopped)."""


quiet = Progress()


def steps(log):
    """What to tell the steps to: ``log`` if it is a Progress, else one that ignores them."""
    return log if isinstance(log, Progress) else quiet


class Forward(Progress):
    """A Progress that passes everything on to ``log`` (a Progress or a plain function):
    the base of one that also does something of its own."""

    def __init__(self, log=quiet):
        self.log = log
        self.next = steps(log)

    def __call__(self, message, level=1):
        self.log(message, level)

    def begin(self, step, total):
        self.next.begin(step, total)

    def advance(self, step, n=1, **amounts):
        self.next.advance(step, n, **amounts)

    def end(self, step):
        self.next.end(step)
