"""Load: a sync of a 100,000-station remote while both ends keep serving readers.

A real remote instance (its own PostgreSQL database, gunicorn) with 100,000 stations
and a real aggregator: this test's own database, served by gunicorn too, as the
aggregator's web server would. While ``hcore_remotesyncdb`` runs (a subprocess, as
cron runs it), reader threads on loopback keep asking the remote's API and the
aggregator's API and admin. Every answer is timed; the latencies per target, each
target's worst request (its time and URL), the statements of the aggregator's database
that ran past 5 s and the lock waits of its readers are printed, pass or fail, and
written as JSON to ``$DBSYNC_LOAD_REPORT`` when that is set.

The sync's and the readers' database sessions carry an application name of their own
(``PGAPPNAME``), so that a sampler of ``pg_stat_activity`` and ``pg_locks`` can tell a
reader waiting on a lock that the sync holds: no reader may wait longer than
``LOCK_WAIT_LIMIT`` on one.
"""

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model

from dbsync.models import Database, SyncRun
from hcore.models import Person, Station, StationType
from tests.instance import ROOT, Instance

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STATIONS = 100_000
REMOTE_READERS = 20
AGGREGATOR_READERS = 6
# seconds: the sync, and so the readers, end by then. 137 s before session 3, 221 s
# after it (more CPU a row under this load; see the session-3 note).
SYNC_DEADLINE = 480
READS_A_READER = 5_000  # the readers' loop is bounded
THINK = 0.5  # seconds between two requests of a reader
REQUEST_TIMEOUT = 60
P99_LIMIT = 30.0  # seconds: generous (2 cores for everything), but shorter than an install
LOCK_WAIT_LIMIT = 1.0  # seconds a reader of the aggregator may wait on a lock the sync holds
SYNC_APP = "dbsync-load-sync"  # application_name of the sync's sessions
READER_APP = "dbsync-load-reader"  # ... and of the aggregator's web server's
PHASE_LINE = re.compile(r"phase|Checked the foreign keys|Syncing time-series|installed")
ADMIN = {"username": "load.admin", "password": "Load-admin-pw-7"}


class Aggregator(Instance):
    """This test's database served by gunicorn: the aggregator's own web server."""

    def __init__(self, env):  # no database of its own to create
        self.hostname = "aggregator.example.org"
        self.env = env
        self.port = self.process = None

    def drop(self):
        self.stop()  # the database is pytest's


def local_env(application_name=None):
    """The environment of a process on this test's database; ``application_name``
    names its sessions in ``pg_stat_activity`` (libpq reads ``PGAPPNAME``)."""
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_DEBUG": "1",
        "DJANGO_ALLOWED_HOSTS": "*",
        "PYTHONUNBUFFERED": "1",
    }
    if application_name:
        env["PGAPPNAME"] = application_name
    return env


@pytest.fixture
def aggregator(transactional_db):
    server = Aggregator(local_env(READER_APP)).start()
    yield server
    server.drop()


# --- readers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    base: str
    path: str  # may hold {after}: a key that changes with each request
    check: object  # response -> bool: a whole, right answer

    def url(self, n):
        return self.base + self.path.format(after=n * 7919 % STATIONS)


def is_dump(response):
    return response.content.startswith(b"[\n") and response.content.endswith(b"]\n")


def is_json(key=None):
    def check(response):
        data = response.json()
        return key is None or key in data

    return check


def is_records(response):
    return response.content.rsplit(b"\n", 2)[-2].startswith(b"# end count=")


def is_admin_page(response):
    return b'id="logout-form"' in response.content


@dataclass
class Tally:
    latencies: dict
    errors: dict
    worst: dict  # target name -> (seconds, URL, s into the sync when it began, bytes)
    started: float = 0.0  # monotonic time of the sync's start
    timeline: list = field(default_factory=list)  # (seconds into the sync, output line)

    def record(self, target, url, began, seconds, size):
        self.latencies[target.name].append(seconds)
        if seconds > self.worst.get(target.name, (-1,))[0]:
            self.worst[target.name] = (seconds, url, began - self.started, size)


