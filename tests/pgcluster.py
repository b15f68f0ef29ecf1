"""A private PostgreSQL cluster for a test that must stop or restart the server: its own
``initdb`` data folder in a temporary directory and a free loopback port, started and
stopped with ``pg_ctl`` (never the machine's shared server, which other tests use).

Run as root (a container), the server's programs run as the ``postgres`` user, as
PostgreSQL requires.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.instance import free_port

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_server_user(command):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PrivateCluster:
    def __init__(self):
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"no initdb in {PG_BIN} (set TEST_PG_BIN)")
        self.root = Path(tempfile.mkdtemp(prefix="dbsync-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.run(
            PG_BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.start()

    def run(self, *command):
        return subprocess.run(
            _as_server_user([str(part) for part in command]),
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    @property
    def options(self):
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"

    def pg_ctl(self, *args):
        """``pg_ctl`` on this cluster, with its options and log, waiting for the result."""
        self.run(
            PG_BIN / "pg_ctl", "-D", self.data, "-o", self.options, "-l", self.root / "log",
            "-w", *args,
        )  # fmt: skip

    def start(self):
        self.pg_ctl("start")

    def restart(self):
        """A fast restart: every session is ended, its open transaction rolled back."""
        self.pg_ctl("-m", "fast", "restart")

    def url(self, db="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def execute(self, sql, params=None, db="postgres"):
        with psycopg.connect(self.url(db), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def destroy(self):
        try:
            self.run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
