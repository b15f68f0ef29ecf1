"""Network and remote faults: hcore_remotesyncdb against a real remote over HTTP whose
network or server misbehaves.

Each scenario injects one fault and checks what an operator would: the command's
exit status and message (naming the remote and the problem), the run recorded, the
local database unchanged (``integrity``) or, when a transient fault was retried,
equal to the remote; and, the fault removed, that the next run succeeds.

The remote is a real instance (tests/instance.py). Faults that a real server cannot
produce on cue (statuses, stalls, resets, redirects, floods) come from
``servers.FaultyFront``, which forwards everything else to the real instance; see
tests/test_sync.py (test_bad_input_changes_nothing, test_unreachable_remote) for the
malformed-payload cases, which are not repeated here.
"""

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import psycopg
import pytest
import requests
from django.apps import apps
from django.core.management import load_command_class
from django.db import connection

from dbsync.models import Database, SyncRun
from hcore.models import Record, Timeseries
from tests.faultproxy import model_path
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.instance import Instance, free_port
from tests.reliability import servers

pytestmark = pytest.mark.django_db(transaction=True)

RETRIES = 2  # DBSYNC_HTTP_RETRIES in these tests: at most 3 requests of one URL
BATCH_PATH = "/api/hcore/timeseries/records/"
STATION_DUMP = model_path("station")


def is_manifest(path):
    return path.split("?")[0] == "/api/"


def is_records_batch(path):
    return path.split("?")[0] == BATCH_PATH


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote(instance_template):
    """A read-only remote with a few records (scenarios that change a remote make their own)."""
    instance = Instance(instance_template, hostname="net.example.org")
    instance.generate(stations=20, seed=13, records_per_series=50)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture(scope="module")
def remote_objects(remote):
    """The remote's whole graph, from its own dumpdata (it does not change)."""
    return remote_graph(remote)


@pytest.fixture(autouse=True)
def fast_retries(settings, tmp_path):
    settings.DBSYNC_HTTP_RETRIES = RETRIES
    settings.DBSYNC_HTTP_BACKOFF = 0.05
    settings.DBSYNC_WORK_DIR = tmp_path / "work"


@pytest.fixture
def front(remote):
    front = servers.FaultyFront(remote.url)
    yield front
    front.close()


def register(hostname, port, ip_address="127.0.0.1"):
    return Database.objects.create(
        name=hostname, hostname=hostname, ip_address=ip_address, port=port
    )


@dataclass
class Outcome:
    status: int
    out: str
    err: str