def read(targets, first, cookies, stop, deadline, tally):
    """A reader: the targets in turn, until the sync ends, the deadline or its bound."""
    session = requests.Session()
    session.cookies.update(cookies)
    for n in range(READS_A_READER):
        if stop.is_set() or time.monotonic() > deadline:
            return
        target = targets[(first + n) % len(targets)]
        url = target.url(n)
        started, size = time.monotonic(), None
        try:
            response = session.get(url, timeout=REQUEST_TIMEOUT, allow_redirects=False)
            size = len(response.content)
            error = None if response.status_code == 200 else f"HTTP {response.status_code}"
            if error is None and not target.check(response):
                error = f"bad body: {response.content[:100]!r}"
        except (requests.RequestException, ValueError) as exc:
            error = repr(exc)[:200]
        tally.record(target, url, started, time.monotonic() - started, size)
        if error:
            tally.errors[target.name].append(error)
        time.sleep(THINK)


def admin_cookies(aggregator):
    """The session cookies of a superuser logged in through the admin's login form."""
    session = requests.Session()
    login = f"{aggregator.url}/admin/login/"
    session.get(login, timeout=REQUEST_TIMEOUT).raise_for_status()
    response = session.post(
        login,
        data={**ADMIN, "csrfmiddlewaretoken": session.cookies["csrftoken"], "next": "/admin/"},
        timeout=REQUEST_TIMEOUT,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    return session.cookies.get_dict()


class DatabaseWatch(threading.Thread):
    """Samples the aggregator's database every SAMPLE s while the sync runs.

    ``slow``: the statements that ran past SLOW s (who ran them, what they waited on,
    who blocked them, their text as far as ``track_activity_query_size`` keeps it).
    ``waits``: every lock a reader of the aggregator waited for, with how long (from
    ``pg_locks.waitstart``), on what, and whether the sync held it. A stall of the
    admin seen before could not be explained after the fact; now it can.
    """

    SLOW = 5
    SAMPLE = 0.25

    def __init__(self, stop, started):
        super().__init__(daemon=True)
        self.stop, self.started = stop, started
        self.dbname = settings.DATABASES["default"]["NAME"]
        self.slow, self.waits = {}, {}
        self.failure = None

    def run(self):
        import psycopg

        try:
            with psycopg.connect(local_env()["DATABASE_URL"], autocommit=True) as conn:
                while not self.stop.wait(self.SAMPLE):
                    self.sample(conn)
        except Exception as exc:  # noqa: BLE001 - reported, and the test fails on it
            self.failure = repr(exc)

    def sample(self, conn):
        since = time.monotonic() - self.started
        sessions = dict(
            conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s",
                [self.dbname],
            ).fetchall()
        )
        for pid, app, kind, seconds, began, wait, blockers, query in conn.execute(
            "SELECT pid, application_name, backend_type, "
            "extract(epoch FROM now() - query_start)::float, query_start, "
            "concat_ws(':', wait_event_type, wait_event), pg_blocking_pids(pid), query "
            "FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND pid <> pg_backend_pid() AND now() - query_start > %s * interval '1 second'",
            [self.dbname, self.SLOW],
        ).fetchall():
            self.slow[(pid, began)] = {
                "who": app or kind,
                "seconds": round(seconds, 1),
                "ended_after": round(since, 1),  # s into the sync, at the last sample
                "wait": wait,
                "blocked_by": [f"{b} ({sessions.get(b, '?')})" for b in blockers],
                "query": query,
            }
        for pid, app, seconds, began, lock, mode, blockers, query in conn.execute(
            "SELECT l.pid, a.application_name, extract(epoch FROM now() - l.waitstart)::float, "
            "l.waitstart, concat_ws(' ', l.locktype, l.relation::regclass::text), l.mode, "
            "pg_blocking_pids(l.pid), left(a.query, 300) "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND l.waitstart IS NOT NULL AND a.datname = %s",
            [self.dbname],
        ).fetchall():
            holders = [sessions.get(b, "?") for b in blockers]
            self.waits[(pid, began)] = {
                "who": app,
                "seconds": round(seconds, 2),
                "at": round(since, 1),
                "lock": f"{lock} {mode}",
                "blocked_by": [f"{b} ({h})" for b, h in zip(blockers, holders, strict=True)],
                "by_the_sync": SYNC_APP in holders,
                "query": query,
            }

    def reader_waits_on_the_sync(self):
        return [w for w in self.waits.values() if w["who"] == READER_APP and w["by_the_sync"]]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report(tally, sync_seconds, watch):
    rows = {
        name: {
            "requests": len(values),
            "errors": len(tally.errors[name]),
            "p50": round(percentile(values, 0.50), 3),
            "p99": round(percentile(values, 0.99), 3),
            "max": round(max(values), 3),
            "worst_url": tally.worst[name][1],
            "worst_began_after": round(tally.worst[name][2], 1),  # s into the sync
            "worst_bytes": tally.worst[name][3],  # None: no answer
        }
        for name, values in sorted(tally.latencies.items())
    }
    slow = sorted(watch.slow.values(), key=lambda q: -q["seconds"])
    waits = sorted(watch.waits.values(), key=lambda w: -w["seconds"])
    lines = [
        f"\nLoad: sync of {STATIONS:,} stations in {sync_seconds:.0f} s, "
        f"{REMOTE_READERS} readers of the remote, {AGGREGATOR_READERS} of the aggregator",
        f"{'target':32} {'requests':>8} {'errors':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7}",
    ]
    for name, row in rows.items():
        lines.append(
            f"{name:32} {row['requests']:8} {row['errors']:6} "
            f"{row['p50']:7.3f} {row['p99']:7.3f} {row['max']:7.3f}"
        )
    lines.append("Worst request of each target (seconds; began s into the sync; bytes; URL):")
    for name, row in rows.items():
        lines.append(
            f"  {name:32} {row['max']:7.3f} {row['worst_began_after']:6.1f} "
            f"{row['worst_bytes'] if row['worst_bytes'] is not None else '-':>9}  "
            f"{row['worst_url']}"
        )
    lines.append(f"Statements of the aggregator's database that ran past {DatabaseWatch.SLOW} s:")
    lines += [
        f"  {q['seconds']:6.1f} s (until {q['ended_after']} s) {q['who']} wait={q['wait'] or '-'} "
        f"blocked by {q['blocked_by'] or '-'}: {' '.join(q['query'].split())[:400]}"
        for q in slow
    ] or ["  none"]
    lines.append("Lock waits of the aggregator's sessions (the longest seen of each wait):")
    lines += [
        f"  {w['seconds']:6.2f} s at {w['at']} s {w['who']} on {w['lock']}, blocked by "
        f"{w['blocked_by']}{' (the sync)' if w['by_the_sync'] else ''}: {w['query'][:200]}"
        for w in waits
    ] or ["  none"]
    lines.append("The sync's phases (s into the sync):")
    lines += [f"  {at:6.1f} {line}" for at, line in tally.timeline if PHASE_LINE.search(line)]
    path = os.environ.get("DBSYNC_LOAD_REPORT")
    if path:
        with open(path, "w") as out:
            data = {
                "stations": STATIONS,
                "sync_seconds": round(sync_seconds, 1),
                "targets": rows,
                "slow_statements": slow,
                "lock_waits": waits,
                "sync_timeline": tally.timeline,
            }
            json.dump(data, out, indent=2, default=str)
    return rows, "\n".join(lines)


