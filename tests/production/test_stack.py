"""The production path as written: the stack started from its own files.

There is no Docker engine here, so the files are read and run as a container would:

- a fresh virtualenv gets the Dockerfile's own ``pip install`` line (the production
  lock, no development package) and its ``collectstatic`` line;
- deploy/postgres/10-dbsync-roles.sh makes a database and its two roles, uniquely named,
  on this machine's PostgreSQL; a private redis-server is the broker;
- the commands of docker-compose.yml's migrate, web, worker and beat run from that
  virtualenv, each with its service's environment (the image's ENV, .env.example's
  settings, the service's ``environment:``), its hosts and paths mapped to the test's;
  gunicorn serves HTTPS (gunicorn.conf.py's GUNICORN_CERTFILE) with a trustme
  certificate;
- headless Chromium, which resolves dbsync.example.org to 127.0.0.1 and accepts exactly
  the test's server key (``--ignore-certificate-errors-spki-list``: a pin, not "any
  certificate"), logs in, adds a remote (a second instance, tests/instance.py) and
  presses Sync now, which the real worker runs; beat syncs it on a schedule.

Everything started is stopped and everything created is dropped, even on failure. The
services' logs stay in pytest's temporary folder (``stack0/*.log``), for diagnosis.
"""

import base64
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import requests
from selenium.webdriver.support.select import Select

from tests import browser as b
from tests.instance import PG_BASE, Instance, Template, admin_execute, free_port
from tests.production import stack
from tests.production.stack import ROOT, Service, wait_until

HOST = "dbsync.example.org"
PG_SERVER = PG_BASE.rsplit("@", 1)[1]  # host:port of this machine's PostgreSQL
ADMIN_USER, ADMIN_PASSWORD = "operator", secrets.token_urlsafe(16)
STATE = {}  # what one test leaves for the next (they run in file order)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("redis-server", "redis-cli", "psql", "pg_isready")),
    reason="needs redis-server, redis-cli, psql and pg_isready",
)


def run(args, **kwargs):
    kwargs.setdefault("timeout", 600)
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kwargs)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


# --- the virtualenv, as the Dockerfile builds it ------------------------------------------


@pytest.fixture(scope="module")
def venv():
    path = Path(tempfile.mkdtemp(prefix="dbsync-prod-venv-", dir="/tmp"))
    try:
        run(["python3", "-m", "venv", str(path)])
        # The line as written in the Dockerfile, in the project's folder (its WORKDIR),
        # with this machine's network settings for pip (a build's are the host's too).
        env = {**os.environ, "PATH": f"{path}/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(path)}
        run(["/bin/sh", "-c", stack.dockerfile_run_line("pip install")], env=env, timeout=900)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The services' logs, volume and static files (pytest keeps its last few runs')."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="module")
def static_root(venv, work):
    """The Dockerfile's collectstatic line, with the image's ENV; its DJANGO_STATIC_ROOT
    (/app/static, inside the image) becomes a folder of the test."""
    root = work / "static"
    env = {
        **stack.dockerfile_env(),
        "DJANGO_STATIC_ROOT": str(root),
        "DBSYNC_VAR_DIR": str(work / "build-var"),
        "PATH": f"{venv}/bin:/usr/bin:/bin",
    }
    run(["/bin/sh", "-c", stack.dockerfile_run_line("collectstatic")], env=env)
    return root


# --- PostgreSQL roles, Redis, the remote -----------------------------------------------


