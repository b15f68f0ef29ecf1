"""hcore's Celery task: tombstone retention, daily (its periodic task is made by
``hcore.apps`` after every migrate)."""

from celery import shared_task
from django.conf import settings
from django.db import connection

from . import tombstones


@shared_task(name="hcore.tasks.prune_tombstones")
def prune_tombstones(days=None):
    """Prune the tombstones older than ``days`` (DBSYNC_TOMBSTONE_RETENTION_DAYS by
    default; that setting at 0 keeps them all); return what was done, in words."""
    if not tombstones.supported(connection):
        return "No change capture on this database: no tombstones to prune."
    if days is None:
        days = settings.DBSYNC_TOMBSTONE_RETENTION_DAYS
        if days <= 0:
            return tombstones.RETENTION_OFF
    return tombstones.prune(connection, days).describe()