def hcore_remotesyncdb(database, *args):
    """The command as cron runs it: manage.py's own path (argv parsing, the error on
    stderr, the exit status), in this process so that the test's settings apply."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["manage.py", "hcore_remotesyncdb", "-r", database.name, "-N", *args]
    with redirect_stdout(out), redirect_stderr(err):
        command = load_command_class("dbsync", "hcore_remotesyncdb")
        try:
            command.run_from_argv(argv)
            status = 0
        except SystemExit as exc:
            status = exc.code
    return Outcome(status, out.getvalue(), err.getvalue())


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


def synced(database, *args):
    """Sync once, without a fault, so that a failure after it has something to lose."""
    outcome = hcore_remotesyncdb(database, *args)
    assert outcome.status == 0, outcome.err


def assert_failed(outcome, database, *words):
    """Exit status 1; the run FAILED; its message, on stderr too, names the remote
    and says each of ``words``."""
    assert outcome.status == 1, outcome.out + outcome.err
    run = last_run(database)
    assert run.status == SyncRun.FAILED
    assert database.hostname in run.message
    for word in words:
        assert word in run.message, run.message
    assert run.message in outcome.err
    return run.message


def assert_succeeded(outcome, database, remote_objects):
    assert outcome.status == 0, outcome.err
    assert last_run(database).status == SyncRun.SUCCEEDED
    assert_same_graph(remote_objects, local_graph(database))


def assert_recovers(database, remote_objects, front=None):
    """The fault removed, the next run succeeds and the replica equals the remote."""
    if front is not None:
        front.clear()
    assert_succeeded(hcore_remotesyncdb(database), database, remote_objects)


def assert_no_broken_key():
    """Every foreign key of the local tables points at a row: queried row by row, not
    taken on trust (a load that bypassed the constraints would show here)."""
    broken = []
    with connection.cursor() as cursor:
        for model in apps.get_models(include_auto_created=True):
            if model._meta.app_label not in {"hcore", "dbsync"}:
                continue
            for f in model._meta.local_fields:
                if not (f.is_relation and f.concrete):
                    continue
                target = f.target_field
                cursor.execute(
                    f'SELECT count(*) FROM "{model._meta.db_table}" c WHERE c."{f.column}" '
                    f'IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "{target.model._meta.db_table}" '
                    f't WHERE t."{target.column}" = c."{f.column}")'
                )
                (count,) = cursor.fetchone()
                if count:
                    broken.append(f"{model._meta.db_table}.{f.column}: {count}")
    assert not broken, f"broken keys: {broken}"


# --- unreachable ------------------------------------------------------------------------------


def test_connection_refused_fails_naming_the_remote_and_changes_nothing(
    remote, remote_objects, integrity
):
    """Nothing listens on the registered port: a bounded number of attempts, then a
    failure saying so; registered right, the next run succeeds."""
    database = register(remote.hostname, free_port())
    before = integrity.snapshot()
    outcome = hcore_remotesyncdb(database)
    assert_failed(outcome, database, "Connection refused", f"gave up after {RETRIES + 1}")
    integrity.assert_unchanged(before)
    Database.objects.filter(pk=database.pk).update(port=remote.port)
    assert_recovers(database, remote_objects)


def test_dns_failure_fails_naming_the_remote_and_changes_nothing(
    remote, remote_objects, integrity
):
    """A hostname that does not resolve (.invalid never does), and no IP address."""
    database = register("net.nowhere.invalid", remote.port, ip_address=None)
    before = integrity.snapshot()
    outcome = hcore_remotesyncdb(database)
    assert_failed(outcome, database, "cannot reach", "hostname does not resolve")
    integrity.assert_unchanged(before)
    Database.objects.filter(pk=database.pk).update(ip_address="127.0.0.1")
    assert_recovers(database, remote_objects)


# --- cut short: a stall, a reset --------------------------------------------------------------


def assert_cut_mid_body(sent):
    """Each of the bounded attempts got headers and part of a body, then the cut."""
    assert len(sent) == RETRIES + 1
    assert all(n > 0 for n in sent)


def test_stall_mid_body_times_out_and_changes_nothing(
    remote, remote_objects, front, integrity, settings
):
    """Headers and half the station dump, then silence: the read timeout ends each
    attempt, the attempts are bounded, and the run fails saying it timed out."""
    settings.DBSYNC_HTTP_TIMEOUT = 0.5
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    front.forget()
    front.on(STATION_DUMP, servers.cut("stall"))
    started = time.monotonic()
    outcome = hcore_remotesyncdb(database, "--full")
    assert time.monotonic() - started < 30
    assert_failed(outcome, database, "timed out", "/api/hcore/station/")
    assert_cut_mid_body(front.sent_to(STATION_DUMP))
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


def test_reset_mid_object_dump_changes_nothing(remote, remote_objects, front, integrity):
    """The station dump cut by a TCP RST half-way, every time it is asked for."""
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    front.forget()
    front.on(STATION_DUMP, servers.cut("reset"))
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(outcome, database, "Connection reset", "/api/hcore/station/")
    assert_cut_mid_body(front.sent_to(STATION_DUMP))
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


def test_reset_once_mid_object_dump_is_retried_and_succeeds(remote, remote_objects, front):
    """A reset that does not recur costs one more request, not the run."""
    database = register(remote.hostname, front.port)
    front.on(STATION_DUMP, servers.first(1, servers.cut("reset")))
    assert_succeeded(hcore_remotesyncdb(database), database, remote_objects)
    assert len(front.asked(STATION_DUMP)) == 2


def test_no_transaction_is_open_while_a_dump_is_slow_to_come(remote, remote_objects, front):
    """The remote takes its time over the series' dump (the last of the plan). All
    the while, the syncing connection has no transaction open on the local database
    (no row locks held, no xmin horizon kept back): the objects' transaction opens
    only once every dump is on disk. Watched in pg_stat_activity from another
    connection, as the fault happens."""
    database = register(remote.hostname, front.port)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    conninfo = {
        k: params[k] for k in ("host", "port", "user", "password", "dbname") if k in params
    }
    seen = []

    def slow(exchange, n):
        with psycopg.connect(**conninfo, autocommit=True) as watcher:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                seen.append(
                    watcher.execute(
                        "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity "
                        "WHERE pid = %s",
                        [pid],
                    ).fetchone()
                )
                time.sleep(0.1)
        exchange.send(*exchange.forward())

    front.on(model_path("timeseries"), slow)
    assert_succeeded(hcore_remotesyncdb(database), database, remote_objects)
    assert len(seen) >= 10
    assert all(row is not None for row in seen), "the syncing connection was replaced"
    assert [row for row in seen if row[1]] == [], "a transaction was open during the fetch"


def test_reset_mid_records_batch_installs_no_record(remote, remote_objects, front, integrity):
    """Records come after the objects, in their own transaction: a batch cut by a
    RST every time fails the run and installs no record; the objects (unchanged at
    the remote) stay as they were."""
    database = register(remote.hostname, front.port)
    synced(database, "--no-records")
    # the objects' transaction commits (and moves the remote's cursor): all else stays
    objects_done = ("dbsync_syncrun", "dbsync_database")
    before = integrity.snapshot(exclude=objects_done)
    front.forget()
    front.on(is_records_batch, servers.cut("reset"))
    outcome = hcore_remotesyncdb(database)
    assert_failed(outcome, database, "Connection reset", BATCH_PATH, "records")
    assert_cut_mid_body(front.sent_to(is_records_batch))
    integrity.assert_unchanged(before, exclude=objects_done)
    assert not Record.objects.exists()
    assert_recovers(database, remote_objects, front)
    remote_count = remote.sql("SELECT count(*) FROM hcore_record")[0][0]
    assert Record.objects.count() == remote_count > 0


# --- HTTP errors: retried within a budget, then given up --------------------------------------

STATUSES = {
    "500": (500, {}),
    "502": (502, {}),
    "503": (503, {}),
    "503 retry-after": (503, {"Retry-After": "1"}),
    "429 retry-after": (429, {"Retry-After": "1"}),
}


def gaps(moments):
    return [b - a for a, b in zip(moments, moments[1:], strict=False)]


def assert_waited(moments, headers):
    """Retry-After honoured: each retry came no sooner than it said; without it, the
    (short) backoff of these tests."""
    for gap in gaps(moments):
        if "Retry-After" in headers:
            assert gap >= float(headers["Retry-After"]) - 0.05
        else:
            assert gap < 1


@pytest.mark.parametrize("case", list(STATUSES))
def test_transient_http_error_is_retried_and_succeeds(case, remote, remote_objects, front):
    """The station dump fails as often as the retry budget allows, then is served:
    the run succeeds with the remote's data, having waited as Retry-After said."""
    code, headers = STATUSES[case]
    database = register(remote.hostname, front.port)
    front.on(STATION_DUMP, servers.first(RETRIES, servers.status(code, headers)))
    assert_succeeded(hcore_remotesyncdb(database), database, remote_objects)
    moments = front.asked(STATION_DUMP)
    assert len(moments) == RETRIES + 1
    assert_waited(moments, headers)