@pytest.fixture(scope="module")
def database():
    """The database and its two roles, made by the init script of the compose file."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "DBSYNC_DB_NAME": f"dbsync_prod_{tag}",
        "DBSYNC_DB_OWNER": f"dbsync_owner_{tag}",
        "DBSYNC_DB_OWNER_PASSWORD": secrets.token_hex(12),
        "DBSYNC_DB_WEB": f"dbsync_web_{tag}",
        "DBSYNC_DB_WEB_PASSWORD": secrets.token_hex(12),
    }
    host, port = PG_SERVER.split(":")
    env = {
        **names,
        "PATH": "/usr/bin:/bin",
        "PGHOST": host,
        "PGPORT": port,
        "POSTGRES_USER": "postgres",
    }
    try:
        run(["deploy/postgres/10-dbsync-roles.sh"], env=env, timeout=60)
        yield names
    finally:
        owner, web = names["DBSYNC_DB_OWNER"], names["DBSYNC_DB_WEB"]
        admin_execute(f'DROP DATABASE IF EXISTS "{names["DBSYNC_DB_NAME"]}" WITH (FORCE)')
        for role in (owner, web):
            if psql_value(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"):
                admin_execute(f'DROP OWNED BY "{role}"')  # its SET ON PARAMETER right
                admin_execute(f'DROP ROLE "{role}"')


def psql_value(query, url=f"{PG_BASE}/postgres"):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchone()[0]


class PrivateRedis:
    def __init__(self, folder):
        self.port, self.folder, self.process = free_port(), folder, None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self.ping, 20, "redis-server to answer", every=0.05)

    def ping(self):
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
        )
        return done.stdout.strip() == "PONG"

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def redis_server(work):
    server = PrivateRedis(work)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote():
    """A second Enhydris instance with sample data, on plain HTTP on loopback."""
    template = Template()
    instance = None
    try:
        instance = Instance(template, hostname="remote.example.org")
        instance.generate(stations=5, seed=12, files_per_station=0)
        instance.start()
        yield instance
    finally:
        if instance is not None:
            instance.drop()
        template.drop()


# --- the stack ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(work):
    trustme = pytest.importorskip("trustme")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    issued = ca.issue_cert(HOST, "127.0.0.1")
    paths = {"ca": work / "ca.pem", "cert": work / "server.crt", "key": work / "server.key"}
    ca.cert_pem.write_to_path(paths["ca"])
    issued.cert_chain_pems[0].write_to_path(paths["cert"])
    for pem in issued.cert_chain_pems[1:]:
        pem.write_to_path(paths["cert"], append=True)
    issued.private_key_pem.write_to_path(paths["key"])
    leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    paths["spki_sha256"] = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return paths


class Stack:
    """The compose services of the application, as processes."""

    def __init__(self, work, venv, static_root, database, redis_server, certificate):
        self.work, self.venv, self.redis = work, venv, redis_server
        self.ca = certificate["ca"]
        self.compose = stack.compose()
        self.port = free_port()
        self.database = database
        # .env as an operator makes it from .env.example: a secret key of their own, the
        # database's names and passwords; and here gunicorn's own HTTPS and bind.
        self.dotenv = stack.read_env_file(stack.ENV_EXAMPLE)
        self.dotenv.update(
            database,
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            POSTGRES_PASSWORD="not-used-here",
            GUNICORN_BIND=f"127.0.0.1:{self.port}",
            GUNICORN_CERTFILE=str(certificate["cert"]),
            GUNICORN_KEYFILE=str(certificate["key"]),
            # So that beat's healthcheck sees it send the reaper within the test.
            DBSYNC_REAP_EVERY_SECONDS="5",
        )
        var = work / "var-lib-dbsync"  # the dbsync-data volume, shared by all three
        var.mkdir()
        self.relocation = stack.Relocation(
            postgres=PG_SERVER,
            redis=f"127.0.0.1:{redis_server.port}",
            paths={"/var/lib/dbsync": var, "/app/static": static_root},
        )
        self.base = {
            "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "HOSTNAME": socket.gethostname(),  # as Docker sets it in a container
        }
        self.services = {}

    @property
    def url(self):
        return f"https://{HOST}:{self.port}"

    @property
    def health_url(self):
        return f"https://127.0.0.1:{self.port}/-/health/"

    def env(self, name):
        return stack.service_env(
            self.compose["services"][name], self.dotenv, self.dotenv, self.relocation, self.base
        )

    def args(self, name):
        args = stack.command_args(self.compose["services"][name], self.dotenv)
        executable = shutil.which(args[0], path=self.base["PATH"])
        assert executable.startswith(str(self.venv)), f"{name}: {args[0]} is {executable}"
        return args

    def run_once(self, name, timeout=300):
        return run(self.args(name), env=self.env(name), timeout=timeout)

    def start(self, name):
        log = self.work / f"{name}.log"
        self.services[name] = Service(
            args=self.args(name), env=self.env(name), log_path=log, name=name
        )
        return self.services[name]

    def manage(self, service, *args, **extra_env):
        """``docker compose exec <service> python manage.py ...``."""
        return run(["python", "manage.py", *args], env={**self.env(service), **extra_env})

    def sql(self, query, role="DBSYNC_DB_OWNER"):
        """A query as one of the application's roles."""
        name, password = self.database[role], self.database[f"{role}_PASSWORD"]
        url = f"postgres://{name}:{password}@{PG_SERVER}/{self.database['DBSYNC_DB_NAME']}"
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else None

    def health(self):
        return requests.get(self.health_url, verify=str(self.ca), timeout=15)

    def get(self, path, headers=None):
        """GET over HTTPS with the public host name (its certificate names 127.0.0.1 too)."""
        url = f"https://127.0.0.1:{self.port}{path}"
        headers = {"Host": f"{HOST}:{self.port}", **(headers or {})}
        return requests.get(url, headers=headers, verify=str(self.ca), timeout=30)

    def web_is_healthy(self):
        for name, service in self.services.items():
            assert service.alive(), f"{name} exited:\n{service.output()[-4000:]}"
        try:
            return self.health().status_code == 200
        except requests.RequestException:
            return False

    def healthcheck(self, name, check=True):
        service = self.compose["services"][name]
        argv, timeout = stack.healthcheck_args(service, self.dotenv)
        if name in ("web", "worker", "beat"):
            env = self.env(name)
        elif name == "redis":
            # The container's Redis listens on redis-cli's default port; ours does not.
            assert argv[0] == "redis-cli"
            argv, env = [argv[0], "-p", str(self.redis.port), *argv[1:]], self.base
        else:  # postgres: pg_isready, as written, against this machine's server
            env = self.base
        # Within the healthcheck's own timeout, or compose would count it failed.
        done = subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"{name}: {argv}\n{done.stdout}\n{done.stderr}"
        return done

    def stop(self):
        for service in reversed(list(self.services.values())):
            service.stop()

    def logs(self):
        return "\n".join(
            f"--- {name} ---\n{service.output()[-4000:]}"
            for name, service in self.services.items()
        )


