"""System checks of dbsync's settings (``manage.py check``, and every command's start)."""

from django.conf import settings
from django.core.checks import Error, Warning, register

# Each bound shorter than the next: a read, a whole response, a whole run, a task.
DEADLINES = (
    ("DBSYNC_HTTP_TIMEOUT", "one read of a response"),
    ("DBSYNC_REQUEST_DEADLINE", "one whole response"),
    ("DBSYNC_RUN_DEADLINE", "one whole run"),
    ("CELERY_TASK_SOFT_TIME_LIMIT", "one Celery task (from DBSYNC_TASK_TIME_LIMIT)"),
)


@register()
def check_deadlines(app_configs=None, **kwargs):
    """The time bounds must be in order, each shorter than the next: otherwise the
    longer one never acts (a run cut by its task's time limit rather than ending at
    its deadline, with its error, is killed wherever it is)."""
    errors = []
    for (shorter, what), (longer, what_longer) in zip(DEADLINES, DEADLINES[1:], strict=False):
        low, high = getattr(settings, shorter, None), getattr(settings, longer, None)
        if low is None or high is None:
            continue
        if not 0 < low < high:
            errors.append(
                Error(
                    f"{shorter} ({low:g} s, {what}) must be more than 0 and less than "
                    f"{longer} ({high:g} s, {what_longer}).",
                    hint="Keep DBSYNC_HTTP_TIMEOUT < DBSYNC_REQUEST_DEADLINE < "
                    "DBSYNC_RUN_DEADLINE < the Celery soft time limit (see docs/settings.md).",
                    id="dbsync.E001",
                )
            )
    return errors


@register()
def retired_settings(app_configs, **kwargs):
    """DBSYNC_MAX_DELETE_MIN is retired: a deployment that still sets it keeps working,
    and is told that it has no effect."""
    if getattr(settings, "DBSYNC_MAX_DELETE_MIN", "") in ("", None):
        return []
    return [
        Warning(
            "DBSYNC_MAX_DELETE_MIN is retired and ignored: the deletion guard has no "
            "floor any more, so that no remote can empty a small table by default.",
            hint="Remove it. Allow a larger deletion with DBSYNC_MAX_DELETE, --max-delete, "
            "or by approving a refused run's deletions once in the admin.",
            id="dbsync.W001",
        )
    ]
