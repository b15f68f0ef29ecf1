"""Each remote's schedule as a django-celery-beat PeriodicTask, kept in step.

Saving a remote creates or updates its periodic task (``dbsync.tasks.sync_remote``
with the remote's id, trigger "beat"); an inactive or unscheduled remote's task is
disabled; deleting the remote deletes it. Its verification (``dbsync.tasks.verify_remote``,
every ``Database.verify_every_days`` days, weekly by default) is a second task, kept the
same way. ``celery -A project beat -S django``
runs them.
"""

import json
import logging

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

logger = logging.getLogger(__name__)

TASK = "dbsync.tasks.sync_remote"
VERIFY_TASK = "dbsync.tasks.verify_remote"
# Saving only other fields (e.g. the cursor, at the end of every sync) leaves the
# periodic task alone.
SCHEDULE_FIELDS = frozenset(
    {
        "name",
        "hostname",
        "is_active",
        "schedule_kind",
        "interval_minutes",
        "crontab",
        "verify_every_days",
    }
)


def task_name(database):
    # Named by pk, so that renaming the remote keeps its task (and its last run).
    return f"dbsync: sync remote #{database.pk}"


def periodic_task_of(database):
    return PeriodicTask.objects.filter(name=task_name(database)).first()


def sync_schedule(database):
    """Create, update or disable the periodic task of ``database``; return it (or None)."""
    task = periodic_task_of(database)
    if not database.is_scheduled:
        if task is not None and task.enabled:
            task.enabled = False
            task.save()
            logger.info("Disabled the schedule of %s", database)
        return task
    with transaction.atomic():
        wanted = {
            "task": TASK,
            "args": json.dumps([database.pk]),
            "kwargs": json.dumps({"trigger": "beat"}),
            "description": f"Sync the remote {database.name} ({database.hostname})",
            "enabled": True,
            "interval": None,
            "crontab": None,
            "solar": None,
            "clocked": None,
        }
        if database.schedule_kind == database.SCHEDULE_INTERVAL:
            wanted["interval"], _ = IntervalSchedule.objects.get_or_create(
                every=database.interval_minutes, period=IntervalSchedule.MINUTES
            )
        else:
            minute, hour, day_of_month, month_of_year, day_of_week = database.crontab.split()
            wanted["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
                timezone=settings.TIME_ZONE,
            )
        if task is None:
            task = PeriodicTask(name=task_name(database))
        elif all(getattr(task, key) == value for key, value in wanted.items()):
            return task  # unchanged: do not make beat reload its schedule
        for key, value in wanted.items():
            setattr(task, key, value)
        task.save()
    logger.info("Scheduled %s: %s", database, task.schedule)
    return task


def verify_task_name(database):
    return f"dbsync: verify remote #{database.pk}"


def sync_verify_schedule(database):
    """Create, update or disable the verification task of ``database`` (every
    ``verify_every_days`` days, read-only: ``dbsync.tasks.verify_remote``). An
    offboarded remote has none, nor a legacy one (the 2010 layout serves no checksums:
    every verification would fail), and a paused one (after a revert) has it paused too:
    its replica is behind on purpose, and a verification would only report that."""
    task = PeriodicTask.objects.filter(name=verify_task_name(database)).first()
    if (
        not database.is_active
        or database.is_removed
        or database.schedule_paused
        or database.api_layout == database.LAYOUT_LEGACY  # serves no checksums
        or not database.verify_every_days
    ):
        if task is not None and task.enabled:
            task.enabled = False
            task.save()
        return task
    with transaction.atomic():
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=database.verify_every_days, period=IntervalSchedule.DAYS
        )
        wanted = {
            "task": VERIFY_TASK,
            "args": json.dumps([database.pk]),
            "kwargs": json.dumps({"trigger": "beat"}),
            "description": f"Verify the replica of {database.name} ({database.hostname})",
            "enabled": True,
            "interval": interval,
            "crontab": None,
            "solar": None,
            "clocked": None,
        }
        if task is None:
            task = PeriodicTask(name=verify_task_name(database))
        elif all(getattr(task, key) == value for key, value in wanted.items()):
            return task
        for key, value in wanted.items():
            setattr(task, key, value)
        task.save()
    return task


def remove_schedule(database):
    deleted, _ = PeriodicTask.objects.filter(
        name__in=[task_name(database), verify_task_name(database)]
    ).delete()
    return deleted


def on_save(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw:  # loaddata: the fixture brings its own periodic tasks, if any
        return
    if update_fields is not None and not SCHEDULE_FIELDS & set(update_fields):
        return
    sync_schedule(instance)
    sync_verify_schedule(instance)


def on_delete(sender, instance, **kwargs):
    remove_schedule(instance)
