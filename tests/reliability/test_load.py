"""Load: a sync of a 100,000-station remote while both ends keep serving readers.

A real remote instance (its own PostgreSQL database, gunicorn) with 100,000 stations
and a real aggregator: this test's own database, served by gunicorn too, as the
aggregator's web server would. While ``hcore_remotesyncdb`` runs (a subprocess, as
cron runs it), reader threads on loopback keep asking the remote's API and the
aggregator's API and admin. Every answer is timed; the latencies per target are
printed as a table and written as JSON to ``$DBSYNC_LOAD_REPORT`` when that is set.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

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
ADMIN = {"username": "load.admin", "password": "Load-admin-pw-7"}


class Aggregator(Instance):
    """This test's database served by gunicorn: the aggregator's own web server."""

    def __init__(self, env):  # no database of its own to create
        self.hostname = "aggregator.example.org"
        self.env = env
        self.port = self.process = None

    def drop(self):
        self.stop()  # the database is pytest's


def local_env():
    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_DEBUG": "1",
        "DJANGO_ALLOWED_HOSTS": "*",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def aggregator(transactional_db):
    server = Aggregator(local_env()).start()
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


def read(targets, first, cookies, stop, deadline, tally):
    """A reader: the targets in turn, until the sync ends, the deadline or its bound."""
    session = requests.Session()
    session.cookies.update(cookies)
    for n in range(READS_A_READER):
        if stop.is_set() or time.monotonic() > deadline:
            return
        target = targets[(first + n) % len(targets)]
        started = time.monotonic()
        try:
            response = session.get(target.url(n), timeout=REQUEST_TIMEOUT, allow_redirects=False)
            error = None if response.status_code == 200 else f"HTTP {response.status_code}"
            if error is None and not target.check(response):
                error = f"bad body: {response.content[:100]!r}"
        except (requests.RequestException, ValueError) as exc:
            error = repr(exc)[:200]
        tally.latencies[target.name].append(time.monotonic() - started)
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


class SlowQueries(threading.Thread):
    """Every second, the statements that have run for more than SLOW s on the server,
    with what they wait for and who blocks them: if a reader times out, the failure
    says why (a stall of the admin seen in session 3 could not be explained after the
    fact)."""

    SLOW = 5

    def __init__(self, stop):
        super().__init__(daemon=True)
        self.stop, self.seen = stop, {}

    def run(self):
        import psycopg

        with psycopg.connect(local_env()["DATABASE_URL"], autocommit=True) as conn:
            while not self.stop.wait(1):
                rows = conn.execute(
                    "SELECT pid, datname, wait_event_type, wait_event, pg_blocking_pids(pid), "
                    "round(extract(epoch FROM now() - query_start)), left(query, 200) "
                    "FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() "
                    "AND now() - query_start > %s * interval '1 second' "
                    "AND query NOT LIKE 'COPY %%'",
                    [self.SLOW],
                ).fetchall()
                for pid, *row in rows:
                    self.seen[(pid, row[-1])] = row  # the latest sample of each

    def report(self):
        return [f"pid {pid}: {row}" for (pid, _q), row in self.seen.items()]


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def report(tally, sync_seconds):
    rows = {
        name: {
            "requests": len(values),
            "errors": len(tally.errors[name]),
            "p50": round(percentile(values, 0.50), 3),
            "p99": round(percentile(values, 0.99), 3),
            "max": round(max(values), 3),
        }
        for name, values in sorted(tally.latencies.items())
    }
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
    path = os.environ.get("DBSYNC_LOAD_REPORT")
    if path:
        with open(path, "w") as out:
            data = {"stations": STATIONS, "sync_seconds": round(sync_seconds, 1), "targets": rows}
            json.dump(data, out, indent=2)
    return rows, "\n".join(lines)


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
    P99_LIMIT; the sync succeeds and installs every station of the remote."""
    remote = big_remote(make_instance)
    database = Database.objects.create(
        name="big", hostname=remote.hostname, ip_address="127.0.0.1", port=remote.port
    )
    get_user_model().objects.create_superuser(email="load@example.org", **ADMIN)
    remote_targets, aggregator_targets = make_targets(remote, aggregator)
    cookies = admin_cookies(aggregator)

    tally = Tally(defaultdict(list), defaultdict(list))
    stop, deadline = threading.Event(), time.monotonic() + SYNC_DEADLINE
    readers = [
        threading.Thread(target=read, args=(remote_targets, i, {}, stop, deadline, tally))
        for i in range(REMOTE_READERS)
    ] + [
        threading.Thread(target=read, args=(aggregator_targets, i, cookies, stop, deadline, tally))
        for i in range(AGGREGATOR_READERS)
    ]
    slow_queries = SlowQueries(stop)
    for reader in [*readers, slow_queries]:
        reader.start()
    started = time.monotonic()
    command = [sys.executable, str(ROOT / "manage.py"), "hcore_remotesyncdb", "-r", "big", "-N"]
    try:
        done = subprocess.run(
            command,
            env=local_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=SYNC_DEADLINE,
        )
    finally:
        sync_seconds = time.monotonic() - started
        stop.set()
        for reader in [*readers, slow_queries]:
            reader.join()
    rows, table = report(tally, sync_seconds)
    with capsys.disabled():
        print(table)
        for line in slow_queries.report():
            print(f"ran > {SlowQueries.SLOW} s: {line}")

    assert done.returncode == 0, done.stderr[-3000:]
    run = SyncRun.objects.filter(database=database).latest("pk")
    assert run.status == SyncRun.SUCCEEDED, run.message
    remote_count = remote.sql("SELECT count(*) FROM hcore_station")[0][0]
    assert remote_count == STATIONS
    assert Station.objects.filter(original_db=database).count() == remote_count
    errors = {name: found[:3] for name, found in tally.errors.items() if found}
    assert not errors, (errors, slow_queries.report())
    assert set(rows) == {t.name for t in remote_targets + aggregator_targets}
    for name, row in rows.items():
        assert row["requests"] >= 10, f"{name}: only {row['requests']} requests"
        assert row["p99"] < P99_LIMIT, (f"{name}: p99 {row['p99']} s", slow_queries.report())
