"""The 2010 web-service layout, served beside today's API (see ``protocol.legacy``).

- ``/api/<ModelName>/``: all the model's objects, as today's dump (``api.dumps``);
- ``/api/<ModelName>/<id>/``: that one object, as a serialized list of one;
- ``/api/tsdata/<id>/``: the series' records, as today's records endpoint writes them.

Each view goes through :func:`api.views.api_endpoint`, so the rules are today's:
read-only, the configured authentication, JSON errors, the served fields only.
"""

from django.http import HttpResponse, StreamingHttpResponse

from protocol.formats import MAX_KEY
from protocol.legacy import legacy_model

from . import dumps, records
from .errors import ApiError
from .params import DumpQuery, check_parameters
from .views import CSV, JSON, api_endpoint, hcore_served


def model_or_404(name):
    model = legacy_model(name)
    if model is None:
        raise ApiError(404, f"No served model {name!r} in the 2010 layout.")
    return model


def key_or_404(what, value):
    """The integer key of a path segment; anything else names no object (404)."""
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= MAX_KEY:
        raise ApiError(404, f"No {what} with id {value[:40]!r}.")
    return int(value)


@api_endpoint
def listing(request, name):
    model = model_or_404(name)
    check_parameters(request.GET)
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    return StreamingHttpResponse(dumps.stream_dump(model, DumpQuery()), content_type=JSON)


@api_endpoint
def detail(request, name, pk):
    model = model_or_404(name)
    check_parameters(request.GET)
    key = key_or_404(name, pk)
    if not model._base_manager.filter(pk=key).exists():
        raise ApiError(404, f"No {name} with id {key}.")
    if request.method == "HEAD":
        return HttpResponse(content_type=JSON)
    body = b"".join(dumps.stream_dump(model, DumpQuery(pks=(key,))))
    return HttpResponse(body, content_type=JSON)


@api_endpoint
def tsdata(request, pk):
    hcore_served()
    check_parameters(request.GET)
    series = records.series_or_404(key_or_404("time series", pk))
    if request.method == "HEAD":
        return HttpResponse(content_type=CSV)
    return StreamingHttpResponse(records.stream_records(series), content_type=CSV)
