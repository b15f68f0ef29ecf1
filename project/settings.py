"""Settings for a dbsync / Enhydris instance, read from the environment.

Every setting that differs between machines comes from an environment variable
(docs/settings.md lists them all). With none set, the instance runs on a
SQLite file in ``var/`` with an in-process sync, so a fresh checkout needs no
services.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=None):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def env_bytes(name, default):
    """A size in bytes: a number, optionally with a binary unit (``500M``, ``20G``,
    ``1.5T``; ``KiB``/``MB`` spellings too)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    number = value.upper().removesuffix("IB").removesuffix("B").strip()
    unit = number[-1:] if number[-1:] in SIZE_UNITS else ""
    try:
        return int(float(number.removesuffix(unit).strip()) * SIZE_UNITS[unit])
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a size: give bytes, or a number with K, M, G or T."
        ) from None


def env_list(name, default=""):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it (any long random string) or set "
            "DJANGO_DEBUG=1 for a development instance."
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"
# Keys retired from DJANGO_SECRET_KEY: still accepted for sessions and signatures, and
# for remote credentials encrypted under them (see DBSYNC_SECRET_KEYS).
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

VAR_DIR = Path(env_str("DBSYNC_VAR_DIR", str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "dbsync",
    "hcore",
    "api",
]

MIDDLEWARE = [
    # First: /-/health/ answers whatever the Host header, before any HTTPS redirect.
    "project.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files behind gunicorn, compressed, without a web server in front.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default: wait for the writer instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "static")))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("DJANGO_MEDIA_ROOT", str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed names from `collectstatic` (run when the image is built); a
    # development instance serves the apps' files as they are.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- HTTPS (on in .env.example; `manage.py check --deploy` lists what is missing) ---
# Behind a reverse proxy that terminates TLS and sets X-Forwarded-Proto.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)

ADMINS = [
    tuple(item.split(":", 1)) if ":" in item else (item, item)
    for item in env_list("DJANGO_ADMINS")
]
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 25)
SERVER_EMAIL = env_str("DJANGO_SERVER_EMAIL", "dbsync@localhost")

# --- The web-service API (api/) ---
# "none": public read, as Enhydris was; "token": an "Authorization: Token <t>"
# header with one of API_TOKENS; "basic": HTTP basic auth of an active local user.
API_AUTH = env_str("API_AUTH", "none")
API_TOKENS = env_list("API_TOKENS")
API_MAX_PAGE_SIZE = env_int("API_MAX_PAGE_SIZE", 100_000)
API_MAX_KEYS_PER_REQUEST = env_int("API_MAX_KEYS_PER_REQUEST", 1_000)

# --- dbsync: the replication engine ---
DBSYNC_WORK_DIR = Path(env_str("DBSYNC_WORK_DIR", str(VAR_DIR / "dbsync-work")))
DBSYNC_BACKUP_DIR = Path(env_str("DBSYNC_BACKUP_DIR", str(VAR_DIR / "backups")))
DBSYNC_BACKUP_KEEP = env_int("DBSYNC_BACKUP_KEEP", 7)  # per remote
DBSYNC_BACKUP_MAX_AGE_DAYS = env_int("DBSYNC_BACKUP_MAX_AGE_DAYS", 30)  # 0: no age bound
# The journal of each run (dbsync.engine.journal), the default backup: kept for the
# newest DBSYNC_JOURNAL_KEEP runs of each remote, none older than the age (0: no bound).
DBSYNC_JOURNAL_DIR = Path(env_str("DBSYNC_JOURNAL_DIR", str(VAR_DIR / "journal")))
DBSYNC_JOURNAL_KEEP = env_int("DBSYNC_JOURNAL_KEEP", 14)
DBSYNC_JOURNAL_MAX_AGE_DAYS = env_int("DBSYNC_JOURNAL_MAX_AGE_DAYS", 30)
# A whole-database pg_dump before every run too (disaster recovery), besides the journal.
DBSYNC_PG_DUMP = env_bool("DBSYNC_PG_DUMP", False)
# The deletion guards: the most replicated objects of a model (with their cascades),
# and the most records of a series, one run may remove; a count, a share or "all".
DBSYNC_MAX_DELETE = env_str("DBSYNC_MAX_DELETE", "50%")
DBSYNC_MAX_RECORDS_DELETE = env_str("DBSYNC_MAX_RECORDS_DELETE", "50%")
# Retired (it let a remote empty a small table): still accepted, ignored, and warned
# about by `manage.py check` (dbsync.checks).
DBSYNC_MAX_DELETE_MIN = env_str("DBSYNC_MAX_DELETE_MIN", "")
# Time bounds, each shorter than the next (dbsync.checks refuses another order): one read
# of a response; one whole response; one whole run (from its start, across its tasks);
# then CELERY_TASK_SOFT_TIME_LIMIT (from DBSYNC_TASK_TIME_LIMIT, below).
DBSYNC_HTTP_TIMEOUT = env_float("DBSYNC_HTTP_TIMEOUT", 60.0)
DBSYNC_REQUEST_DEADLINE = env_float("DBSYNC_REQUEST_DEADLINE", 3600.0)
DBSYNC_RUN_DEADLINE = env_float("DBSYNC_RUN_DEADLINE", 5 * 3600.0)
DBSYNC_HTTP_RETRIES = env_int("DBSYNC_HTTP_RETRIES", 4)
DBSYNC_HTTP_BACKOFF = env_float("DBSYNC_HTTP_BACKOFF", 1.0)
DBSYNC_MAX_RESPONSE_BYTES = env_int("DBSYNC_MAX_RESPONSE_BYTES", 2 * 1024**3)
# What a remote can make a sync hold at once: one object (a line of a dump) or JSON
# document read whole (the manifest); the many-to-many keys of one object.
DBSYNC_MAX_OBJECT_BYTES = env_int("DBSYNC_MAX_OBJECT_BYTES", 64 * 1024**2)
DBSYNC_MAX_LINKS_PER_OBJECT = env_int("DBSYNC_MAX_LINKS_PER_OBJECT", 10_000)
# What one JSON document read whole from a remote (the manifest, an object of a dump, an
# entry of a listing) may hold: values (a container and each scalar count one) and
# nesting levels; checked as it is parsed, before the memory grows (dbsync.engine.jsoncaps).
DBSYNC_MAX_JSON_ITEMS = env_int("DBSYNC_MAX_JSON_ITEMS", 100_000)
DBSYNC_MAX_JSON_DEPTH = env_int("DBSYNC_MAX_JSON_DEPTH", 32)
# Check the foreign keys of a sync's new rows with one query per key instead of a
# trigger per row (needs the right to set session_replication_role; see dbsync.engine.keychecks).
DBSYNC_BULK_KEY_CHECKS = env_bool("DBSYNC_BULK_KEY_CHECKS", True)
# A first sync's objects converted, checked and keyed by PostgreSQL from the dumps' bytes
# (dbsync.engine.install.inserver); anything it doubts goes the Python path, row by row.
DBSYNC_INSTALL_IN_SERVER = env_bool("DBSYNC_INSTALL_IN_SERVER", True)
DBSYNC_OVERLAP_SECONDS = env_int("DBSYNC_OVERLAP_SECONDS", 300)
# Serving side: the change capture's tombstones are kept this many days (pruned daily,
# hcore.tombstones); a replica whose cursor is older then runs in full.
DBSYNC_TOMBSTONE_RETENTION_DAYS = env_int("DBSYNC_TOMBSTONE_RETENTION_DAYS", 30)
# The most a run may download into its folders (dumps, listings, records, files),
# counted as written; over it the run stops (dbsync.engine.diskbudget). 0: no budget.
DBSYNC_RUN_DISK_BUDGET = env_bytes("DBSYNC_RUN_DISK_BUDGET", 50 * 1024**3)
# --- dbsync: remote credentials and politeness (dbsync.secrets, dbsync.engine.remote) ---
# Fernet keys (comma-separated, newest first) that encrypt remotes' passwords and tokens
# at rest; keys derived from DJANGO_SECRET_KEY and DJANGO_SECRET_KEY_FALLBACKS follow
# them (decrypting only), or are the keys when this is empty. After adding a key:
# manage.py dbsync_rotatesecrets (docs/credentials.md).
DBSYNC_SECRET_KEYS = env_list("DBSYNC_SECRET_KEYS")
# A password or token is sent over HTTPS only; this allows plain HTTP to a loopback
# IP address too (a remote's registered IP, e.g. 127.0.0.1: development and tests),
# never to any other host.
DBSYNC_ALLOW_HTTP_CREDENTIALS = env_bool("DBSYNC_ALLOW_HTTP_CREDENTIALS", False)
# A CA bundle (PEM) to verify remotes' certificates with; empty: the system's (certifi).
DBSYNC_CA_BUNDLE = env_str("DBSYNC_CA_BUNDLE", "")
# Who runs this aggregator, sent in every request's User-Agent (an e-mail or a URL).
DBSYNC_CONTACT = env_str("DBSYNC_CONTACT", "")
# At most this many requests in flight to one remote, across every process and worker
# (0: no limit); a request waits this long for a free slot, then fails
# (dbsync.engine.request_slots).
DBSYNC_MAX_REQUESTS_PER_REMOTE = env_int("DBSYNC_MAX_REQUESTS_PER_REMOTE", 4)
DBSYNC_REQUEST_SLOT_WAIT_SECONDS = env_float("DBSYNC_REQUEST_SLOT_WAIT_SECONDS", 600)
DBSYNC_STALE_SECONDS = env_int("DBSYNC_STALE_SECONDS", 900)
# Freshness (dbsync.runs.freshness, manage.py dbsync_status): a scheduled remote is overdue
# this long after the first start its schedule gave since its last success; one with no
# schedule (synced by cron) when its last success is older than this many hours.
DBSYNC_OVERDUE_GRACE_MINUTES = env_int("DBSYNC_OVERDUE_GRACE_MINUTES", 120)
DBSYNC_UNSCHEDULED_MAX_AGE_HOURS = env_float("DBSYNC_UNSCHEDULED_MAX_AGE_HOURS", 26)
# The command fetches this many dumps at once into its work folder; it installs once
# all are on disk (its transaction never waits on the remote).
DBSYNC_FETCH_THREADS = env_int("DBSYNC_FETCH_THREADS", 4)
# Time-series records and files (dbsync.engine.records, dbsync.engine.files): downloads at once,
# and the largest file fetched (a larger one is refused and reported).
DBSYNC_RECORDS_WORKERS = env_int("DBSYNC_RECORDS_WORKERS", 4)
DBSYNC_MAX_FILE_BYTES = env_int("DBSYNC_MAX_FILE_BYTES", 100 * 1024**2)

# --- dbsync: where fetched dumps live between the fetch and the install tasks ---
# "local": a folder (DBSYNC_STORAGE_ROOT), enough when every worker shares a
# filesystem; "s3": an S3-compatible bucket, for workers on several hosts.
DBSYNC_STORAGE = env_str("DBSYNC_STORAGE", "local")
DBSYNC_STORAGE_ROOT = Path(env_str("DBSYNC_STORAGE_ROOT", str(VAR_DIR / "dbsync-storage")))
DBSYNC_S3_BUCKET = env_str("DBSYNC_S3_BUCKET", "")
DBSYNC_S3_ENDPOINT_URL = env_str("DBSYNC_S3_ENDPOINT_URL", "")  # empty: AWS itself
DBSYNC_S3_REGION = env_str("DBSYNC_S3_REGION", "")
DBSYNC_S3_ACCESS_KEY_ID = env_str("DBSYNC_S3_ACCESS_KEY_ID", "")  # empty: boto3's own lookup
DBSYNC_S3_SECRET_ACCESS_KEY = env_str("DBSYNC_S3_SECRET_ACCESS_KEY", "")
DBSYNC_S3_PREFIX = env_str("DBSYNC_S3_PREFIX", "dbsync")
DBSYNC_S3_ADDRESSING_STYLE = env_str(
    "DBSYNC_S3_ADDRESSING_STYLE", "path" if DBSYNC_S3_ENDPOINT_URL else "auto"
)
if DBSYNC_STORAGE not in {"local", "s3"}:
    raise ImproperlyConfigured(f"DBSYNC_STORAGE must be 'local' or 's3', not {DBSYNC_STORAGE!r}.")
if DBSYNC_STORAGE == "s3" and not DBSYNC_S3_BUCKET:
    raise ImproperlyConfigured("DBSYNC_STORAGE=s3 needs DBSYNC_S3_BUCKET.")

# --- dbsync: the Celery pipeline (dbsync/runs/tasks.py) ---
# The longest a task may run (the install of the largest remote); the broker's
# visibility timeout and the result expiry are derived from it (see below).
DBSYNC_TASK_TIME_LIMIT = env_int("DBSYNC_TASK_TIME_LIMIT", 6 * 3600)
# In a fetch task the HTTP client retries a little at once (honouring
# Retry-After), then the task retries later with backoff, freeing its worker slot:
# at most (DBSYNC_TASK_HTTP_RETRIES + 1) * (DBSYNC_TASK_MAX_RETRIES + 1) requests.
DBSYNC_TASK_HTTP_RETRIES = env_int("DBSYNC_TASK_HTTP_RETRIES", 1)
DBSYNC_TASK_MAX_RETRIES = env_int("DBSYNC_TASK_MAX_RETRIES", 3)
DBSYNC_TASK_RETRY_BACKOFF = env_int("DBSYNC_TASK_RETRY_BACKOFF", 30)  # seconds, doubled each time
DBSYNC_TASK_BACKUP = env_bool("DBSYNC_TASK_BACKUP", True)  # a task's run journaled
DBSYNC_HEARTBEAT_SECONDS = env_int("DBSYNC_HEARTBEAT_SECONDS", 60)
# How often a running run's phase and counts are written on its record (dbsync/runs/progress.py).
DBSYNC_PROGRESS_SECONDS = env_float("DBSYNC_PROGRESS_SECONDS", 1.0)
# The bearer token Prometheus sends to /-/metrics (project/metrics.py); empty: none accepted.
DBSYNC_METRICS_TOKEN = env_str("DBSYNC_METRICS_TOKEN", "").strip()
if 0 < len(DBSYNC_METRICS_TOKEN) < 24:
    raise ImproperlyConfigured(
        "DBSYNC_METRICS_TOKEN is too short to be a secret (24 characters or more); make one "
        "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )
DBSYNC_LOCK_WAIT_SECONDS = env_int("DBSYNC_LOCK_WAIT_SECONDS", 30)
DBSYNC_REAP_EVERY_SECONDS = env_int("DBSYNC_REAP_EVERY_SECONDS", 300)
# The dumps of failed runs (in the storage, and in the command's work folders, for
# --resume) are kept this long, and at most this much of them, the oldest removed first.
DBSYNC_STORAGE_KEEP_DAYS = env_int("DBSYNC_STORAGE_KEEP_DAYS", 7)
DBSYNC_STORAGE_KEEP_BYTES = env_bytes("DBSYNC_STORAGE_KEEP_BYTES", 20 * 1024**3)

# --- Celery (project/celery.py reads the CELERY_ prefix) ---
from kombu import Queue  # noqa: E402

from dbsync.runs import queues as dbsync_queues  # noqa: E402  (constants only, no models)

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# A chord counts its members' results: a result backend is required, and results
# must not be ignored.
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
CELERY_TASK_IGNORE_RESULT = False
CELERY_RESULT_EXPIRES = max(
    env_int("CELERY_RESULT_EXPIRES", 2 * 86400), 2 * DBSYNC_TASK_TIME_LIMIT
)
# Redis redelivers an unacknowledged message after the visibility timeout: it must
# be longer than the longest task, or a long install would run twice.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * DBSYNC_TASK_TIME_LIMIT}
CELERY_TASK_TIME_LIMIT = DBSYNC_TASK_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = max(DBSYNC_TASK_TIME_LIMIT - 300, DBSYNC_TASK_TIME_LIMIT * 9 // 10)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long tasks: never reserve work another worker could do
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_DEFAULT_QUEUE = dbsync_queues.SYNC
# One binding key per queue: a message routed to one queue lands in that one only.
CELERY_TASK_QUEUES = [Queue(name, routing_key=name) for name in dbsync_queues.ALL]
CELERY_TASK_ROUTES = {
    "dbsync.tasks.fetch_dump": {"queue": dbsync_queues.FETCH},
    "dbsync.tasks.install_run": {"queue": dbsync_queues.INSTALL},
    "dbsync.tasks.*": {"queue": dbsync_queues.SYNC},
}
# Workers log through LOGGING below, like the web process and the commands.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# In-process tasks, for a machine without a broker (the embedded default).
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat writes each periodic task's last run to the database as it sends it (not every
# 3 minutes): its healthcheck reads it.
CELERY_BEAT_SYNC_EVERY = 1
CELERY_BEAT_SCHEDULE = {
    "dbsync-reap-stale-runs": {
        "task": "dbsync.tasks.reap_stale_runs",
        "schedule": DBSYNC_REAP_EVERY_SECONDS,
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "mail_admins": {
            "class": "django.utils.log.AdminEmailHandler",
            "level": "ERROR",
        },
    },
    "root": {"handlers": ["console"], "level": env_str("DJANGO_LOG_LEVEL", "WARNING")},
    "loggers": {
        # WARNING by default, so that a command run by cron writes to stderr only on
        # trouble; workers set DBSYNC_LOG_LEVEL=INFO.
        "dbsync": {"level": env_str("DBSYNC_LOG_LEVEL", "WARNING"), "propagate": True},
    },
}
