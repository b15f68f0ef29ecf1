"""docker-compose.yml, read as a user of it would: does every service refer to
things that exist in this project? (No Docker engine runs here; when the compose
plugin is present, ``docker compose config`` validates the file too.)"""

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dbsync import queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def command_of(service):
    command = SERVICES[service]["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_the_stack_has_its_five_services_with_health_checks():
    assert set(SERVICES) == {"web", "worker", "beat", "postgres", "redis"}
    for name in ("web", "worker", "postgres", "redis"):
        assert "healthcheck" in SERVICES[name], name


def test_web_runs_migrations_and_the_projects_wsgi_app():
    command = command_of("web")
    assert "manage.py migrate" in command and "collectstatic" in command
    module = re.search(r"gunicorn (\S+)\.wsgi", command).group(1)
    assert importlib.import_module(f"{module}.wsgi").application


def test_worker_consumes_every_queue_of_the_project():
    command = command_of("worker")
    assert command.startswith("celery -A project worker")
    consumed = set(re.search(r"-Q (\S+)", command).group(1).split(","))
    assert consumed == set(queues.ALL)


def test_beat_uses_the_database_scheduler():
    assert re.search(r"celery -A project beat .*-S django", command_of("beat"))


def test_environment_names_settings_the_project_reads():
    settings_text = (ROOT / "project" / "settings.py").read_text()
    app_env = SERVICES["worker"]["environment"]
    for name in app_env:
        assert f'"{name}"' in settings_text, f"{name} is not read by project/settings.py"
    example = (ROOT / ".env.example").read_text()
    for name in re.findall(r"^([A-Z_]+)=", example, re.M):
        if name != "POSTGRES_PASSWORD":
            assert f'"{name}"' in settings_text, f".env.example sets unknown {name}"
    assert "DJANGO_SECRET_KEY" in example


def test_volumes_are_declared_and_dumps_are_shared_by_web_worker_and_beat():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name} uses undeclared volume {source}"
    mounts = {name: set(SERVICES[name]["volumes"]) for name in ("web", "worker", "beat")}
    assert mounts["web"] == mounts["worker"] == mounts["beat"]


def test_the_image_has_what_the_commands_need():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile and "postgresql-client" in dockerfile
    requirements = (ROOT / "requirements.txt").read_text().lower()
    for package in ("gunicorn", "celery", "django-celery-beat", "psycopg", "redis"):
        assert package in requirements


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed here",
)
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text((ROOT / ".env.example").read_text())
    done = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
