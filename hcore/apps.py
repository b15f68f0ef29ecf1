from django.apps import AppConfig


class HcoreConfig(AppConfig):
    name = "hcore"
    verbose_name = "Enhydris core"

    def ready(self):
        from . import signals  # noqa: F401  (connects the m2m last_modified hook)