@pytest.mark.parametrize("case", list(STATUSES))
def test_persistent_http_error_fails_after_bounded_retries(
    case, remote, remote_objects, front, integrity
):
    """The station dump fails every time: the retries stop at the budget (honouring
    Retry-After) and the run fails naming the status; nothing changes."""
    code, headers = STATUSES[case]
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    front.forget()
    front.on(STATION_DUMP, servers.status(code, headers))
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(outcome, database, f"HTTP {code}", f"gave up after {RETRIES + 1} attempts")
    moments = front.asked(STATION_DUMP)
    assert len(moments) == RETRIES + 1
    assert_waited(moments, headers)
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


# --- a redirect to another host ---------------------------------------------------------------


@pytest.fixture
def other_host():
    """A second address on the loopback (127.0.0.2) that must never be contacted."""
    listener = servers.Listener("127.0.0.2")
    yield listener
    listener.close()


@pytest.mark.parametrize("code", [301, 302, 307])
def test_redirect_to_another_host_is_refused_and_not_followed(
    code, remote, remote_objects, front, other_host, integrity
):
    """The remote answers the station dump with a redirect elsewhere: refused (the
    client's credentials would follow it), not retried, the other host never hears
    from us."""
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    location = f"http://127.0.0.2:{other_host.port}/api/hcore/station/"
    front.forget()
    front.on(STATION_DUMP, servers.redirect(code, location))
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(outcome, database, "redirect", location)
    assert other_host.connections == 0
    assert len(front.asked(STATION_DUMP)) == 1  # a refusal, not retried
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


