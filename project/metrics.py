"""``/-/metrics``: the syncs' figures in Prometheus' text format (``dbsync.runs.metrics``).

Served like any page (ALLOWED_HOSTS, the redirect to HTTPS), to whoever shows one of:

- a bearer token equal to ``DBSYNC_METRICS_TOKEN`` (``Authorization: Bearer …``, what
  Prometheus sends with ``authorization: credentials_file``), compared in constant
  time; with the setting empty no token is accepted;
- a logged-in staff user who may view remotes and runs (the admin's session), to look.

Anyone else gets 401 (no or a wrong token; ``WWW-Authenticate`` says which scheme), or
403 (logged in without the permissions). The token is never logged nor echoed.
"""

import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dbsync.runs.metrics import SyncCollector

PERMISSIONS = ("dbsync.view_database", "dbsync.view_syncrun")
REALM = 'Bearer realm="dbsync metrics"'


def bearer_token(request):
    """The token of an ``Authorization: Bearer`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_accepted(token):
    expected = settings.DBSYNC_METRICS_TOKEN
    if not expected or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.encode())


def staff_allowed(user):
    return (
        user.is_authenticated and user.is_active and user.is_staff and user.has_perms(PERMISSIONS)
    )


def registry():
    figures = CollectorRegistry(auto_describe=False)
    figures.register(SyncCollector())
    return figures


@require_GET
@never_cache
def metrics(request):
    token = bearer_token(request)
    if not (token_accepted(token) or (token is None and staff_allowed(request.user))):
        if token is None and request.user.is_authenticated:
            return HttpResponse("Forbidden: the user may not view remotes and runs.\n", status=403)
        response = HttpResponse("A bearer token (DBSYNC_METRICS_TOKEN) is needed.\n", status=401)
        response["WWW-Authenticate"] = (
            REALM if token is None else f'{REALM}, error="invalid_token"'
        )
        return response
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
