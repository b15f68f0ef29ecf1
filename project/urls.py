from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from hcore.media import media_file

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    # Replicated files (GentityFile), for users allowed to see them (hcore/media.py).
    path(f"{settings.MEDIA_URL.strip('/')}/<path:name>", media_file, name="media"),
]