# --- a response over the size cap -------------------------------------------------------------

CAP = 1024 * 1024


@pytest.mark.parametrize("announced", [True, False], ids=["length announced", "streamed"])
def test_response_ten_times_the_cap_is_refused_early(
    announced, remote, remote_objects, front, integrity, settings
):
    """A station dump of 10 MiB with a cap of 1 MiB: refused, not read whole, nothing
    installed. Announced (Content-Length) it is refused before its body is read."""
    settings.DBSYNC_MAX_RESPONSE_BYTES = CAP
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    front.forget()
    front.on(STATION_DUMP, servers.flood(10 * CAP, announce=announced))
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(outcome, database, f"cap of {CAP} bytes", "DBSYNC_MAX_RESPONSE_BYTES")
    assert len(front.asked(STATION_DUMP)) == 1
    (sent,) = front.sent_to(STATION_DUMP)
    assert sent < 3 * CAP
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


# --- a different schema -----------------------------------------------------------------------


def changed_fingerprint(model_label):
    def transform(body):
        manifest = json.loads(body)
        for entry in manifest["models"]:
            if entry["model"].lower() == model_label:
                entry["fingerprint"] = "0" * len(entry["fingerprint"])
        return json.dumps(manifest).encode()

    return transform


def test_different_schema_fingerprint_is_refused_before_any_download(
    remote, remote_objects, front, integrity
):
    """The manifest gives another schema fingerprint for the series: the run stops
    at the manifest, naming the model, before asking for any dump."""
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    front.forget()
    front.on(is_manifest, servers.rewrite(changed_fingerprint("hcore.timeseries")))
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(outcome, database, "different schema for hcore.timeseries")
    assert [path for path, _ in front.requests] == ["/api/"]
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


# --- a remote whose data changes during the fetch ---------------------------------------------

# Run in the remote's own Django (manage.py shell), as its users would change it.
ADD_AND_DELETE = """
from hcore.models import *
Station.objects.order_by("pk").first().delete()  # with its series, instruments, overseers
Instrument.objects.order_by("-pk").first().delete()  # its series keep no instrument
near = Station.objects.order_by("pk").last()
added = Station.objects.create(
    name="Added mid-fetch", owner_id=near.owner_id, type_id=near.type_id,
    water_basin_id=near.water_basin_id, abscissa=21.5, ordinate=38.5,
)
instrument = Instrument.objects.create(
    station=added, type=InstrumentType.objects.order_by("pk").first(), name="Added mid-fetch"
)
like = Timeseries.objects.order_by("pk").last()
Timeseries.objects.create(
    gentity=added, instrument=instrument, name="Added mid-fetch", variable_id=like.variable_id,
    unit_of_measurement_id=like.unit_of_measurement_id, time_zone_id=like.time_zone_id,
)
"""
# A water basin that gentities refer to; they are fetched before it, it after them.
DELETE_A_BASIN = """
from hcore.models import *
WaterBasin.objects.filter(gentities_in_basin__isnull=False).order_by("pk").first().delete()
"""
FIRST_OR_INCREMENTAL = pytest.mark.parametrize(
    "incremental", [False, True], ids=["first sync", "incremental"]
)


