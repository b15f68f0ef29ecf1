"""System checks of dbsync's settings (``manage.py check``, and before every command)."""

from django.conf import settings
from django.core.checks import Warning, register


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
