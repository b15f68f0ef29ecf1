import re

from django.urls import path, re_path

from protocol.legacy import LEGACY_MODELS, TSDATA

from . import legacy, views

# The 2010 layout (api.legacy): one explicit alternative per 2010 model name, matched
# before today's ``<app>/<model>/`` routes, which they would otherwise look like. No
# 2010 name equals an app label (the check ``api.E001``, in api/checks.py).
LEGACY_NAME = "(?P<name>" + "|".join(map(re.escape, sorted(LEGACY_MODELS))) + ")"

app_name = "api"

urlpatterns = [
    path("", views.manifest, name="manifest"),
    re_path(rf"^{LEGACY_NAME}/$", legacy.listing, name="legacy-listing"),
    re_path(rf"^{LEGACY_NAME}/(?P<pk>[^/]+)/$", legacy.detail, name="legacy-detail"),
    re_path(rf"^{TSDATA}/(?P<pk>[^/]+)/$", legacy.tsdata, name="legacy-tsdata"),
    # Records and files have endpoints of their own (api.records, api.files).
    path("hcore/timeseries/records-summary/", views.records_summary, name="records-summary"),
    path("hcore/timeseries/records/", views.records_batch, name="records-batch"),
    path("hcore/timeseries/<int:pk>/records/", views.timeseries_records, name="records"),
    path("hcore/gentityfile/contents/", views.file_listing, name="file-listing"),
    path("hcore/gentityfile/<int:pk>/content/", views.file_content, name="file-content"),
    path("<str:app_label>/<str:model_name>/", views.dump, name="dump"),
    path("<str:app_label>/<str:model_name>/keys/", views.keys, name="keys"),
    path("<str:app_label>/<str:model_name>/checksums/", views.checksums_view, name="checksums"),
    path("<str:app_label>/<str:model_name>/hashes/", views.hashes, name="hashes"),
    # Anything else under the API is a JSON 404 too. Only paths ending in "/", so
    # that Django's APPEND_SLASH still redirects ".../station" to ".../station/".
    re_path(r"^(?P<path>.*/)$", views.not_found, name="not-found"),
]
