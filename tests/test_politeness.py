"""At most DBSYNC_MAX_REQUESTS_PER_REMOTE requests in flight to one remote, across
threads and processes (dbsync.engine.request_slots, held by every RemoteClient request).

A real loopback server counts the requests it is answering: one counts from the
request's arrival until just before the last byte of its answer is written, a span
that lies inside the client's hold of its slot, so the count can never be over the
limit when the slots work (and is far over it when they do not: see the unlimited
case). The answers are slow, and pause between their headers and the rest of their
body, so that a slot given back before the body is read would show.
"""

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from django.core.management import call_command
from django.db import connection

from dbsync.engine import request_slots
from dbsync.engine.deadlines import RunDeadline
from dbsync.engine.errors import DeadlineExceeded
from dbsync.engine.remote import RemoteClient
from dbsync.engine.request_slots import SlotTimeout, request_slot
from dbsync.models import Database, SyncRun
from tests.instance import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b"[" + b"0," * 2000 + b"0]"  # a JSON list: a whole dump to download() too


class CountingServer:
    """A loopback HTTP server that counts the requests in flight; ``answer(handler)``
    gives (status, headers, body) and may sleep."""

    def __init__(self, answer, pause=0.05):
        self.in_flight = 0
        self.max_in_flight = 0
        self.total = 0
        self.spans = []  # (X-Test-Pid header, arrival, end) per request
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                arrival = time.monotonic()
                with server.lock:
                    server.in_flight += 1
                    server.total += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                counted = True
                try:
                    status, headers, body = answer(self)
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": len(body)}.items():
                        self.send_header(name, str(value))
                    self.end_headers()
                    half = len(body) // 2
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    time.sleep(pause)
                    with server.lock:
                        server.in_flight -= 1
                        counted = False
                    self.wfile.write(body[half:])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        if counted:
                            server.in_flight -= 1
                        server.spans.append(
                            (self.headers.get("X-Test-Pid"), arrival, time.monotonic())
                        )

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def slow(delay=0.1):
    def answer(handler):
        time.sleep(delay)
        return 200, {"Content-Type": "application/json"}, BODY

    return answer


@pytest.fixture
def server():
    server = CountingServer(slow())
    yield server
    server.close()


@pytest.fixture
def remote(server):
    return Database.objects.create(
        name="slow", hostname="slow.example.org", ip_address="127.0.0.1", port=server.port
    )


@pytest.fixture(autouse=True)
def _slot_settings(settings):
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 4
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 60


def fetch_in_threads(remote, threads, requests_each, tmp_path):
    """``threads`` threads, each with its own client, alternately get_json and download."""
    client = RemoteClient(remote, retries=0)
    errors = []

    def work(number):
        own = client.clone()
        try:
            for i in range(requests_each):
                if i % 2:
                    own.download("/slow/", tmp_path / f"{number}-{i}.json")
                else:
                    assert own.get_json("/slow/") == [0] * 2001
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    assert not errors, errors


def test_threads_of_one_process_share_the_limit(server, remote, tmp_path):
    fetch_in_threads(remote, threads=12, requests_each=4, tmp_path=tmp_path)
    assert server.total == 48
    assert 1 < server.max_in_flight <= 4


def test_the_server_sees_more_at_once_without_a_limit(server, remote, settings, tmp_path):
    """The control: the same load with no limit (0) is not held to 4 by anything else."""
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 0
    fetch_in_threads(remote, threads=12, requests_each=2, tmp_path=tmp_path)
    assert server.max_in_flight > 4


def test_the_limit_without_postgresql_is_kept_in_the_process(
    server, remote, settings, monkeypatch, tmp_path
):
    """On SQLite (one process) the slots are counted in the process alone."""
    monkeypatch.setitem(request_slots._state, "backend", request_slots._LocalSlots())
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 3
    fetch_in_threads(remote, threads=8, requests_each=3, tmp_path=tmp_path)
    assert server.total == 24
    assert 1 < server.max_in_flight <= 3


def test_slot_locks_stay_apart_from_the_sync_lock():
    from dbsync.engine.request_slots import MAX_SLOTS, SLOT_NAMESPACE
    from dbsync.runs.locking import LOCK_NAMESPACE

    assert not SLOT_NAMESPACE <= LOCK_NAMESPACE < SLOT_NAMESPACE + MAX_SLOTS
    assert SLOT_NAMESPACE + MAX_SLOTS < 2**31  # an int4 key


