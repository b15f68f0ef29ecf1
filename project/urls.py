from django.conf import settings
from django.contrib import admin
from django.urls import include, path, register_converter

from hcore.media import StoredNameConverter, media_file
from project.metrics import metrics

register_converter(StoredNameConverter, "stored_name")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    # Prometheus' scrape (project/metrics.py): a bearer token or a staff session.
    path("-/metrics", metrics, name="metrics"),
    # Replicated files (GentityFile), for users allowed to see them (hcore/media.py).
    path(f"{settings.MEDIA_URL.strip('/')}/<stored_name:name>", media_file, name="media"),
]
