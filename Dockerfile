# One image for web, worker, beat and the one-shot migrate service (docker-compose.yml
# says which runs what, and each one's healthcheck: none is set here, where all four
# would inherit it). tests/production/test_stack.py runs this file's `pip install` and
# `collectstatic` lines in a fresh virtualenv.
FROM python:3.11-slim-bookworm

# DJANGO_STATIC_ROOT: collectstatic's output, in the image, where WhiteNoise serves it
# from at run time.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DBSYNC_VAR_DIR=/var/lib/dbsync \
    DJANGO_STATIC_ROOT=/app/static
# pg_dump: the pre-sync backup of the local PostgreSQL database (15, as the server).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
# The production lock only: every package pinned, each file checked against its hash.
RUN pip install --no-cache-dir --require-hashes -r requirements.txt
COPY . .
# The admin's CSS and JavaScript, hashed and compressed (the manifest storage answers
# 500 for a file missing from its manifest). The key is a throwaway: collectstatic
# signs nothing, and the settings refuse to load without one.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret python manage.py collectstatic --noinput -v0
# The code and the static files stay root's; the application writes only its volume.
RUN useradd --system --home /app dbsync && mkdir -p /var/lib/dbsync \
    && chown dbsync /var/lib/dbsync
USER dbsync
EXPOSE 8000
# gunicorn.conf.py: bind, workers, timeout and TLS from the environment.
CMD ["gunicorn", "project.wsgi"]
