# The Celery app is loaded with Django, so that @shared_task binds to it and
# `.delay()` from the web process or a command reaches the configured broker.
from .celery import app as celery_app

__all__ = ("celery_app",)