@pytest.fixture
def changing_remote(make_instance, settings):
    """A remote of its own behind a front; its dumps are fetched one at a time, so
    that a change "between two model fetches" is exactly that."""
    settings.DBSYNC_FETCH_THREADS = 1
    instance = make_instance(hostname="changing.example.org")
    instance.generate(stations=12, seed=21)
    instance.start()
    front = servers.FaultyFront(instance.url)
    yield instance, front, register(instance.hostname, front.port)
    front.close()


def change_when_asked_for(front, instance, model, code):
    """When the dump of ``model`` is first asked for, change the remote, then answer."""
    front.on(model_path(model), servers.after(lambda: instance.shell(code)))


@FIRST_OR_INCREMENTAL
def test_objects_added_and_deleted_during_the_fetch_install_consistently(
    incremental, changing_remote
):
    """A station deleted (with its series) and another added with a series and an
    instrument, after the stations and instruments were fetched and before the
    series: the new series' station and instrument are asked for again and
    installed; every foreign key holds; one more run gives the remote's graph."""
    instance, front, database = changing_remote
    if incremental:
        synced(database)
        instance.touch_every_row()  # so that the stations come before the series again
    change_when_asked_for(front, instance, "timeseries", ADD_AND_DELETE)
    outcome = hcore_remotesyncdb(database)
    assert outcome.status == 0, outcome.err
    assert last_run(database).status == SyncRun.SUCCEEDED
    assert_no_broken_key()
    asked_again = {path.split("?")[0] for path, _ in front.requests if "pks=" in path}
    assert {"/api/hcore/gentity/", "/api/hcore/station/", "/api/hcore/instrument/"} <= asked_again
    added = Timeseries.objects.get(original_db=database, name="Added mid-fetch")
    assert added.gentity.name == added.instrument.name == "Added mid-fetch"
    assert added.instrument.station_id == added.gentity_id
    assert_recovers(database, remote_graph(instance), front)


def test_referenced_object_deleted_during_the_fetch_is_fetched_again_and_installs(
    changing_remote,
):
    """A first sync: a water basin deleted after the gentities that refer to it were
    fetched, and before the basins: asked for again, it is gone, so the reference
    dangles. Nothing of that attempt is installed; the run fetches everything once more,
    sees the remote as it now is (the gentities' basin emptied), and installs that,
    saying why it fetched twice. Every foreign key holds; the replica is the remote's."""
    instance, front, database = changing_remote
    change_when_asked_for(front, instance, "station", DELETE_A_BASIN)
    outcome = hcore_remotesyncdb(database, "-v", "1")
    assert outcome.status == 0, outcome.err
    assert "refers to hcore.waterbasin(pk=" in outcome.out
    assert "fetching again" in outcome.out
    run = last_run(database)
    assert run.status == SyncRun.SUCCEEDED
    basins = [path for path, _ in front.requests if model_path("waterbasin")(path)]
    assert len(basins) == 2  # one fetch, then one more: not a loop
    assert_no_broken_key()
    assert_same_graph(remote_graph(instance), local_graph(database))


def test_referenced_object_deleted_during_an_incremental_fetch_goes_with_the_next_run(
    changing_remote,
):
    """The same deletion during an incremental run (change capture; every object
    rewritten at the remote, so that every model is fetched again): the replica still
    holds the basin, so the reference holds and the run installs at once, one fetch of
    the basins. The deletion was written after the run's cursor: the next run removes
    the basin and empties the gentities' reference, and the replica is the remote's."""
    instance, front, database = changing_remote
    synced(database)
    instance.touch_every_row()
    front.forget()
    change_when_asked_for(front, instance, "station", DELETE_A_BASIN)
    outcome = hcore_remotesyncdb(database, "-v", "1")
    assert outcome.status == 0, outcome.err
    assert "fetching again" not in outcome.out
    assert last_run(database).status == SyncRun.SUCCEEDED
    basins = [path for path, _ in front.requests if model_path("waterbasin")(path)]
    assert len(basins) == 1
    assert_no_broken_key()
    assert_recovers(database, remote_graph(instance), front)


