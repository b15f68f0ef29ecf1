from django.urls import path, re_path

from . import views

app_name = "api"

urlpatterns = [
    path("", views.manifest, name="manifest"),
    path("<str:app_label>/<str:model_name>/", views.dump, name="dump"),
    path("<str:app_label>/<str:model_name>/keys/", views.keys, name="keys"),
    # Anything else under the API is a JSON 404 too. Only paths ending in "/", so
    # that Django's APPEND_SLASH still redirects ".../station" to ".../station/".
    re_path(r"^(?P<path>.*/)$", views.not_found, name="not-found"),
]
