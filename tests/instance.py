"""A real second Enhydris instance for the tests: its own PostgreSQL database,
migrated by ``manage.py migrate``, served by gunicorn on a loopback port.

Everything here talks to the instance the way a user would: ``manage.py``
subprocesses, HTTP, or SQL on its own database.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import psycopg
import requests
from urllib3.exceptions import InsecureRequestWarning

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_BASE = PG_URL.rsplit("/", 1)[0]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_execute(sql):
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql)


def instance_env(db_name, var_dir, **extra):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"{PG_BASE}/{db_name}",
        DJANGO_DEBUG="1",
        DJANGO_ALLOWED_HOSTS="*",
        DBSYNC_VAR_DIR=str(var_dir),
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def manage(env, *args, check=True, timeout=600, root=ROOT, **kwargs):
    """``manage.py`` of the code at ``root`` (this checkout unless given)."""
    return subprocess.run(
        [sys.executable, str(root / "manage.py"), *args],
        env=env,
        cwd=root,
        check=check,
        timeout=timeout,
        capture_output=True,
        text=True,
        **kwargs,
    )


class Template:
    """A migrated, empty database that instances are cloned from (fast)."""

    def __init__(self, name=None):
        self.name = name or f"dbsync_tpl_{uuid.uuid4().hex[:8]}"
        self.var_dir = tempfile.mkdtemp(prefix="dbsync-tpl-")
        admin_execute(f'CREATE DATABASE "{self.name}"')
        manage(instance_env(self.name, self.var_dir), "migrate", "-v0")

    def drop(self):
        admin_execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Instance:
    """One Enhydris instance (a remote, from the syncer's point of view)."""

    def __init__(
        self, template, hostname="remote.example.org", name=None, var_dir=None, **settings
    ):
        """``template``: None for a database ``name`` that exists already (kept by an
        earlier run, in ``var_dir``)."""
        self.db_name = name or f"dbsync_remote_{uuid.uuid4().hex[:8]}"
        self.hostname = hostname
        self.var_dir = Path(var_dir or tempfile.mkdtemp(prefix="dbsync-remote-"))
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.env = instance_env(self.db_name, self.var_dir, **settings)
        self.port = None
        self.process = None
        self.scheme = "http"
        if template is not None:
            admin_execute(f'CREATE DATABASE "{self.db_name}" TEMPLATE "{template.name}"')

    @property
    def url(self):
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def manage(self, *args, **kwargs):
        return manage(self.env, *args, **kwargs)

    def generate(self, timeout=600, **options):
        args = ["generate_sample_data"]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        return self.manage(*args, timeout=timeout)

    def shell(self, code):
        """Run Python in the instance's Django (e.g. to change data as a user would)."""
        return self.manage("shell", "-c", code).stdout

    def sql(self, query, params=None):
        with psycopg.connect(f"{PG_BASE}/{self.db_name}", autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else None

    def touch_every_row(self):
        """Rewrite every row of every captured table, unchanged, as a busy remote's day
        would: the next incremental run of a syncer fetches every model again."""
        tables = self.sql(
            "SELECT table_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'dbsync_xid' ORDER BY table_name"
        )
        assert tables, "the instance captures no table"
        for (table,) in tables:
            self.sql(f'UPDATE "{table}" SET dbsync_xid = dbsync_xid')

    def start(self, workers=2, extra_env=None, tls=None, root=ROOT):
        """Serve the instance; ``tls``: a ``trustme.CA`` that issues its certificate (for
        its hostname), and HTTPS is served instead of HTTP; ``root``: the code served
        (another release's tree, say)."""
        self.port = free_port()
        env = dict(self.env, **(extra_env or {}))
        tls_args = []
        self.scheme = "https" if tls else "http"
        if tls:
            cert = tls.issue_cert(self.hostname)
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.var_dir / "tls.pem"))
            tls_args = ["--certfile", str(self.var_dir / "tls.pem")]
            tls_args += ["--keyfile", str(self.var_dir / "tls.pem")]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "project.wsgi",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--threads",
                "4",
                "--timeout",
                "300",
                "--log-level",
                "warning",
                *tls_args,
            ],
            env=env,
            cwd=root,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                # Only whether it answers: the certificate is for the hostname, not this URL.
                with warnings.catch_warnings(action="ignore", category=InsecureRequestWarning):
                    answer = requests.get(f"{self.url}/api/", timeout=10, verify=not tls)
                if answer.status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("the remote instance did not start within 60 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def drop(self):
        self.stop()
        admin_execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
