"""/-/health/ against the real database and a real Redis broker.

A stopped broker is a real Redis of the test's own, shut down; a stopped database is
exercised by the production smoke test (tests/production/)."""

import shutil
import subprocess
import time

import pytest
import redis

from project.celery import app
from tests.instance import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def private_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield process, f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


@pytest.fixture
def broker(private_redis):
    process, url = private_redis
    saved = {key: app.conf[key] for key in ("broker_url", "task_always_eager")}
    app.conf.update(broker_url=url, task_always_eager=False)
    yield process
    app.conf.update(saved)


def test_healthy_whatever_the_host_header(client, settings, broker):
    settings.ALLOWED_HOSTS = ["dbsync.example.org"]
    settings.SECURE_SSL_REDIRECT = True
    for host in ("localhost", "127.0.0.1:8000", "unknown.example.com", "[::1]"):
        response = client.get("/-/health/", HTTP_HOST=host)
        assert response.status_code == 200, host
        assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
        assert response["Cache-Control"] == "no-store"
    # Anything else still meets ALLOWED_HOSTS and the HTTPS redirect.
    assert client.get("/api/", HTTP_HOST="unknown.example.com").status_code == 400
    assert client.get("/api/", HTTP_HOST="dbsync.example.org").status_code == 301


def test_unhealthy_when_the_broker_is_down(client, broker, caplog):
    broker.kill()
    broker.wait()
    started = time.monotonic()
    response = client.get("/-/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("failed: ")
    assert "redis://" not in response.content.decode()
    assert time.monotonic() - started < 30  # a healthcheck's own timeout is longer
    # The failure is logged once as a warning, and not as an ERROR (which mails the admins).
    assert "the broker check failed" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