@pytest.fixture(scope="module")
def app(work, venv, static_root, database, redis_server, certificate):
    services = Stack(work, venv, static_root, database, redis_server, certificate)
    try:
        services.run_once("migrate")
        # docker compose exec web python manage.py createsuperuser --noinput
        services.manage(
            "web",
            "createsuperuser",
            "--noinput",
            f"--username={ADMIN_USER}",
            "--email=operator@example.org",
            DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD,
        )
        for name in ("web", "worker", "beat"):
            services.start(name)
        wait_until(services.web_is_healthy, 90, "web's /-/health/ to answer 200")
        wait_until(
            lambda: services.healthcheck("worker", check=False).returncode == 0,
            120,
            "the worker to answer its healthcheck",
            every=1,
        )
        yield services
    except BaseException:
        print(services.logs())
        raise
    finally:
        services.stop()


@pytest.fixture(scope="module")
def chromium(work, certificate):
    """Headless Chromium that resolves the public host name to the loopback and accepts
    the test's server certificate by its key (and no other certificate in error)."""
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("chromium or chromedriver is not installed (apt-get install chromium-driver)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        *b.CHROMIUM_ARGS,
        f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={certificate['spki_sha256']}",
        f"--user-data-dir={work / 'chromium'}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    browser = webdriver.Chrome(options=options, service=service)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


# --- the tests, in the order an operator meets things -----------------------------------


def test_the_image_installs_the_production_lock_only(venv):
    python = str(venv / "bin" / "python")
    for module in ("django", "celery", "kombu.transport.redis", "gunicorn", "whitenoise"):
        run([python, "-c", f"import {module}"])
    for dev_only in ("pytest", "selenium", "trustme"):
        done = subprocess.run([python, "-c", f"import {dev_only}"], capture_output=True)
        assert done.returncode != 0, f"{dev_only} is installed by requirements.txt"
    run([python, "-m", "pip", "check"])


def test_no_role_is_a_superuser_and_only_the_owner_may_turn_key_checks_off(app, database):
    owner, web = database["DBSYNC_DB_OWNER"], database["DBSYNC_DB_WEB"]
    supers = psql_value(
        f"SELECT count(*) FROM pg_roles WHERE rolsuper AND rolname IN ('{owner}', '{web}')"
    )
    assert supers == 0
    assert app.sql("SET session_replication_role = replica") is None
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.sql("SET session_replication_role = replica", role="DBSYNC_DB_WEB")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.sql("CREATE TABLE intruder (id int)", role="DBSYNC_DB_WEB")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.sql("DROP TABLE auth_user", role="DBSYNC_DB_WEB")
    # ... while it reads and writes the rows of every table migrate made.
    [[users]] = app.sql("SELECT count(*) FROM auth_user", role="DBSYNC_DB_WEB")
    assert users == 1
    # The services connect as the roles the compose file gives them.
    for name, role in (("migrate", owner), ("worker", owner), ("web", web), ("beat", web)):
        assert f"//{role}:" in app.env(name)["DATABASE_URL"], name


def test_every_healthcheck_of_the_compose_file_succeeds(app):
    for name, service in app.compose["services"].items():
        if "healthcheck" in service:
            app.healthcheck(name)
    assert set(app.compose["services"]) - {"migrate"} <= {
        name for name, service in app.compose["services"].items() if "healthcheck" in service
    }
    body = app.healthcheck("web").stdout
    assert '"database": "ok"' in body and '"broker": "ok"' in body


def test_an_operator_adds_a_remote_and_the_worker_syncs_it(app, chromium, remote):
    b.login(chromium, app.url, ADMIN_USER, ADMIN_PASSWORD)
    assert chromium.current_url.startswith(f"https://{HOST}:")

    # A styled admin: the manifest's hashed base.css, loaded, with its rules applied.
    sheets = chromium.execute_script(
        "return [...document.styleSheets].filter(s => s.href)"
        ".map(s => [s.href, s.cssRules.length])"
    )
    base = [
        (href, rules) for href, rules in sheets if re.search(r"/base\.[0-9a-f]{12}\.css$", href)
    ]
    assert base and base[0][1] > 100, sheets
    header = "return getComputedStyle(document.querySelector('#header')).backgroundColor"
    assert chromium.execute_script(header) == "rgb(65, 118, 144)"  # base.css's --header-bg
    css = app.get(base[0][0].split(str(app.port), 1)[1], headers={"Accept-Encoding": "gzip"})
    assert css.status_code == 200 and css.headers.get("Content-Encoding") == "gzip"

    # The remote, through the admin's form.
    chromium.get(f"{app.url}/admin/dbsync/database/add/")
    fields = {"name": "sample", "ip_address": "127.0.0.1", "hostname": remote.hostname,
              "port": str(remote.port)}  # fmt: skip
    for name, value in fields.items():
        field = b.by_css(chromium, f"#id_{name}")[0]
        field.clear()
        field.send_keys(value)
    b.by_css(chromium, "[name=_save]")[0].click()
    b.wait_for(lambda: b.messages(chromium), 60, what="the remote to be saved")
    assert "was added successfully" in b.messages(chromium)[0], b.messages(chromium)
    [[pk]] = app.sql("SELECT id FROM dbsync_database WHERE name = 'sample'")
    STATE["remote"] = pk

    chromium.get(f"{app.url}/admin/dbsync/database/{pk}/change/")
    b.by_css(chromium, "#sync-now")[0].click()
    b.wait_for(lambda: b.messages(chromium), 60, what="Sync now's message")
    [message] = b.messages(chromium)
    run_id = int(re.search(r"Queued a sync of sample: run #(\d+)", message)[1])

    def succeeded():
        chromium.get(f"{app.url}/admin/dbsync/syncrun/{run_id}/change/")
        text = b.by_css(chromium, "#content-main")[0].text
        assert "failed" not in text, text
        return "succeeded" in text and text

    page = b.wait_for(succeeded, 240, every=1, what="the run to succeed")
    [[trigger, started_by, counts]] = app.sql(
        f"SELECT trigger, started_by, model_counts FROM dbsync_syncrun WHERE id = {run_id}"
    )
    assert (trigger, started_by) == ("admin", ADMIN_USER)
    [[stations]] = remote.sql("SELECT count(*) FROM hcore_station")
    [[replicated]] = app.sql(
        "SELECT count(*) FROM hcore_station s JOIN hcore_gentity g ON g.id = s.gpoint_ptr_id "
        f"WHERE g.original_db_id = {pk}"
    )
    assert replicated == stations == 5
    station_counts = next(c for label, c in counts.items() if label.lower().endswith("station"))
    assert station_counts["created"] == stations
    assert re.search(rf"station\s+{stations}\s+{stations}\b", page, re.I), page  # fetched, created
    # The worker ran it (the web process only queued it).
    worker = app.services["worker"].output()
    assert re.search(r"Task dbsync\.tasks\.install_run\[[^]]+\] succeeded", worker), worker[-3000:]
    assert "CELERY_TASK_ALWAYS_EAGER" not in app.env("web")
    # The owner role may switch the triggers off: the install checked its keys in bulk.
    assert "checked row by row" not in worker


def test_the_public_api_serves_the_replica(app):
    """As the web role, which reads the rows the owner's worker wrote."""
    if "remote" not in STATE:
        pytest.skip("needs the remote that the previous test adds")
    assert app.get("/api/").status_code == 200
    for path in ("hcore/station/", "hcore/station/keys/", "hcore/timeseries/records-summary/"):
        response = app.get(f"/api/{path}")
        assert response.status_code == 200, (path, response.text[:1000])
    stations = app.get("/api/hcore/station/").text
    assert stations.count('"model": "hcore.station"') == 5, stations[:1000]


def test_beat_syncs_the_remote_on_its_schedule(app, chromium):
    if "remote" not in STATE:
        pytest.skip("needs the remote that the previous test adds")
    pk = STATE["remote"]
    # The schedule, set in the remote's admin page: every minute ...
    chromium.get(f"{app.url}/admin/dbsync/database/{pk}/change/")
    Select(b.by_css(chromium, "#id_schedule_kind")[0]).select_by_value("interval")
    b.by_css(chromium, "#id_interval_minutes")[0].send_keys("1")
    b.by_css(chromium, "[name=_save]")[0].click()
    b.wait_for(lambda: b.messages(chromium), 60, what="the schedule to be saved")
    assert "was changed successfully" in b.messages(chromium)[0], b.messages(chromium)
    # ... then every 10 seconds, which a schedule in minutes cannot say: the operator
    # changes the interval of the remote's periodic task, as django-celery-beat's admin
    # would (its save tells beat to reload its schedule).
    app.manage(
        "web",
        "shell",
        "-c",
        "from django_celery_beat.models import IntervalSchedule as I\n"
        "from dbsync.models import Database\n"
        "from dbsync.runs.schedules import periodic_task_of\n"
        f"task = periodic_task_of(Database.objects.get(pk={pk}))\n"
        "task.interval, _ = I.objects.get_or_create(every=10, period=I.SECONDS)\n"
        "task.save()",
    )
    query = f"SELECT status FROM dbsync_syncrun WHERE database_id = {pk} AND trigger = 'beat'"

    def a_beat_run_succeeded():
        statuses = {status for [status] in app.sql(query)}
        assert "failed" not in statuses, app.logs()
        return "succeeded" in statuses

    wait_until(a_beat_run_succeeded, 120, "a run started by beat to succeed", every=1)
    assert "Sending due task" in app.services["beat"].output()
    # Unscheduled again, from the admin: beat sends nothing more.
    chromium.get(f"{app.url}/admin/dbsync/database/{pk}/change/")
    Select(b.by_css(chromium, "#id_schedule_kind")[0]).select_by_value("none")
    b.by_css(chromium, "[name=_save]")[0].click()
    b.wait_for(lambda: b.messages(chromium), 60, what="the schedule to be cleared")
    [[enabled]] = app.sql(
        f"SELECT enabled FROM django_celery_beat_periodictask WHERE args = '[{pk}]' "
        "AND task = 'dbsync.tasks.sync_remote'"  # its weekly verification is a task apart
    )
    assert not enabled


def test_beats_healthcheck_fails_when_beat_has_stopped_sending(app):
    reaper = "name = 'dbsync-reap-stale-runs'"
    last_run = f"SELECT last_run_at FROM django_celery_beat_periodictask WHERE {reaper}"
    wait_until(lambda: app.sql(last_run)[0][0], 60, "beat to send the reaper")
    app.healthcheck("beat")

    app.services["beat"].stop()
    app.sql(
        "UPDATE django_celery_beat_periodictask SET last_run_at = now() - interval '1 hour', "
        f"date_changed = now() - interval '1 hour' WHERE {reaper}"
    )
    done = app.healthcheck("beat", check=False)
    assert done.returncode == 1 and "beat last sent dbsync-reap-stale-runs" in done.stderr

    app.start("beat")  # a restarted beat sends the overdue reaper at once
    wait_until(
        lambda: app.healthcheck("beat", check=False).returncode == 0,
        60,
        "beat's healthcheck to pass again",
        every=1,
    )


def test_health_fails_while_the_broker_is_stopped(app, redis_server):
    redis_server.stop()
    try:
        response = app.health()
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "ok"
        assert response.json()["checks"]["broker"].startswith("failed")
        assert app.healthcheck("web", check=False).returncode == 1
    finally:
        redis_server.start()
    wait_until(lambda: app.health().status_code == 200, 30, "health to come back")


def test_health_fails_while_the_database_refuses_connections(app, database):
    name = database["DBSYNC_DB_NAME"]
    admin_execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        admin_execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        response = app.health()
        assert response.status_code == 503
        assert response.json()["checks"]["database"].startswith("failed")
        assert response.json()["checks"]["broker"] == "ok"
        assert app.healthcheck("web", check=False).returncode == 1
    finally:
        admin_execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_until(lambda: app.health().status_code == 200, 30, "health to come back")