def run_timed(command, tally, timeout):
    """Run the sync (as cron runs it); each line of its output, with the seconds since
    the sync began, goes into ``tally.timeline``. A CompletedProcess, as
    ``subprocess.run`` returns."""
    tally.timeline = []
    process = subprocess.Popen(
        command,
        env=local_env(SYNC_APP),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors = []
    drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    drain.start()
    timer = threading.Timer(timeout, process.kill)  # returncode -9: past the deadline
    timer.start()
    try:
        for line in process.stdout:
            if not line.startswith("\t"):  # the per-model detail lines stay out
                tally.timeline.append((round(time.monotonic() - tally.started, 1), line.strip()))
        process.wait()
    finally:
        timer.cancel()
        drain.join()
    return subprocess.CompletedProcess(command, process.returncode, "", "".join(errors))


# --- the scenario ---------------------------------------------------------------------------


def big_remote(make_instance):
    remote = make_instance(hostname="big.example.org")
    remote.generate(stations=STATIONS, seed=11)
    # One series with a year of hourly records, for the readers of records.
    remote.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        "SELECT (SELECT min(id) FROM hcore_timeseries), t, random(), '' "
        "FROM generate_series('2025-01-01'::timestamptz, '2025-12-31 23:00', '1 hour') AS t"
    )
    return remote.start()


