"""Real Celery workers and beat for the tests: subprocesses on a Redis of their own.

The test process and its workers share the broker and result databases named by
TEST_CELERY_BROKER_URL / TEST_CELERY_RESULT_URL (Redis DBs 5 and 6 by default,
flushed at the start), and the pytest-django test database.
"""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from django.conf import settings

from dbsync.runs import queues as dbsync_queues
from project.celery import app
from tests.instance import ROOT

BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")
RESULT_URL = os.environ.get("TEST_CELERY_RESULT_URL", "redis://127.0.0.1:6379/6")
CELERY = str(Path(sys.executable).parent / "celery")

# Fast failures: the client retries once at once, the task once after ~1 s.
FAST_RETRIES = {
    "DBSYNC_HTTP_BACKOFF": "0.05",
    "DBSYNC_TASK_HTTP_RETRIES": "1",
    "DBSYNC_TASK_MAX_RETRIES": "1",
    "DBSYNC_TASK_RETRY_BACKOFF": "1",
    "DBSYNC_HEARTBEAT_SECONDS": "1",
}


def use_test_broker(broker_url=BROKER_URL, result_url=RESULT_URL):
    """Point this process's Celery app at the test broker and result backend."""
    app.conf.update(broker_url=broker_url, result_backend=result_url, task_always_eager=False)
    app._pool = None  # a pool made before would still point at the old broker
    app.amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def flush_redis():
    for url in (BROKER_URL, RESULT_URL):
        redis.Redis.from_url(url).flushdb()


def purge_queues():
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in dbsync_queues.ALL:
            channel.queue_purge(name)


def local_env(**extra):
    """The environment of a process of this instance on the test database."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        DJANGO_DEBUG="1",
        PYTHONUNBUFFERED="1",
        CELERY_BROKER_URL=BROKER_URL,
        CELERY_RESULT_BACKEND=RESULT_URL,
        DBSYNC_LOG_LEVEL="INFO",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: tuple = dbsync_queues.ALL
    concurrency: int = 8
    env: tuple = ()  # ((key, value), ...): hashable, so that specs compare

    @classmethod
    def of(cls, name, queues=dbsync_queues.ALL, concurrency=8, **env):
        return cls(name, tuple(queues), concurrency, tuple(sorted(env.items())))


@dataclass
class Process:
    """A celery subprocess, its own process group, its output in a file."""

    args: list
    env: dict
    log_path: Path
    log_mode: str = "w"  # "a": a restarted process keeps its earlier output
    popen: subprocess.Popen = field(init=False)

    def __post_init__(self):
        self.log = open(self.log_path, self.log_mode)  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if not self.alive():
                raise RuntimeError(f"{self.args[:4]} exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no {text!r} in the output of {self.args[:4]} in {timeout} s")

    def children(self):
        done = subprocess.run(
            ["ps", "--ppid", str(self.pid), "-o", "pid="], capture_output=True, text=True
        )
        return [int(p) for p in done.stdout.split()]

    def kill9(self):
        os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout=30):
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        else:
            # Children of a dead leader (a worker's pool) may outlive it.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


class Cluster:
    """The workers of the tests; a test asks for the set it needs (``use``), and the
    running set is reused when it is the same."""

    def __init__(self, tmp, base_env):
        self.tmp = Path(tmp)
        self.base_env = base_env
        self.specs = ()
        self.workers = {}
        self.started = 0

    def use(self, *specs):
        if specs == self.specs and all(w.alive() for w in self.workers.values()):
            return self.workers
        self.stop()
        self.specs = specs
        for spec in specs:
            self.workers[spec.name] = self.start_worker(spec)
        self.wait_ready()
        return self.workers

    def start_worker(self, spec):
        self.started += 1
        var_dir = self.tmp / f"var-{spec.name}-{self.started}"
        var_dir.mkdir()
        env = local_env(**{**self.base_env, "DBSYNC_VAR_DIR": var_dir, **dict(spec.env)})
        args = [
            CELERY,
            "-A",
            "project",
            "worker",
            "-l",
            "info",
            "-c",
            str(spec.concurrency),
            "-Q",
            ",".join(spec.queues),
            "-n",
            f"{spec.name}-{self.started}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        log_path = self.tmp / f"worker-{spec.name}-{self.started}.log"
        process = Process(args, env, log_path)
        process.node = f"{spec.name}-{self.started}@"
        process.var_dir = var_dir
        return process

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        wanted = {w.node for w in self.workers.values()}
        while time.monotonic() < deadline:
            for worker in self.workers.values():
                if not worker.alive():
                    raise RuntimeError(f"worker exited:\n{worker.output()[-3000:]}")
            replies = app.control.ping(timeout=0.5) or []
            names = {name for reply in replies for name in reply}
            if all(any(n.startswith(node) for n in names) for node in wanted):
                return
        raise TimeoutError("the workers did not answer within 120 s")

    def stop(self):
        for worker in self.workers.values():
            worker.stop()
        self.workers = {}
        self.specs = ()


def start_beat(tmp, base_env):
    env = local_env(**base_env)
    args = [CELERY, "-A", "project", "beat", "-l", "info", "-S", "django", "--max-interval", "1"]
    return Process(args, env, Path(tmp) / f"beat-{time.monotonic_ns()}.log")