def test_a_reference_that_dangles_on_every_fetch_fails_cleanly(changing_remote, integrity):
    """A remote that keeps sending a gentity whose water basin it never sends (bad
    data, not a change in flight): fetched twice, then refused, naming both objects,
    with nothing changed; without the fault the next run succeeds."""
    instance, front, database = changing_remote
    before = integrity.snapshot()
    # every answer about basins, the re-fetch by pks included, without a basin
    front.on(
        lambda path: path.split("?")[0] == "/api/hcore/waterbasin/",
        servers.rewrite(
            lambda body: b"\n".join(
                line for line in body.split(b"\n") if not line.startswith(b"{")
            )
        ),
    )
    outcome = hcore_remotesyncdb(database)
    message = assert_failed(outcome, database, "refers to hcore.waterbasin(pk=")
    assert "did not send (not even when asked again)" in message
    basins = [path for path, _ in front.requests if model_path("waterbasin")(path)]
    assert len(basins) == 2  # one fetch, then one more
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_graph(instance), front)


# --- a remote that trickles: the deadlines, and no transaction open meanwhile -----------------

TRICKLE_EVERY = 2.0  # seconds between two bytes: each read gets one within its timeout


HELD_OPEN = TRICKLE_EVERY / 2  # seconds


class SyncSessions:
    """Samples, from a connection of its own, the sessions of the local database (the
    sync's among them) while a fault goes on: what a DBA would see in pg_stat_activity."""

    def __init__(self):
        params = connection.get_connection_params()
        self.conninfo = {
            k: params[k] for k in ("host", "port", "user", "password", "dbname") if k in params
        }
        self.pid = None
        self.samples = []  # [[(pid, state), ...], ...]
        self.watcher = None

    def follow(self):
        """Before the sync: note its session (the command runs in this thread, on this
        connection, until it closes it at its end)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.pid = cursor.fetchone()[0]

    def sample(self):
        if self.watcher is None:
            self.watcher = psycopg.connect(**self.conninfo, autocommit=True)
        rows = self.watcher.execute(
            "SELECT pid, state, EXTRACT(EPOCH FROM now() - xact_start), query "
            "FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        self.samples.append(rows)

    def close(self):
        if self.watcher is not None:
            self.watcher.close()

    def assert_no_transaction_waited(self):
        """Sampled repeatedly with the sync's session there, and no session of the
        database ever idle in a transaction that had been open longer than
        HELD_OPEN (holding locks and the xmin horizon while it waits).

        A short transaction between two of its statements (the run's bookkeeping, the
        progress writer) is "idle in transaction" for a moment, and a sample can land
        there; a transaction that waited on the trickle would have been open for at
        least one of its pauses, and samples come once per pause."""
        with_sync = [rows for rows in self.samples if any(row[0] == self.pid for row in rows)]
        assert len(with_sync) >= 5, "the sync's session was not sampled during the fault"
        held = [
            (pid, state, round(age, 2), query)
            for rows in self.samples
            for pid, state, age, query in rows
            if (state or "").startswith("idle in transaction") and (age or 0) > HELD_OPEN
        ]
        assert held == [], f"a session held a transaction open while idle: {held}"


@pytest.fixture
def sessions():
    watched = SyncSessions()
    yield watched
    watched.close()


@pytest.fixture
def deadlines(settings):
    """Small deadlines, in their order; each read waits longer than the trickle's pause."""
    settings.DBSYNC_HTTP_TIMEOUT = 5
    settings.DBSYNC_REQUEST_DEADLINE = 6
    settings.DBSYNC_RUN_DEADLINE = 120
    return settings


def assert_cut_early(front, predicate, body_size):
    """Asked once (a deadline is not retried), and left after a few bytes of a body the
    trickle would have taken hours over: the deadline ended it, nothing else."""
    assert len(front.asked(predicate)) == 1
    (sent,) = answers_ended(front, predicate, 1)
    assert 0 < sent < 20 < body_size


