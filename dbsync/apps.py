from django.apps import AppConfig


class DbsyncConfig(AppConfig):
    name = "dbsync"
    verbose_name = "Database replication"
    default_auto_field = "django.db.models.BigAutoField"
