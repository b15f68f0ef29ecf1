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
# dbsync's tasks live with the rest of its runs (dbsync/runs/tasks.py), not in
# dbsync/tasks.py where the default looks; their names are still dbsync.tasks.*.
app.autodiscover_tasks(["dbsync.runs"])