def test_remotes_have_limits_of_their_own(server, remote, settings, tmp_path):
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    other = Database.objects.create(
        name="other", hostname="other.example.org", ip_address="127.0.0.1", port=server.port
    )
    results = []
    holder = threading.Thread(
        target=lambda: results.append(RemoteClient(other, retries=0).get_json("/slow/"))
    )
    with request_slot(remote):
        holder.start()
        holder.join(timeout=30)
    assert results == [[0] * 2001]


# --- several processes ------------------------------------------------------------------------

CHILD = """
import os, sys, threading, time
from pathlib import Path
from dbsync.models import Database
from dbsync.engine.remote import RemoteClient
from dbsync.engine.request_slots import request_slot

remote = Database.objects.get(pk={pk})
mode, sync_dir = {mode!r}, Path({sync_dir!r})
if mode == "hold":
    with request_slot(remote):
        (sync_dir / f"held-{{os.getpid()}}").touch()
        time.sleep(120)
    sys.exit(0)
client = RemoteClient(remote, retries=0)
(sync_dir / f"ready-{{os.getpid()}}").touch()
deadline = time.monotonic() + 60
while not (sync_dir / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go within 60 s")
    time.sleep(0.01)
errors = []

def work():
    own = client.clone()
    own.session.headers["X-Test-Pid"] = str(os.getpid())
    try:
        for _ in range({requests_each}):
            own.get_json("/slow/")
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=work) for _ in range({threads})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(timeout=120)
print("errors:", errors)
sys.exit(1 if errors else 0)
"""


