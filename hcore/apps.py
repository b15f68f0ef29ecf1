from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


class HcoreConfig(AppConfig):
    name = "hcore"
    verbose_name = "Enhydris core"

    def ready(self):
        from . import signals  # noqa: F401  (connects the m2m last_modified hook)

        post_migrate.connect(prune_schedule, sender=self, dispatch_uid="hcore-prune")
        pre_migrate.connect(forget_checksums, sender=self, dispatch_uid="hcore-checksums")
        post_migrate.connect(refresh_checksums, sender=self, dispatch_uid="hcore-checksums")


def forget_checksums(sender, using="default", plan=None, **kwargs):
    """Before a migrate that applies anything: the checksums' per-table SQL dropped
    (hcore.checksums.forget), since a migration may drop a column it names."""
    if plan:
        from .checksums import forget

        forget(using)


def refresh_checksums(sender, using="default", **kwargs):
    """After every migrate: the running checksums of the served tables whose served
    fields changed (hcore.checksums), from the models as they now are."""
    from .checksums import refresh

    refresh(using)


def prune_schedule(sender, using="default", plan=None, **kwargs):
    """After every migrate: the daily tombstone pruning's periodic task, if missing."""
    from django.apps import apps as installed

    # A migrate passes its state (which, migrated back, may lack the table); a flush
    # (the tests') none: the installed apps, then.
    state = kwargs.get("apps") or installed
    try:
        state.get_model("django_celery_beat", "PeriodicTask")
    except (AttributeError, LookupError):
        return  # a migrate back to before django-celery-beat's tables
    from .schedule import ensure_prune_schedule

    ensure_prune_schedule(using)