def answers_ended(front, predicate, count):
    """What the answers got out, once ``count`` of them have ended (a trickle ends at
    its next byte after the client left)."""
    limit = time.monotonic() + 3 * servers.STALL_LIMIT
    while len(front.sent_to(predicate)) < count and time.monotonic() < limit:
        time.sleep(0.2)
    return front.sent_to(predicate)


def test_dump_trickled_a_byte_every_2_s_fails_at_the_request_deadline(
    remote, remote_objects, front, integrity, deadlines, sessions
):
    """The station dump comes one byte every 2 s, so no read ever times out. The
    request deadline ends it: the run fails naming the remote, the path and
    DBSYNC_REQUEST_DEADLINE; while the remote trickled, no session of the local
    database sat in a transaction; nothing changed; the next run succeeds."""
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    body_size = len(requests.get(f"{remote.url}/api/hcore/station/", timeout=60).content)
    front.forget()
    front.on(STATION_DUMP, servers.trickle(TRICKLE_EVERY, sessions.sample))
    sessions.follow()
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(
        outcome,
        database,
        "GET /api/hcore/station/",
        "did not come whole within DBSYNC_REQUEST_DEADLINE=6 s",
    )
    assert_cut_early(front, STATION_DUMP, body_size)
    sessions.assert_no_transaction_waited()
    integrity.assert_unchanged(before)
    assert_recovers(database, remote_objects, front)


def test_dump_trickled_past_the_run_deadline_fails_at_it(
    remote, remote_objects, front, integrity, deadlines
):
    """The manifest takes 4 s (within the read timeout), then the station dump
    trickles, in a run of 12 s: the run's deadline comes before the request's (8 s
    from the request) and ends the response; the message names the run's deadline."""
    database = register(remote.hostname, front.port)
    synced(database)
    before = integrity.snapshot()
    body_size = len(requests.get(f"{remote.url}/api/hcore/station/", timeout=60).content)
    front.forget()

    def slow(exchange, n):
        time.sleep(4)
        exchange.send(*exchange.forward())

    front.on(is_manifest, servers.first(1, slow))
    front.on(STATION_DUMP, servers.trickle(TRICKLE_EVERY))
    deadlines.DBSYNC_REQUEST_DEADLINE = 8
    deadlines.DBSYNC_RUN_DEADLINE = 12
    outcome = hcore_remotesyncdb(database, "--full")
    assert_failed(
        outcome,
        database,
        "GET /api/hcore/station/",
        "within the run's deadline (DBSYNC_RUN_DEADLINE=12 s)",
    )
    assert_cut_early(front, STATION_DUMP, body_size)
    integrity.assert_unchanged(before)
    deadlines.DBSYNC_RUN_DEADLINE = 120
    assert_recovers(database, remote_objects, front)


def test_records_batch_trickled_fails_at_the_deadline_with_no_transaction_open(
    remote, remote_objects, front, integrity, deadlines, sessions
):
    """A records batch one byte every 2 s. The batches are all fetched to disk before
    the records' transaction opens, so while it trickles no transaction is open (the
    objects' has committed); the request deadline fails the run naming the batch's
    path, no record is installed, and the next run brings them all."""
    database = register(remote.hostname, front.port)
    synced(database, "--no-records")
    objects_done = ("dbsync_syncrun", "dbsync_database")
    before = integrity.snapshot(exclude=objects_done)
    front.forget()
    front.on(is_records_batch, servers.trickle(TRICKLE_EVERY, sessions.sample))
    sessions.follow()
    outcome = hcore_remotesyncdb(database)
    assert_failed(
        outcome, database, BATCH_PATH, "DBSYNC_REQUEST_DEADLINE=6 s", "records and files"
    )
    asked = len(front.asked(is_records_batch))
    assert asked >= 1
    assert all(0 < sent < 20 for sent in answers_ended(front, is_records_batch, asked))
    sessions.assert_no_transaction_waited()
    integrity.assert_unchanged(before, exclude=objects_done)
    assert not Record.objects.exists()
    assert_recovers(database, remote_objects, front)
    remote_count = remote.sql("SELECT count(*) FROM hcore_record")[0][0]
    assert Record.objects.count() == remote_count > 0
