from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Web-service API"

    def ready(self):
        from . import checks  # noqa: F401 - registers the checks
