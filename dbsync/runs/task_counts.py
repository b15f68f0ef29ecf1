"""Each Celery task's executions, counted by outcome with their runtime, in the database.

Gunicorn and the workers run many processes on perhaps many hosts, so the counts are
not kept in memory (that would need prometheus_client's multiprocess mode): each
worker process adds one execution to its task's row (``TaskCount``) as it ends, with
one UPDATE ``count = count + 1, seconds = seconds + runtime`` (atomic, whatever the
processes), and ``/-/metrics`` reads the rows at each scrape (``runs.metrics``).

``task_prerun`` notes when an execution starts; ``task_postrun``, which Celery sends
after every execution with its state (SUCCESS, FAILURE, RETRY), counts it. A count
that cannot be written (the database is down) is logged, never fails the task.
"""

import logging
import threading
import time

from celery import states
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F

from dbsync.models import TaskCount

logger = logging.getLogger(__name__)

OUTCOMES = {
    states.SUCCESS: TaskCount.SUCCEEDED,
    states.FAILURE: TaskCount.FAILED,
    states.RETRY: TaskCount.RETRIED,
}

_started = {}  # task id -> time.monotonic() at its start, in this process
_lock = threading.Lock()  # a threads pool runs several tasks in one process


def add(task, outcome, seconds):
    """One more execution of ``task`` that ended with ``outcome`` after ``seconds``."""
    rows = TaskCount.objects.filter(task=task, outcome=outcome)
    more = {"count": F("count") + 1, "seconds": F("seconds") + seconds}
    if rows.update(**more):
        return
    try:
        with transaction.atomic():  # a savepoint: the conflict leaves the update below free
            TaskCount.objects.create(task=task, outcome=outcome, count=1, seconds=seconds)
    except IntegrityError:  # another process created the row first
        rows.update(**more)


def on_prerun(task_id=None, **kwargs):
    with _lock:
        _started[task_id] = time.monotonic()


def on_postrun(task_id=None, task=None, state=None, **kwargs):
    with _lock:
        started = _started.pop(task_id, None)
    outcome = OUTCOMES.get(state)
    if outcome is None or task is None:
        return  # Ignore or Reject: the task said it was no execution of its own
    seconds = max(0.0, time.monotonic() - started) if started is not None else 0.0
    try:
        # its own savepoint: an eager task's caller may have a transaction open, which a
        # failed count must not break
        with transaction.atomic():
            add(task.name, outcome, seconds)
    except DatabaseError as exc:
        logger.warning("Could not count the %s task %s: %s", outcome, task.name, exc)
