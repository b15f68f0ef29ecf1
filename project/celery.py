"""The Celery application: configured from Django's settings (the CELERY_ prefix).

celery -A project worker -l info        # consumes every dbsync queue
celery -A project beat -l info -S django
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
