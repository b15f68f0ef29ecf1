from django.urls import path, re_path

from . import views

app_name = "api"

urlpatterns = [
    path("", views.manifest, name="manifest"),
    # Records and files have endpoints of their own (api.records, api.files).
    path("hcore/timeseries/records-summary/", views.records_summary, name="records-summary"),
    path("hcore/timeseries/records/", views.records_batch, name="records-batch"),
    path("hcore/timeseries/<int:pk>/records/", views.timeseries_records, name="records"),
    path("hcore/gentityfile/contents/", views.file_listing, name="file-listing"),
    path("hcore/gentityfile/<int:pk>/content/", views.file_content, name="file-content"),
    path("<str:app_label>/<str:model_name>/", views.dump, name="dump"),
    path("<str:app_label>/<str:model_name>/keys/", views.keys, name="keys"),
    # Anything else under the API is a JSON 404 too. Only paths ending in "/", so
    # that Django's APPEND_SLASH still redirects ".../station" to ".../station/".
    re_path(r"^(?P<path>.*/)$", views.not_found, name="not-found"),
]
