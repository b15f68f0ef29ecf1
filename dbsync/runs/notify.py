"""Telling the admins that scheduled syncs fail: once per failure streak.

A scheduled (Celery beat) run that fails is logged at ERROR and mailed to
settings.ADMINS. Later failures of the same remote are only logged, until a run of
that remote, of the same kind (a sync, a verification), succeeds: an hourly
schedule against a remote that is down for a day sends one mail, not 24. Retries
inside a run never reach here; only a run's end.
"""

import logging

from django.core.mail import mail_admins
from django.utils import timezone

from dbsync.models import SyncRun

logger = logging.getLogger(__name__)

NOTIFIED_TRIGGERS = frozenset({"beat"})


def run_finished(run):
    """Called by every path that ends a run (success, failure, interruption)."""
    if run.status != SyncRun.FAILED or run.trigger not in NOTIFIED_TRIGGERS:
        return False
    what = run.get_kind_display()  # a sync, or a weekly verification: streaks of their own
    logger.error("Scheduled %s of %s failed (run %s): %s", what, run.database, run.pk, run.message)
    if _streak_already_notified(run):
        return False
    mail_admins(
        f"Scheduled {what} of {run.database} failed",
        f"The scheduled {what} of the remote {run.database} (run {run.pk}, started "
        f"{run.started_at:%Y-%m-%d %H:%M:%S %Z}) failed:\n\n{run.message}\n\n"
        f"Further failures of this remote's {what}s are not mailed until one succeeds; "
        f"see its run history in the admin.",
        fail_silently=True,
    )
    SyncRun.objects.filter(pk=run.pk).update(notified_at=timezone.now())
    run.notified_at = timezone.now()
    return True


def _streak_already_notified(run):
    runs = SyncRun.objects.filter(database_id=run.database_id, kind=run.kind).exclude(pk=run.pk)
    last_success = runs.filter(status=SyncRun.SUCCEEDED).order_by("-pk").first()
    earlier = runs.filter(status=SyncRun.FAILED, notified_at__isnull=False)
    if last_success is not None:
        earlier = earlier.filter(pk__gt=last_success.pk)
    return earlier.exists()


def divergence(run):
    """A verification found the replica differing from its remote: mailed to the
    admins, each time (verifications are weekly, and a divergence is never expected)."""
    logger.error(
        "Replica of %s differs from its remote (run %s): %s", run.database, run.pk, run.message
    )
    mail_admins(
        f"Replica of {run.database} differs from its remote",
        f"The {run.get_kind_display()} of the remote {run.database} (run {run.pk}, "
        f"{run.started_at:%Y-%m-%d %H:%M:%S %Z}) found its replica differing:\n\n"
        f"{run.message}\n\nRepair it with `manage.py hcore_remotesyncdb -r "
        f"{run.database.name} --repair` (only what differs is fetched).",
        fail_silently=True,
    )
    return True
