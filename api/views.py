"""The read-only web-service API: a manifest, each model's dump, its keys.

Every endpoint goes through :func:`api_endpoint`: GET or HEAD only, the
configured authentication, an ``X-Server-Time`` header, and JSON errors, even
for an unexpected crash.
"""

import datetime as dt
import functools
import logging

from django.core.exceptions import FieldDoesNotExist, SuspiciousOperation
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from protocol.formats import format_checksum
from protocol.schema import (
    describe_model,
    fingerprint,
    get_served_model,
    served_apps,
    served_models,
)

from . import changes, checksums, dumps, files, record_formats, records
from .auth import check_credentials
from .errors import ApiError, error_response
from .params import check_parameters, parse_dump_query, parse_modified_after, parse_transaction

logger = logging.getLogger(__name__)

API_VERSION = 1
SAFE_METHODS = ("GET", "HEAD")
JSON = "application/json"
CSV = "text/csv; charset=utf-8"


def format_server_time(moment):
    """UTC, ISO 8601 with microseconds: ``2026-11-25T23:59:01.123456+00:00``."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def api_endpoint(view):
    """What every endpoint does around its own work (see the module's docstring).

    The server time is taken before any query, so a client may use it as the
    cursor of its next incremental run without missing a change.
    """

    @csrf_exempt  # read-only; a POST must get its 405, not a CSRF page
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        request.api_time = timezone.now()
        try:
            if request.method not in SAFE_METHODS:
                raise ApiError(
                    405,
                    f"Method {request.method} is not allowed; this API is read-only (GET).",
                    {"Allow": ", ".join(SAFE_METHODS)},
                )
            check_credentials(request)
            response = view(request, *args, **kwargs)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except SuspiciousOperation as exc:
            # The client's fault, as Django sees it (e.g. more query parameters than
            # DATA_UPLOAD_MAX_NUMBER_FIELDS): a 400, as Django itself would answer.
            logger.warning("API request for %s refused: %s", request.path, exc)
            response = error_response(400, f"Bad request: {exc}")
        except Exception:
            logger.exception("API request for %s failed", request.path)
            response = error_response(500, "Internal server error; the server's log says more.")
        response["X-Server-Time"] = format_server_time(request.api_time)
        return response

    return wrapper


def served_model_or_404(app_label, model_name):
    model = get_served_model(f"{app_label}.{model_name}")
    if model is None:
        raise ApiError(
            404,
            f"No served model {app_label}.{model_name}; the manifest at "
            f"{reverse('api:manifest')} lists those served.",
        )
    return model


@api_endpoint
def manifest(request):
    check_parameters(request.GET)
    state = changes.capture_state()
    tables = state.pop("tables") if state else {}
    return JsonResponse(
        {
            "version": API_VERSION,
            "protocol": changes.PROTOCOL_VERSION,
            "server_time": format_server_time(request.api_time),
            "capture": state or {"guarantee": changes.GUARANTEE_CLOCK},
            "apps": served_apps(),
            "models": [describe_served_model(model, tables) for model in served_models()],
            **describe_records_and_files(state),
        }
    )


def describe_records_and_files(capture=None):
    """Where a syncer finds the records and files, if this instance serves hcore;
    ``capture``: the capture state (None: no change capture)."""
    if "hcore" not in served_apps():
        return {}
    urls = {
        "summary_url": reverse("api:records-summary"),
        # What the summary can be asked for: a syncer sends only what is listed.
        "summary_parameters": records.summary_parameters(),
        "batch_url": reverse("api:records-batch"),
        "url": reverse("api:records", args=(0,)).replace("/0/", "/{pk}/"),
    }
    database_time = records.database_time()
    if database_time is not None:
        # The clock of the summary's changed_after: a syncer's records cursor.
        urls["database_time"] = format_server_time(database_time)
    return {
        "records": urls,
        "files": {
            "listing_url": reverse("api:file-listing"),
            "url": reverse("api:file-content", args=(0,)).replace("/0/", "/{pk}/"),
            # What the listing can be asked for: a syncer sends only what is listed.
            "listing_parameters": files.listing_parameters(capture),
        },
    }


def describe_served_model(model, tables=None):
    """A model's entry; ``tables``: table -> (count, highest writer, highest deleter,
    checksum or None) from the change counters, which make the count and the checksum
    O(models) and tell whether anything changed (``changed``: the highest transaction
    that wrote the model's own table; ``deleted``: that deleted from it)."""
    opts = model._meta
    counted = (tables or {}).get(opts.db_table)
    entry = {
        "model": opts.label_lower,
        "url": reverse("api:dump", args=(opts.app_label, opts.model_name)),
        "keys_url": reverse("api:keys", args=(opts.app_label, opts.model_name)),
        # --verify's (api.checksums): checksums over key ranges, a small range's hashes.
        "checksums_url": reverse("api:checksums", args=(opts.app_label, opts.model_name)),
        "hashes_url": reverse("api:hashes", args=(opts.app_label, opts.model_name)),
        "count": counted[0] if counted else model._base_manager.count(),
        "fingerprint": fingerprint(model),
        "parents": describe_model(model)["parents"],
    }
    if counted:
        entry["changed"], entry["deleted"] = counted[1], counted[2]
        if counted[3] is not None:
            # The checksum of every served row (the checksums endpoint's over all
            # keys), kept by the capture triggers (hcore.checksums).
            entry["checksum"] = format_checksum(counted[3])
    elif tables:
        entry["changed"] = entry["deleted"] = 0  # never written since capture began
    return entry


@api_endpoint
def dump(request, app_label, model_name):
    model = served_model_or_404(app_label, model_name)
    query = parse_dump_query(request.GET)
    if query.modified_after is not None and not has_field(model, "last_modified"):
        raise ApiError(400, f"{model._meta.label_lower} has no last_modified to filter on.")
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return StreamingHttpResponse(dumps.stream_dump(model, query), content_type=JSON)


@api_endpoint
def keys(request, app_label, model_name):
    model = served_model_or_404(app_label, model_name)
    check_parameters(request.GET, ("deleted_since",))
    deleted_since = parse_transaction("deleted_since", request.GET.get("deleted_since"))
    changes.check_deleted_since(deleted_since)
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return StreamingHttpResponse(dumps.stream_keys(model, deleted_since), content_type=JSON)


@api_endpoint
def checksums_view(request, app_label, model_name):
    model = served_model_or_404(app_label, model_name)
    low, high, parts = checksums.parse_range(request.GET, with_parts=True)
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    body = checksums.range_checksums(model, low, high, parts)
    label = model._meta.label_lower
    return JsonResponse({"model": label, "from": low, "to": high, "parts": body})


@api_endpoint
def hashes(request, app_label, model_name):
    model = served_model_or_404(app_label, model_name)
    low, high, pks, after, changed_since, ranges = checksums.parse_hashes_query(request.GET)
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return JsonResponse(
        checksums.range_hashes(model, low, high, pks, after, changed_since, ranges), safe=False
    )


def hcore_served():
    if "hcore" not in served_apps():
        raise ApiError(404, "This instance does not serve hcore.")


@api_endpoint
def records_summary(request):
    hcore_served()
    check_parameters(request.GET, records.SUMMARY_PARAMETERS)
    changed_after = parse_modified_after(request.GET.get("changed_after"), "changed_after")
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return StreamingHttpResponse(records.stream_summary(changed_after), content_type=JSON)


@api_endpoint
def timeseries_records(request, pk):
    hcore_served()
    check_parameters(request.GET, (*records.RECORDS_PARAMETERS, "fmt"))
    record_format = record_formats.parse_format(request.GET.get("fmt"))
    series = records.series_or_404(pk)
    start, end = records.parse_range(request.GET, series.time_zone.utc_offset)
    if record_format is None:
        if request.method == "HEAD":
            return HttpResponse(content_type=CSV)
        return StreamingHttpResponse(records.stream_records(series, start, end), content_type=CSV)
    record_formats.check_expressible(series)
    if request.method == "HEAD":
        response = HttpResponse(content_type=record_format.content_type)
    else:
        response = StreamingHttpResponse(
            record_formats.stream_file(series, start, end, record_format),
            content_type=record_format.content_type,
        )
    response["Content-Disposition"] = record_formats.content_disposition(series, record_format)
    return response


@api_endpoint
def records_batch(request):
    hcore_served()
    check_parameters(request.GET, records.BATCH_PARAMETERS)
    batch = records.parse_batch(request.GET.get("series"))
    if request.method == "HEAD":
        return HttpResponse(content_type=CSV)
    return StreamingHttpResponse(records.stream_batch(batch), content_type=CSV)


@api_endpoint
def file_listing(request):
    hcore_served()
    check_parameters(request.GET, files.LISTING_PARAMETERS)
    changed_since = parse_transaction("changed_since", request.GET.get("changed_since"))
    changes.check_changed_since(changed_since)
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return StreamingHttpResponse(files.stream_listing(changed_since), content_type=JSON)


@api_endpoint
def file_content(request, pk):
    hcore_served()
    check_parameters(request.GET)
    return files.file_response(pk, head=request.method == "HEAD")


@api_endpoint
def not_found(request, path=""):
    raise ApiError(
        404,
        f"No such API URL: {request.path}; the manifest at {reverse('api:manifest')} "
        "lists the URLs of the served models.",
    )


def has_field(model, name):
    try:
        model._meta.get_field(name)
    except FieldDoesNotExist:
        return False
    return True
