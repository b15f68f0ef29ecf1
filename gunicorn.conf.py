"""gunicorn's settings, from the environment (gunicorn reads ./gunicorn.conf.py itself).

    gunicorn project.wsgi

GUNICORN_BIND (0.0.0.0:8000), GUNICORN_WORKERS (3), GUNICORN_TIMEOUT (600 s: an admin
page may wait for a slow query), and GUNICORN_CERTFILE / GUNICORN_KEYFILE to serve
HTTPS itself, without a proxy in front. bin/healthcheck reads this file too, so that
the healthcheck asks the address and the scheme that gunicorn serves.
"""

import os

bind = os.environ.get("GUNICORN_BIND") or "0.0.0.0:8000"
workers = int(os.environ.get("GUNICORN_WORKERS") or 3)
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 600)
certfile = os.environ.get("GUNICORN_CERTFILE") or None
keyfile = os.environ.get("GUNICORN_KEYFILE") or None
