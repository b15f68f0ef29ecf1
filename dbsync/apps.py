from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class DbsyncConfig(AppConfig):
    name = "dbsync"
    verbose_name = "Database replication"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401 - registers the system checks
        from .runs import offboarding, schedules

        database = self.get_model("Database")
        post_save.connect(schedules.on_save, sender=database, dispatch_uid="dbsync-schedule")
        post_delete.connect(schedules.on_delete, sender=database, dispatch_uid="dbsync-unschedule")
        post_delete.connect(offboarding.on_delete, sender=database, dispatch_uid="dbsync-files")
