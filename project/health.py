"""``/-/health/``: can this instance do its work? It checks the database and the broker.

It is a middleware, placed first, so that it answers whatever the Host header
(ALLOWED_HOSTS names the public domain; a healthcheck asks for localhost or an IP
address) and before SecurityMiddleware's redirect to HTTPS. It answers 200 with each
check's state when all pass, 503 naming the one that failed otherwise. What failed is
logged; the answer names the kind of error only, never a URL or a credential.
"""

import logging

from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)

PATH = "/-/health/"
BROKER_TIMEOUT = 3  # seconds: a healthcheck must answer before its own timeout


def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker():
    from project.celery import app

    if app.conf.task_always_eager:
        return "not used (eager)"
    with app.connection_for_write(connect_timeout=BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
    return "ok"


CHECKS = {"database": check_database, "broker": check_broker}


def health():
    """(healthy, {check: state}): every check, each on its own."""
    states, healthy = {}, True
    for name, check in CHECKS.items():
        try:
            states[name] = check() or "ok"
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency is "unhealthy"
            logger.warning("health: the %s check failed: %s", name, exc)
            states[name] = f"failed: {type(exc).__name__}"
            healthy = False
    return healthy, states


class HealthCheckMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path != PATH:
            return self.get_response(request)
        healthy, states = health()
        response = JsonResponse(
            {"status": "ok" if healthy else "unhealthy", "checks": states},
            status=200 if healthy else 503,
        )
        response["Cache-Control"] = "no-store"
        # Each failed check is logged above as a WARNING. Django would log the 503 itself
        # at ERROR, which mails DJANGO_ADMINS: every 30 s, from each healthcheck, for as
        # long as the broker or the database is down.
        response._has_been_logged = True
        return response