def start_child(remote, mode, sync_dir, limit, threads=0, requests_each=0, wait=60):
    """A separate process of the aggregator (its own Django, on the test database)."""
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = dict(
        os.environ,
        DATABASE_URL=url,
        DJANGO_DEBUG="1",
        DBSYNC_VAR_DIR=str(sync_dir),
        DBSYNC_MAX_REQUESTS_PER_REMOTE=str(limit),
        DBSYNC_REQUEST_SLOT_WAIT_SECONDS=str(wait),
    )
    code = CHILD.format(
        pk=remote.pk,
        mode=mode,
        sync_dir=str(sync_dir),
        threads=threads,
        requests_each=requests_each,
    )
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_files(sync_dir, prefix, count, children, timeout=60):
    deadline = time.monotonic() + timeout
    while len(list(sync_dir.glob(f"{prefix}-*"))) < count:
        for child in children:
            if child.poll() is not None:
                pytest.fail(f"a child process ended early: {child.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{count} child processes were not {prefix} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def sync_dir():
    with tempfile.TemporaryDirectory(prefix="dbsync-slots-") as name:
        yield Path(name)


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        child.stdout.close()


def test_processes_share_the_limit(server, remote, settings, sync_dir, children):
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 3
    for _ in range(3):
        children.append(
            start_child(remote, "fetch", sync_dir, limit=3, threads=4, requests_each=3)
        )
    wait_for_files(sync_dir, "ready", 3, children)
    (sync_dir / "go").touch()
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out
    assert server.total == 36
    assert 1 < server.max_in_flight <= 3
    # The processes fetched at the same time: each one's first request came before
    # every other one's last ended (else the limit would not have been put to the test).
    by_pid = {}
    for pid, arrival, end in server.spans:
        first, last = by_pid.get(pid, (arrival, end))
        by_pid[pid] = (min(first, arrival), max(last, end))
    assert len(by_pid) == 3
    assert max(first for first, _ in by_pid.values()) < min(last for _, last in by_pid.values())


def test_a_busy_process_does_not_starve_another(server, remote, settings, sync_dir, children):
    """Slots go in the order they were asked for: threads here that ask again the
    moment they give one back do not keep the only slot from another process."""
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    stop = threading.Event()
    errors = []

    def hog():
        client = RemoteClient(remote, retries=0)
        try:
            while not stop.is_set():
                client.get_json("/slow/")
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    hogs = [threading.Thread(target=hog) for _ in range(4)]
    for thread in hogs:
        thread.start()
    try:
        # One request, which may wait 3 s: in turn, it waits for about 4 of 0.15 s.
        child = start_child(remote, "fetch", sync_dir, limit=1, threads=1, requests_each=1, wait=3)
        children.append(child)
        wait_for_files(sync_dir, "ready", 1, children)
        (sync_dir / "go").touch()
        out, _ = child.communicate(timeout=60)
    finally:
        stop.set()
        for thread in hogs:
            thread.join(timeout=30)
    assert child.returncode == 0, out
    assert not errors, errors
    assert server.max_in_flight == 1


def test_a_killed_holder_frees_its_slot_and_waiting_is_bounded(
    server, remote, settings, sync_dir, children
):
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 0.5
    children.append(start_child(remote, "hold", sync_dir, limit=1))
    wait_for_files(sync_dir, "held", 1, children)
    client = RemoteClient(remote, retries=0)

    started = time.monotonic()
    with pytest.raises(SlotTimeout) as caught:
        client.get_json("/slow/")
    assert 0.5 <= time.monotonic() - started < 5
    message = str(caught.value)
    assert "slow:" in message  # the remote's name
    assert "DBSYNC_MAX_REQUESTS_PER_REMOTE=1" in message
    assert "DBSYNC_REQUEST_SLOT_WAIT_SECONDS=0.5" in message
    assert server.total == 0  # nothing was sent while waiting

    os.killpg(children[0].pid, signal.SIGKILL)
    children[0].wait(timeout=30)
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 30
    started = time.monotonic()
    assert client.get_json("/slow/") == [0] * 2001
    assert time.monotonic() - started < 10
    assert server.total == 1


def test_the_wait_for_a_slot_ends_at_the_run_deadline(
    server, remote, settings, sync_dir, children
):
    """The slot wait allows 30 s, the run has 1 s left: the request fails at the run's
    deadline, naming it, with nothing sent."""
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 30
    children.append(start_child(remote, "hold", sync_dir, limit=1))
    wait_for_files(sync_dir, "held", 1, children)
    client = RemoteClient(remote, retries=0, run_deadline=RunDeadline.since(seconds=1))

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        client.get_json("/slow/")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "slow:" in message
    assert "DBSYNC_RUN_DEADLINE=1 s" in message
    assert "request slots" in message
    assert server.total == 0


def test_a_retry_pause_holds_no_slot(remote, settings):
    """While a request waits to be retried (a 503), another one takes the only slot."""
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 0.5
    asked = []

    def answer(handler):
        asked.append(handler.path)
        if handler.path == "/flaky/" and asked.count("/flaky/") == 1:
            return 503, {"Content-Type": "application/json"}, b'{"error": "busy"}'
        return 200, {"Content-Type": "application/json"}, BODY

    flaky = CountingServer(answer, pause=0)
    try:
        remote.port = flaky.port
        remote.save()
        results = []
        retrying = threading.Thread(
            target=lambda: results.append(
                RemoteClient(remote, retries=1, backoff=2.0).get_json("/flaky/")
            )
        )
        retrying.start()
        deadline = time.monotonic() + 10
        while "/flaky/" not in asked and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the 503 is read; the 2 s pause has begun
        assert RemoteClient(remote, retries=0).get_json("/other/") == [0] * 2001
        retrying.join(timeout=30)
        assert results == [[0] * 2001]
        assert asked == ["/flaky/", "/other/", "/flaky/"]
    finally:
        flaky.close()


# --- a real sync ------------------------------------------------------------------------------


def forwarder(upstream):
    """A CountingServer in front of a real instance."""

    def answer(handler):
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "host"}
        reply = requests.get(upstream + handler.path, headers=headers, timeout=120)
        return (
            reply.status_code,
            {"Content-Type": reply.headers.get("Content-Type", "")},
            (reply.content),
        )

    return answer


def test_a_sync_with_one_request_at_a_time(make_instance, settings):
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 1
    instance = make_instance(hostname="polite.example.org")
    instance.generate(stations=6, seed=5, records_per_series=50, files_per_station=0.5)
    instance.start()
    front = CountingServer(forwarder(instance.url), pause=0.01)
    try:
        database = Database.objects.create(
            name="polite", hostname=instance.hostname, ip_address="127.0.0.1", port=front.port
        )
        out = io.StringIO()
        call_command("hcore_remotesyncdb", "-r", "polite", "-N", stdout=out, stderr=io.StringIO())
        run = SyncRun.objects.filter(database=database).latest("pk")
        assert run.status == SyncRun.SUCCEEDED, run.message
        assert front.total > 10
        assert front.max_in_flight == 1
    finally:
        front.close()