def make_targets(remote, aggregator):
    series = remote.sql("SELECT min(timeseries_id) FROM hcore_record")[0][0]
    local = Station.objects.create(
        name="Local station",
        owner=Person.objects.create(last_name="Local owner"),
        type=StationType.objects.create(descr="Local type"),
    )
    remote_targets = [
        Target("remote: manifest", remote.url, "/api/", is_json("models")),
        Target(
            "remote: a page of stations",
            remote.url,
            "/api/hcore/station/?after={after}&limit=100",
            is_dump,
        ),
        Target("remote: station keys", remote.url, "/api/hcore/station/keys/", is_json()),
        Target(
            "remote: a series' records",
            remote.url,
            f"/api/hcore/timeseries/{series}/records/",
            is_records,
        ),
    ]
    aggregator_targets = [
        Target("aggregator: manifest", aggregator.url, "/api/", is_json("models")),
        Target(
            "aggregator: a page of stations",
            aggregator.url,
            "/api/hcore/station/?after={after}&limit=100",
            is_dump,
        ),
        Target(
            "aggregator: admin station list",
            aggregator.url,
            "/admin/hcore/station/",
            is_admin_page,
        ),
        Target(
            "aggregator: admin station page",
            aggregator.url,
            f"/admin/hcore/station/{local.pk}/change/",
            is_admin_page,
        ),
    ]
    return remote_targets, aggregator_targets


def test_sync_of_100k_stations_while_both_ends_serve_readers(make_instance, aggregator, capsys):
    """While a 100,000-station remote is synced, 20 readers of its API and 6 of the
    aggregator's API and admin get every answer, whole, with a p99 latency under
    P99_LIMIT; the sync succeeds and installs every station of the remote; and no
    session of the aggregator's readers waits longer than LOCK_WAIT_LIMIT on a lock
    that the sync holds. The worst request of each target is reported, not asserted."""
    remote = big_remote(make_instance)
    database = Database.objects.create(
        name="big", hostname=remote.hostname, ip_address="127.0.0.1", port=remote.port
    )
    get_user_model().objects.create_superuser(email="load@example.org", **ADMIN)
    remote_targets, aggregator_targets = make_targets(remote, aggregator)
    cookies = admin_cookies(aggregator)

    tally = Tally(defaultdict(list), defaultdict(list), {})
    stop, deadline = threading.Event(), time.monotonic() + SYNC_DEADLINE
    readers = [
        threading.Thread(target=read, args=(remote_targets, i, {}, stop, deadline, tally))
        for i in range(REMOTE_READERS)
    ] + [
        threading.Thread(target=read, args=(aggregator_targets, i, cookies, stop, deadline, tally))
        for i in range(AGGREGATOR_READERS)
    ]
    tally.started = time.monotonic()
    watch = DatabaseWatch(stop, tally.started)
    for reader in [*readers, watch]:
        reader.start()
    # -v 2: the sync's phases, each line timed, go into the report's timeline.
    command = [
        sys.executable,
        str(ROOT / "manage.py"),
        "hcore_remotesyncdb",
        "-r",
        "big",
        "-N",
        "-v",
        "2",
    ]
    try:
        done = run_timed(command, tally, timeout=SYNC_DEADLINE)
    finally:
        sync_seconds = time.monotonic() - tally.started
        stop.set()
        for reader in [*readers, watch]:
            reader.join()
        rows, table = report(tally, sync_seconds, watch)
        with capsys.disabled():
            print(table)

    assert done.returncode != -9, f"the sync did not end within {SYNC_DEADLINE} s"
    assert done.returncode == 0, done.stderr[-3000:]
    run = SyncRun.objects.filter(database=database).latest("pk")
    assert run.status == SyncRun.SUCCEEDED, run.message
    remote_count = remote.sql("SELECT count(*) FROM hcore_station")[0][0]
    assert remote_count == STATIONS
    assert Station.objects.filter(original_db=database).count() == remote_count
    errors = {name: found[:3] for name, found in tally.errors.items() if found}
    assert not errors, (errors, table)
    assert set(rows) == {t.name for t in remote_targets + aggregator_targets}
    for name, row in rows.items():
        assert row["requests"] >= 10, f"{name}: only {row['requests']} requests"
        assert row["p99"] < P99_LIMIT, (f"{name}: p99 {row['p99']} s", table)
    assert watch.failure is None, f"the sampler of the database failed: {watch.failure}"
    long_waits = [w for w in watch.reader_waits_on_the_sync() if w["seconds"] > LOCK_WAIT_LIMIT]
    assert not long_waits, long_waits
