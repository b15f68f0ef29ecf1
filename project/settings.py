"""Settings for a dbsync / Enhydris instance, read from the environment.

Every setting that differs between machines comes from an environment variable
(README.md, "Settings", lists them all). With none set, the instance runs on a
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
    "django.middleware.security.SecurityMiddleware",
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
DBSYNC_BACKUP_KEEP = env_int("DBSYNC_BACKUP_KEEP", 7)
DBSYNC_MAX_DELETE = env_str("DBSYNC_MAX_DELETE", "50%")
DBSYNC_MAX_DELETE_MIN = env_int("DBSYNC_MAX_DELETE_MIN", 10)
DBSYNC_HTTP_TIMEOUT = env_float("DBSYNC_HTTP_TIMEOUT", 60.0)
DBSYNC_HTTP_RETRIES = env_int("DBSYNC_HTTP_RETRIES", 4)
DBSYNC_HTTP_BACKOFF = env_float("DBSYNC_HTTP_BACKOFF", 1.0)
DBSYNC_MAX_RESPONSE_BYTES = env_int("DBSYNC_MAX_RESPONSE_BYTES", 2 * 1024**3)
DBSYNC_OVERLAP_SECONDS = env_int("DBSYNC_OVERLAP_SECONDS", 300)
DBSYNC_STALE_SECONDS = env_int("DBSYNC_STALE_SECONDS", 900)
DBSYNC_BATCH_SIZE = env_int("DBSYNC_BATCH_SIZE", 5_000)

# --- Celery (project/celery.py reads the CELERY_ prefix) ---
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

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
