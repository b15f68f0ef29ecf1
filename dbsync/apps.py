from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save, pre_delete


class DbsyncConfig(AppConfig):
    name = "dbsync"
    verbose_name = "Database replication"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from celery.signals import task_postrun, task_prerun

        from . import checks  # noqa: F401 - registers the system checks
        from .runs import offboarding, schedules, task_counts

        database = self.get_model("Database")
        post_save.connect(schedules.on_save, sender=database, dispatch_uid="dbsync-schedule")
        post_delete.connect(schedules.on_delete, sender=database, dispatch_uid="dbsync-unschedule")
        pre_delete.connect(offboarding.before_delete, sender=database, dispatch_uid="dbsync-gone")
        post_migrate.connect(journal_triggers, sender=self, dispatch_uid="dbsync-journal")
        post_migrate.connect(verification_schedules, sender=self, dispatch_uid="dbsync-verify")
        # Every Celery task's executions, counted for /-/metrics (runs/task_counts.py).
        task_prerun.connect(task_counts.on_prerun, dispatch_uid="dbsync-task-start")
        task_postrun.connect(task_counts.on_postrun, dispatch_uid="dbsync-task-count")


def journal_triggers(sender, using="default", plan=None, **kwargs):
    """After every migrate: the journal's triggers on every journaled table, those added
    since the journal's migration included (idempotent)."""
    from django.db import connections

    from .engine.journal.schema import TABLE, install_triggers

    connection = connections[using]
    if TABLE in connection.introspection.table_names():  # not before its migration ran
        install_triggers(connection)


def verification_schedules(sender, using="default", plan=None, **kwargs):
    """After every migrate: a verification task for each remote that has none (those
    registered before verifications existed: migration 0011 gave them a weekly
    ``verify_every_days`` but no periodic task). One that exists is left as it is."""
    from django_celery_beat.models import PeriodicTask

    from .runs.schedules import sync_verify_schedule, verify_task_name

    database = sender.get_model("Database")
    # Only at the latest migration: a migrate back to an older one (the migration tests)
    # leaves a schema the model of today cannot read.
    state = kwargs.get("apps")
    try:
        then = state.get_model("dbsync", "Database")
        state.get_model("django_celery_beat", "PeriodicTask")
    except (AttributeError, LookupError):
        return
    names = {f.column for f in database._meta.concrete_fields}
    if names - {f.column for f in then._meta.concrete_fields}:
        return
    have = set(PeriodicTask.objects.using(using).values_list("name", flat=True))
    for remote in database.objects.using(using).all():
        if verify_task_name(remote) not in have:
            sync_verify_schedule(remote)
