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

from dbsync.runs import queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def command_of(service):
    command = SERVICES[service]["command"]
    return command if isinstance(command, str) else " ".join(command)


APP_SERVICES = ("web", "worker", "beat")


def healthcheck_of(service):
    test = SERVICES[service]["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_the_stack_has_its_services_each_with_a_health_check_of_its_own():
    assert set(SERVICES) == {"migrate", "web", "worker", "beat", "postgres", "redis"}
    for name in ("web", "worker", "beat", "postgres", "redis"):
        assert "start_period" in SERVICES[name]["healthcheck"] or name == "redis", name
    checks = [healthcheck_of(name) for name in APP_SERVICES]
    assert len(set(checks)) == 3, "web, worker and beat share a healthcheck"
    assert "healthcheck web" in checks[0] and "inspect ping" in checks[1]
    assert "healthcheck beat" in checks[2]
    # Not in the image, where every service would inherit it.
    assert "HEALTHCHECK" not in (ROOT / "Dockerfile").read_text()


def test_migrate_runs_once_and_everything_of_the_app_waits_for_it():
    migrate = SERVICES["migrate"]
    assert command_of("migrate") == "python manage.py migrate --noinput"
    assert migrate["restart"] == "no" and "healthcheck" not in migrate
    for name in APP_SERVICES:
        assert SERVICES[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    for name in set(SERVICES) - {"postgres", "redis", "migrate"}:
        assert "migrate" in SERVICES[name]["depends_on"], name


def test_web_runs_the_projects_wsgi_app_with_gunicorn_conf_py_and_nothing_else():
    command = command_of("web")
    assert "migrate" not in command and "collectstatic" not in command
    module = re.fullmatch(r"gunicorn (\S+)\.wsgi", command).group(1)
    assert importlib.import_module(f"{module}.wsgi").application
    # gunicorn reads ./gunicorn.conf.py (the image's WORKDIR is the project).
    config = (ROOT / "gunicorn.conf.py").read_text()
    for name in ("GUNICORN_BIND", "GUNICORN_CERTFILE", "GUNICORN_KEYFILE"):
        assert name in config


def test_each_service_connects_as_its_own_role_and_none_as_the_superuser():
    owner, web = "${DBSYNC_DB_OWNER:-dbsync_owner}", "${DBSYNC_DB_WEB:-dbsync_web}"
    urls = {
        name: SERVICES[name]["environment"]["DATABASE_URL"] for name in ("migrate", *APP_SERVICES)
    }
    roles = {
        name: re.match(r"postgres://(\$\{[^}]+\}|[^:]+):", url)[1] for name, url in urls.items()
    }
    assert roles == {"migrate": owner, "worker": owner, "web": web, "beat": web}
    assert SERVICES["postgres"]["environment"]["POSTGRES_USER"] == "postgres"
    init = "./deploy/postgres:/docker-entrypoint-initdb.d:ro"
    assert init in SERVICES["postgres"]["volumes"]
    assert (ROOT / "deploy" / "postgres" / "10-dbsync-roles.sh").stat().st_mode & 0o111


def test_worker_consumes_every_queue_of_the_project():
    command = command_of("worker")
    assert command.startswith("celery -A project worker")
    consumed = set(re.search(r"-Q (\S+)", command).group(1).split(","))
    assert consumed == set(queues.ALL)


def test_beat_uses_the_database_scheduler():
    assert re.search(r"celery -A project beat .*-S django", command_of("beat"))


def test_environment_names_settings_the_project_reads():
    settings_text = (ROOT / "project" / "settings.py").read_text()
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for service in ("migrate", *APP_SERVICES):
        for name, value in SERVICES[service]["environment"].items():
            if value == "":  # a password of .env blanked: compose's, not the app's
                assert f"${{{name}" in compose_text, name
            else:
                assert f'"{name}"' in settings_text, f"{name} is not read by project/settings.py"
    example = (ROOT / ".env.example").read_text()
    for name in re.findall(r"^([A-Z_]+)=", example, re.M):
        # Either a setting, or a value compose puts into a DATABASE_URL or the
        # postgres service's init script.
        assert f'"{name}"' in settings_text or f"${{{name}" in compose_text, (
            f".env.example sets unknown {name}"
        )
    for name in re.findall(r"\$\{([A-Z_]+):\?", compose_text):
        assert re.search(rf"^{name}=", example, re.M), f".env.example lacks {name}"
    # Commented-out examples: optional, read by gunicorn.conf.py or project/settings.py.
    for name in re.findall(r"^# ([A-Z_]+)=", example, re.M):
        assert name in (ROOT / "gunicorn.conf.py").read_text() or f'"{name}"' in settings_text, (
            f".env.example suggests unknown {name}"
        )
    assert "DJANGO_SECRET_KEY" in example
    assert re.search(r"^DJANGO_DEBUG=0$", example, re.M)


def test_the_example_env_switches_https_on():
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    for name in (
        "DJANGO_SECURE_SSL_REDIRECT",
        "DJANGO_SECURE_COOKIES",
        "DJANGO_SECURE_PROXY_SSL_HEADER",
    ):
        assert example[name] == "1", name
    assert int(example["DJANGO_SECURE_HSTS_SECONDS"]) >= 31536000
    assert example["DJANGO_CSRF_TRUSTED_ORIGINS"].startswith("https://")
    assert "@" in example["DBSYNC_CONTACT"]


def test_volumes_are_declared_and_dumps_are_shared_by_web_worker_and_beat():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # a folder of the project, mounted
                assert (ROOT / source).is_dir(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    mounts = {name: set(SERVICES[name]["volumes"]) for name in APP_SERVICES}
    assert mounts["web"] == mounts["worker"] == mounts["beat"]


def test_the_image_has_what_the_commands_need():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements.txt" in dockerfile
    assert "postgresql-client" in dockerfile and "collectstatic" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
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
