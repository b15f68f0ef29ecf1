"""The periodic task of tombstone retention, as a django-celery-beat PeriodicTask made
after every migrate (``hcore.apps``), so that a serving instance gets it with no step
of its own. One that exists is left as it is: an operator may disable it or change its
time in the admin."""

import json

from django.conf import settings

PRUNE_TASK = "hcore.tasks.prune_tombstones"
PRUNE_TASK_NAME = "hcore: prune tombstones"
PRUNE_CRONTAB = {"minute": "17", "hour": "3"}  # daily, at night


def ensure_prune_schedule(using="default"):
    """Create the daily pruning's periodic task if there is none; return it."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    task = PeriodicTask.objects.using(using).filter(name=PRUNE_TASK_NAME).first()
    if task is not None:
        return task
    crontab, _ = CrontabSchedule.objects.using(using).get_or_create(
        day_of_month="*",
        month_of_year="*",
        day_of_week="*",
        timezone=settings.TIME_ZONE,
        **PRUNE_CRONTAB,
    )
    return PeriodicTask.objects.using(using).create(
        name=PRUNE_TASK_NAME,
        task=PRUNE_TASK,
        crontab=crontab,
        args=json.dumps([]),
        kwargs=json.dumps({}),
        description=(
            "Prune the change capture's tombstones older than "
            "DBSYNC_TOMBSTONE_RETENTION_DAYS (docs/operations.md)"
        ),
    )
