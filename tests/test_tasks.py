"""The Celery pipeline against real workers, a real Redis and a real remote over HTTP."""

import json
import math
import os
import re
import signal
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from dbsync.engine.errors import AlreadyRunning
from dbsync.engine.result import DATA_LABELS
from dbsync.models import SyncRun
from dbsync.runs import queues, schedules, service, storage, tasks
from dbsync.runs.locking import keep_alive
from dbsync.runs.tasks import fetch_dump, install_run, sync_remote
from hcore.models import Gentity, Station, Timeseries
from tests.celery_helpers import (
    FAST_RETRIES,
    Cluster,
    WorkerSpec,
    flush_redis,
    purge_queues,
    start_beat,
    use_test_broker,
)
from tests.faultproxy import FaultProxy, model_path
from tests.graph import assert_same_graph, local_dump, local_graph, remote_graph
from tests.instance import Instance, free_port
from tests.reliability import servers
from tests.test_sync import objects_of, register, replace_body, sync

pytestmark = pytest.mark.django_db(transaction=True)

RUN_TIMEOUT = 180
LATENCY = 0.3


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="tasks.example.org")
    instance.generate(stations=30, seed=11, files_per_station=0.2)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dbsync-storage")


@pytest.fixture(scope="session")
def cluster(django_db_setup, tmp_path_factory, storage_root):
    use_test_broker()
    flush_redis()
    cluster = Cluster(
        tmp_path_factory.mktemp("celery"),
        dict(FAST_RETRIES, DBSYNC_STORAGE_ROOT=storage_root),
    )
    yield cluster
    cluster.stop()


@pytest.fixture
def workers(cluster):
    """One worker on every queue, 8 slots: the usual deployment."""
    yield cluster.use(WorkerSpec.of("all"))
    _settle()


def _settle():
    """Let the runs of the test end before its tables are emptied."""
    try:
        wait_until(lambda: not SyncRun.objects.filter(status__in=SyncRun.ACTIVE).exists(), 60)
    finally:
        purge_queues()


def wait_until(predicate, timeout=RUN_TIMEOUT, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"still not true after {timeout} s")


def wait_for_run(database, status=None, after=0):
    """The first run of ``database`` (pk > after) that has ended."""

    def ended():
        runs = SyncRun.objects.filter(database=database, pk__gt=after).exclude(
            status__in=SyncRun.ACTIVE
        )
        if status:
            runs = runs.filter(status=status)
        return runs.order_by("pk").first()

    return wait_until(ended)


def first_run(database):
    return wait_until(lambda: SyncRun.objects.filter(database=database).order_by("pk").first())


def stored_files(root, run):
    folder = Path(root) / "runs" / str(run.pk)
    return sorted(p.name for p in folder.glob("*")) if folder.exists() else []


def fetch_phase(run):
    fetched = run.fetch_plan["fetched"]
    start = min(datetime.fromisoformat(m["started"]) for m in fetched)
    end = max(datetime.fromisoformat(m["finished"]) for m in fetched)
    return (end - start).total_seconds(), len(fetched)


@pytest.fixture
def slow_proxy(remote):
    """The remote, LATENCY seconds slower on every request."""
    proxy = FaultProxy(remote.url)

    def delay(path, status, headers, body):
        time.sleep(LATENCY)
        return status, headers, body

    proxy.on(lambda path: True, delay)
    yield proxy
    proxy.close()


# --- the basic path -------------------------------------------------------------------


def test_delay_installs_the_same_graph_as_the_command(remote, workers, storage_root):
    database = register(remote)
    sync_remote.delay(database.pk).get(timeout=60)
    run = wait_for_run(database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert_same_graph(remote_graph(remote), local_graph(database))
    assert run.trigger == "beat" and run.full
    assert "Successfully installed" in run.message
    station = run.model_counts["hcore.station"]
    assert station["created"] == station["fetched"] == Station.objects.count() > 0
    # records and files are counted apart from the models (dbsync.engine.result.DATA_LABELS)
    assert set(run.model_counts) - DATA_LABELS == set(run.fetch_plan["entries"])
    # every model was fetched by its own task, the dumps went through the storage
    # with a checksum, and were removed after the install
    fetched = run.fetch_plan["fetched"]
    assert len(fetched) == len(set(run.model_counts) - DATA_LABELS)
    assert all(len(m["sha256"]) == 64 and m["name"].startswith(f"runs/{run.pk}/") for m in fetched)
    assert stored_files(storage_root, run) == []
    # journaled, the default backup; no whole-database dump unless asked for
    assert run.journal == SyncRun.JOURNAL_KEPT and run.backup_path == ""
    database.refresh_from_db()
    assert database.sync_cursor == run.remote_time

    # a repeated delivery of the install, or of a fetch, of a finished run does nothing
    before = local_dump()
    assert install_run.apply(args=[fetched], kwargs={"run_id": run.pk}).get() == {
        "run": run.pk,
        "installed": False,
    }
    assert "skipped" in fetch_dump.apply(args=[run.pk, "hcore.station", "dump"]).get()
    assert local_dump() == before
    run.refresh_from_db()
    assert run.status == SyncRun.SUCCEEDED

    # the command, on the same data, finds nothing to change: the same install
    out, _ = sync(database, "--full")
    assert "0 created, 0 updated" in out and "0 deleted" in out

    # an incremental Celery run of an unchanged remote (change capture) fetches
    # nothing, changes nothing, and keeps the capture's cursor
    database.refresh_from_db()
    cursor = database.capture_cursor
    sync_remote.delay(database.pk, trigger="admin", started_by="alice").get(timeout=60)
    second = wait_for_run(database, after=run.pk + 1)
    assert second.status == SyncRun.SUCCEEDED, second.message
    assert not second.full and second.started_by == "alice"
    assert second.fetch_plan["jobs"] == [] and second.fetch_plan["changed_since"] == cursor
    assert second.totals()["created"] == second.totals()["deleted"] == 0
    assert_same_graph(remote_graph(remote), local_graph(database))

    # one model changed by SQL: its dump alone is fetched, by one task, and it arrives
    remote.sql(
        "UPDATE hcore_timezone SET code = code || 'x' WHERE id = "
        "(SELECT min(id) FROM hcore_timezone)"
    )
    sync_remote.delay(database.pk).get(timeout=60)
    third = wait_for_run(database, after=second.pk)
    assert third.status == SyncRun.SUCCEEDED, third.message
    assert [(m["model"], m["kind"]) for m in third.fetch_plan["fetched"]] == [
        ("hcore.timezone", "dump")
    ]
    assert_same_graph(remote_graph(remote), local_graph(database))


def test_two_syncs_at_once_one_is_refused_and_recorded(remote, slow_proxy, workers):
    database = register(remote, port=slow_proxy.port)
    first, second = sync_remote.delay(database.pk), sync_remote.delay(database.pk)
    answers = [first.get(timeout=60), second.get(timeout=60)]
    assert sorted(a["status"] for a in answers) == [SyncRun.FETCHING, SyncRun.REFUSED]
    wait_for_run(database, SyncRun.SUCCEEDED)
    runs = list(SyncRun.objects.filter(database=database).order_by("pk"))
    assert sorted(r.status for r in runs) == [SyncRun.REFUSED, SyncRun.SUCCEEDED]
    refused = next(r for r in runs if r.status == SyncRun.REFUSED)
    assert "already running" in refused.message and refused.trigger == "beat"

    # the admin's "Sync now": claimed at once, refused at once while it runs
    last = max(r.pk for r in runs)
    result = tasks.enqueue_sync(database, started_by="alice")
    assert result.get(timeout=60)["status"] == SyncRun.FETCHING
    with pytest.raises(AlreadyRunning, match="already running"):
        tasks.enqueue_sync(database, started_by="bob")
    refusal = SyncRun.objects.filter(database=database, started_by="bob").get()
    assert refusal.status == SyncRun.REFUSED and refusal.trigger == "admin"
    # ... and the command is refused too while a Celery run fetches
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="already running"):
        sync(database)
    ended = wait_for_run(database, SyncRun.SUCCEEDED, after=last)
    assert ended.started_by == "alice" and ended.trigger == "admin"


def test_a_failing_fetch_fails_the_run_after_bounded_retries(remote, workers, storage_root):
    proxy = FaultProxy(remote.url)
    try:
        proxy.on(
            model_path("station"),
            lambda p, s, h, b: (503, {"Content-Type": "application/json"}, b'{"error": "busy"}'),
        )
        database = register(remote, port=proxy.port)
        before = local_dump()
        sync_remote.delay(database.pk)
        run = wait_for_run(database)
        assert run.status == SyncRun.FAILED
        assert "hcore.station" in run.message and "HTTP 503" in run.message
        assert local_dump() == before
        # (1 + DBSYNC_TASK_HTTP_RETRIES) * (1 + DBSYNC_TASK_MAX_RETRIES) attempts, no more
        time.sleep(1)
        station_requests = [p for p in proxy.requests if model_path("station")(p)]
        assert len(station_requests) == 4
    finally:
        proxy.close()


def test_a_trickling_remote_fails_the_run_at_the_request_deadline(remote, cluster):
    """A fetch task's dump comes one byte every 2 s (every read within the worker's
    DBSYNC_HTTP_TIMEOUT): the request deadline ends it; neither the client nor the
    task retries it; the run fails naming the model, the path and the deadline, with
    nothing installed; the remote's lock is free: without the fault, the next run
    succeeds. (The front is a fake: a real remote cannot trickle on cue.)"""
    cluster.use(WorkerSpec.of("deadlines", DBSYNC_HTTP_TIMEOUT="5", DBSYNC_REQUEST_DEADLINE="6"))
    front = servers.FaultyFront(remote.url)
    try:
        front.on(model_path("station"), servers.trickle(2.0))
        database = register(remote, port=front.port)
        before = local_dump()
        sync_remote.delay(database.pk)
        run = wait_for_run(database)
        assert run.status == SyncRun.FAILED
        for words in (
            "Fetching hcore.station failed",
            "GET /api/hcore/station/",
            "did not come whole within DBSYNC_REQUEST_DEADLINE=6 s",
        ):
            assert words in run.message, run.message
        assert len(front.asked(model_path("station"))) == 1
        assert local_dump() == before
        front.clear()
        sync_remote.delay(database.pk)
        second = wait_for_run(database, after=run.pk)
        assert second.status == SyncRun.SUCCEEDED, second.message
        assert_same_graph(remote_graph(remote), local_graph(database))
    finally:
        front.close()
        _settle()


MODEL_DUMP = re.compile(r"^/api/hcore/[a-z]+/(\?|$)")


def test_the_fetch_tasks_of_a_run_share_its_disk_budget(remote, cluster):
    """A run's fetch tasks run at once, each in a worker process of its own, and draw
    on one disk budget (the run's row, ``dbsync.runs.diskbudget``). With a budget of
    half the bytes of the remote's dumps, every dump under it, and a worker slot for
    every dump (all of them in flight together, each answer 2 s late): the run fails
    in its fetch, naming the budget; its tasks together wrote no more than it; nothing
    is installed. (Before, each task began from the bytes stored when it started, so
    tasks that started together each saw an empty budget: every fetch succeeded and
    the install, past the budget already, installed the objects before it stopped.)
    With the budget back, the next run succeeds."""
    proxy = FaultProxy(remote.url)
    sizes = defaultdict(int)

    def measure(path, status, headers, body):
        sizes[path.split("?")[0]] += len(body)
        return status, headers, body

    def late(path, status, headers, body):
        time.sleep(2)
        return status, headers, body

    try:
        proxy.on(MODEL_DUMP.match, measure)
        database = register(remote, port=proxy.port)
        sync(database)  # the command, in this process: the dumps' sizes
        first = SyncRun.objects.filter(database=database).latest("pk")
        budget = sum(sizes.values()) // 2
        assert max(sizes.values()) < budget
        remote.sql(
            "UPDATE hcore_gentity SET name = 'Renamed under a budget' "
            "WHERE id = (SELECT min(gpoint_ptr_id) FROM hcore_station)"
        )
        before = local_dump()
        proxy.rules[:] = [(MODEL_DUMP.match, late)]
        cluster.use(WorkerSpec.of("budget", concurrency=len(sizes), DBSYNC_RUN_DISK_BUDGET=budget))
        sync_remote.delay(database.pk, full=True)
        run = wait_for_run(database, after=first.pk)
        assert run.status == SyncRun.FAILED
        assert run.message.startswith("Fetching hcore."), run.message
        assert f"over its disk budget of {budget} bytes (DBSYNC_RUN_DISK_BUDGET)" in run.message
        assert local_dump() == before
        run.refresh_from_db()
        assert 0 < run.disk_spent <= budget

        proxy.rules.clear()
        cluster.use(WorkerSpec.of("all"))
        sync_remote.delay(database.pk)
        second = wait_for_run(database, after=run.pk)
        assert second.status == SyncRun.SUCCEEDED, second.message
        assert_same_graph(remote_graph(remote), local_graph(database))
    finally:
        proxy.close()
        _settle()


def test_a_failing_install_changes_nothing_and_keeps_the_dumps(remote, workers, storage_root):
    proxy = FaultProxy(remote.url)
    try:

        def add_field(body):
            objects = objects_of(body)
            objects[0]["fields"]["colour"] = "blue"
            return ("[\n" + ",\n".join(json.dumps(o) for o in objects) + "\n]\n").encode()

        proxy.on(model_path("gpoint"), replace_body(add_field))
        database = register(remote, port=proxy.port)
        before = local_dump()
        sync_remote.delay(database.pk)
        run = wait_for_run(database)
        assert run.status == SyncRun.FAILED
        assert "'colour'" in run.message
        assert local_dump() == before
        assert "hcore.gpoint.json" in stored_files(storage_root, run)
    finally:
        proxy.close()


def test_embedded_default_runs_the_pipeline_in_process(remote, settings, tmp_path):
    """No broker: CELERY_TASK_ALWAYS_EAGER runs the same tasks in the caller."""
    from project.celery import app

    settings.DBSYNC_STORAGE_ROOT = tmp_path / "storage"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_TASK_BACKUP = False
    database = register(remote)
    app.conf.task_always_eager = True
    try:
        tasks.enqueue_sync(database, started_by="alice")
    finally:
        app.conf.task_always_eager = False
    run = SyncRun.objects.get(database=database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert_same_graph(remote_graph(remote), local_graph(database))


def test_a_refused_scheduled_run_is_approved_once_and_the_next_run_deletes(
    remote, settings, tmp_path
):
    """The pipeline (eager: CELERY_TASK_ALWAYS_EAGER runs the same tasks in the caller)
    refused by the delete guard keeps what it would delete with the run; approved once
    (the admin action's helper), the next run deletes exactly that and spends the
    approval; the one after is refused again."""
    from project.celery import app

    settings.DBSYNC_STORAGE_ROOT = tmp_path / "storage"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_TASK_BACKUP = False
    settings.DBSYNC_HTTP_RETRIES = 1
    proxy = FaultProxy(remote.url)
    database = register(remote, port=proxy.port)
    app.conf.task_always_eager = True
    try:
        tasks.enqueue_sync(database)
        series = Timeseries.objects.filter(original_db=database)
        n_series = series.count()
        assert n_series
        proxy.on(model_path("timeseries"), replace_body(lambda body: b"[\n]\n"))
        tasks.enqueue_sync(database, full=True)
        refused = SyncRun.objects.filter(database=database).latest("pk")
        assert refused.status == SyncRun.FAILED
        assert f"hcore.timeseries: {n_series} of {n_series}" in refused.message
        assert len(refused.deletions["objects"]["hcore.timeseries"]) == n_series
        assert series.count() == n_series

        service.approve_deletions(refused, "alice")
        tasks.enqueue_sync(database, full=True)
        applied = SyncRun.objects.filter(database=database).latest("pk")
        assert applied.status == SyncRun.SUCCEEDED, applied.message
        assert not series.exists()
        refused.refresh_from_db()
        assert refused.approved_by == "alice" and refused.approval_used_by == applied

        proxy.on(model_path("instrument"), replace_body(lambda body: b"[\n]\n"))
        tasks.enqueue_sync(database, full=True)
        again = SyncRun.objects.filter(database=database).latest("pk")
        assert again.status == SyncRun.FAILED and "hcore.instrument" in again.message
    finally:
        app.conf.task_always_eager = False
        proxy.close()


# --- storage, schedules, notifications, reaping (no worker needed) --------------------------


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_storage_overwrites_a_repeated_fetch_and_checks_checksums(
    kind, settings, tmp_path, request
):
    settings.DBSYNC_STORAGE_ROOT = tmp_path / "storage"
    if kind == "s3":
        _client, env = request.getfixturevalue("s3")
        for key, value in env.items():
            setattr(settings, key, value)
    dump = tmp_path / "hcore.station.json"
    dump.write_text("[\n]\n")
    first = storage.save_dump(7, dump)
    dump.write_text('[\n{"model": "hcore.station", "pk": 1, "fields": {}}\n]\n')
    second = storage.save_dump(7, dump)
    assert first["name"] == second["name"] == "runs/7/hcore.station.json"
    assert first["sha256"] != second["sha256"]
    work = tmp_path / "work"
    work.mkdir()
    local = storage.local_copies(7, [second], work)
    assert Path(local[second["name"]]).read_text() == dump.read_text()
    with pytest.raises(storage.StorageError, match="differs from what its fetch stored"):
        storage.local_copies(7, [first], work)
    with pytest.raises(storage.StorageError, match="not a dump of run 8"):
        storage.local_copies(8, [second], work)
    assert storage.delete_run(7) == 1
    with pytest.raises(storage.StorageError, match="not in the storage"):
        storage.local_copies(7, [second], work)


def test_a_verification_runs_in_a_worker_as_the_command_does(remote, workers):
    database = register(remote)
    sync_remote.delay(database.pk)  # by the worker: the files are in its storage
    synced = wait_for_run(database, SyncRun.SUCCEEDED).pk
    outcome = tasks.verify_remote.delay(database.pk).get(timeout=RUN_TIMEOUT)
    assert outcome["state"] == "equal"
    run = wait_for_run(database, after=synced)
    assert (run.kind, run.trigger, run.status) == (SyncRun.VERIFY, "beat", SyncRun.SUCCEEDED)
    assert run.verification["state"] == "equal" and run.message.startswith("Verified equal")


def test_schedule_fields_keep_the_periodic_task_in_step(remote):
    database = register(remote)
    assert schedules.periodic_task_of(database) is None
    database.schedule_kind, database.interval_minutes = "interval", 30
    database.full_clean()
    database.save()
    task = schedules.periodic_task_of(database)
    assert task.enabled and task.task == "dbsync.tasks.sync_remote"
    assert json.loads(task.args) == [database.pk]
    assert json.loads(task.kwargs) == {"trigger": "beat"}
    assert (task.interval.every, task.interval.period) == (30, IntervalSchedule.MINUTES)

    database.schedule_kind, database.crontab = "crontab", "30 3 * * 1-5"
    database.save()
    task.refresh_from_db()
    assert task.interval is None and task.crontab.hour == "3" and task.crontab.minute == "30"
    # saving the cursor (every sync does) leaves the periodic task alone
    changed = task.date_changed
    database.save(update_fields=["sync_cursor"])
    task.refresh_from_db()
    assert task.date_changed == changed

    database.is_active = False
    database.save()
    task.refresh_from_db()
    assert not task.enabled
    database.is_active, database.schedule_kind = True, "none"
    database.save()
    task.refresh_from_db()
    assert not task.enabled

    for bad in ("30 3 * *", "61 * * * *", "* 25 * * *", "a b c d e"):
        database.schedule_kind, database.crontab = "crontab", bad
        with pytest.raises(ValidationError, match="crontab"):
            database.full_clean()
    database.schedule_kind, database.interval_minutes = "interval", None
    with pytest.raises(ValidationError, match="minutes"):
        database.full_clean()

    database.delete()
    assert not PeriodicTask.objects.filter(task="dbsync.tasks.sync_remote").exists()


def _failed_run(database, trigger="beat"):
    run = SyncRun.objects.create(
        database=database, status=SyncRun.FETCHING, trigger=trigger, heartbeat=timezone.now()
    )
    service.fail_run(run.pk, "cannot reach the remote")
    return run


def test_scheduled_failures_are_mailed_once_per_streak(remote, settings, mailoutbox, caplog):
    settings.ADMINS = [("Ops", "ops@example.org")]
    database = register(remote)
    _failed_run(database)
    assert len(mailoutbox) == 1
    assert "Scheduled sync of" in mailoutbox[0].subject and database.name in mailoutbox[0].subject
    assert "cannot reach the remote" in mailoutbox[0].body
    assert any(r.levelname == "ERROR" and "Scheduled sync" in r.message for r in caplog.records)
    _failed_run(database)
    _failed_run(database, trigger="admin")  # a person who clicked sees the failure
    assert len(mailoutbox) == 1
    SyncRun.objects.create(database=database, status=SyncRun.SUCCEEDED, trigger="command")
    _failed_run(database)
    assert len(mailoutbox) == 2


def test_stale_runs_are_reaped(remote, settings, tmp_path):
    settings.DBSYNC_STALE_SECONDS = 60
    settings.DBSYNC_STORAGE_ROOT = tmp_path
    database = register(remote)
    old = timezone.now() - timedelta(seconds=120)
    fetching = SyncRun.objects.create(database=database, status=SyncRun.FETCHING, heartbeat=old)
    other = register(remote, name="other")
    running = SyncRun.objects.create(database=other, status=SyncRun.RUNNING, heartbeat=old)
    alive = SyncRun.objects.create(
        database=register(remote, name="third"), status=SyncRun.FETCHING
    )
    with keep_alive(alive.pk, every=0.05):
        time.sleep(0.2)
    assert service.reap_stale_runs()["reaped"] == 2
    for run in (fetching, running, alive):
        run.refresh_from_db()
    assert fetching.status == running.status == SyncRun.FAILED
    assert "Interrupted" in fetching.message
    assert alive.status == SyncRun.FETCHING and alive.heartbeat > timezone.now() - timedelta(
        seconds=5
    )


# --- the long scenarios ----------------------------------------------------------------------


@pytest.mark.slow
def test_fetch_tasks_run_in_parallel(remote, slow_proxy, workers):
    database = register(remote, port=slow_proxy.port)
    sync_remote.delay(database.pk)
    run = wait_for_run(database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    seconds, models = fetch_phase(run)
    sequential = models * LATENCY
    waves = math.ceil(models / 8) * LATENCY
    print(
        f"\nparallel fetch: {models} dumps, {LATENCY * 1000:.0f} ms added per request, "
        f"8 worker slots: fetch phase {seconds:.2f} s; sequential would be >= "
        f"{sequential:.2f} s, ideal ceil({models}/8) x latency = {waves:.2f} s; "
        f"whole run {(run.finished_at - run.started_at).total_seconds():.2f} s"
    )
    assert seconds < 0.5 * sequential
    assert_same_graph(remote_graph(remote), local_graph(database))


@pytest.mark.slow
def test_beat_syncs_a_scheduled_remote_by_itself(remote, workers, cluster, slow_proxy):
    database = register(remote, port=slow_proxy.port)
    database.schedule_kind, database.interval_minutes = "interval", 1
    database.save()
    # a few seconds instead of a minute, for the test
    task = schedules.periodic_task_of(database)
    task.interval, _ = IntervalSchedule.objects.get_or_create(
        every=2, period=IntervalSchedule.SECONDS
    )
    task.save()
    beat = start_beat(cluster.tmp, cluster.base_env)
    try:
        first = wait_for_run(database, SyncRun.SUCCEEDED)
        # keep beating until it has fired while a run was going
        wait_until(
            lambda: SyncRun.objects.filter(database=database, status=SyncRun.REFUSED).exists(),
            60,
        )
    finally:
        beat.stop()
    _settle()
    runs = SyncRun.objects.filter(database=database)
    assert {r.trigger for r in runs} == {"beat"}
    assert {r.status for r in runs} == {SyncRun.SUCCEEDED, SyncRun.REFUSED}
    assert first.full
    assert_same_graph(remote_graph(remote), local_graph(database))


@pytest.fixture(scope="module")
def big(instance_template):
    instance = Instance(instance_template, hostname="big-tasks.example.org")
    instance.generate(stations=3000, seed=5)
    instance.start()
    yield instance
    instance.drop()


@pytest.mark.slow
def test_kill_9_during_the_install(big, cluster):
    workers = cluster.use(
        WorkerSpec.of("fetch", queues=(queues.SYNC, queues.FETCH)),
        WorkerSpec.of("install", queues=(queues.INSTALL,), concurrency=1),
    )
    installer = workers["install"]
    database = register(big)
    before = local_dump()
    sync_remote.delay(database.pk)
    installer.wait_for_output(
        f"run {first_run(database).pk}: Installing fixtures from file hcore.gentity", timeout=300
    )
    time.sleep(0.2)
    (child,) = installer.children()
    os.kill(child, signal.SIGKILL)
    # the worker redelivers the install; it finds the run interrupted and ends it
    run = wait_for_run(database)
    assert run.status == SyncRun.FAILED
    assert "Interrupted" in run.message, run.message
    assert local_dump() == before
    assert "SIGKILL" in installer.output()

    sync_remote.delay(database.pk)
    second = wait_for_run(database, after=run.pk)
    assert second.status == SyncRun.SUCCEEDED, second.message
    assert_same_graph(remote_graph(big), local_graph(database))
    _settle()


@pytest.mark.slow
def test_kill_9_of_the_whole_worker_is_reaped(big, cluster):
    workers = cluster.use(
        WorkerSpec.of("fetch", queues=(queues.SYNC, queues.FETCH)),
        WorkerSpec.of("install", queues=(queues.INSTALL,), concurrency=1),
    )
    database = register(big)
    before = local_dump()
    sync_remote.delay(database.pk)
    workers["install"].wait_for_output(
        f"run {first_run(database).pk}: Installing fixtures from file hcore.gentity", timeout=300
    )
    workers["install"].kill9()  # the main process too: nothing redelivers soon
    assert local_dump() == before
    run = SyncRun.objects.get(database=database)
    assert run.status == SyncRun.RUNNING
    # the periodic reaper (or the next claim) sees the lock free: the worker is gone
    assert service.reap_stale_runs()["reaped"] == 1
    run.refresh_from_db()
    assert run.status == SyncRun.FAILED and "Interrupted" in run.message
    cluster.use(WorkerSpec.of("all"))
    sync_remote.delay(database.pk)
    second = wait_for_run(database, after=run.pk)
    assert second.status == SyncRun.SUCCEEDED, second.message
    assert_same_graph(remote_graph(big), local_graph(database))
    _settle()


@pytest.mark.slow
def test_fetch_and_install_on_different_workers_sharing_a_folder(remote, cluster, storage_root):
    workers = cluster.use(
        WorkerSpec.of("fetch", queues=(queues.SYNC, queues.FETCH)),
        WorkerSpec.of("install", queues=(queues.INSTALL,), concurrency=2),
    )
    run = _separate_workers_sync(remote, workers)
    assert stored_files(storage_root, run) == []


@pytest.fixture
def s3(tmp_path):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="dbsync-dumps")
    env = {
        "DBSYNC_STORAGE": "s3",
        "DBSYNC_S3_BUCKET": "dbsync-dumps",
        "DBSYNC_S3_ENDPOINT_URL": endpoint,
        "DBSYNC_S3_REGION": "us-east-1",
        "DBSYNC_S3_ACCESS_KEY_ID": "testing",
        "DBSYNC_S3_SECRET_ACCESS_KEY": "testing",
    }
    yield client, env
    server.stop()


@pytest.mark.slow
def test_fetch_and_install_on_different_workers_sharing_s3(remote, cluster, s3):
    client, env = s3
    workers = cluster.use(
        WorkerSpec.of("fetch-s3", queues=(queues.SYNC, queues.FETCH), **env),
        WorkerSpec.of("install-s3", queues=(queues.INSTALL,), concurrency=2, **env),
    )
    run = _separate_workers_sync(remote, workers, fetcher="fetch-s3", installer="install-s3")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="dbsync-dumps").get("Contents", [])]
    assert not [k for k in keys if k.startswith(f"dbsync/runs/{run.pk}/")]
    cluster.stop()  # their storage settings are not the others'


def _separate_workers_sync(remote, workers, fetcher="fetch", installer="install"):
    database = register(remote)
    sync_remote.delay(database.pk)
    run = wait_for_run(database)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert_same_graph(remote_graph(remote), local_graph(database))
    assert {m["worker"].split("@")[0].rsplit("-", 1)[0] for m in run.fetch_plan["fetched"]} == {
        fetcher
    }
    assert f"run {run.pk}: Installing fixtures" in workers[installer].output()
    assert f"run {run.pk}: Installing fixtures" not in workers[fetcher].output()
    # the workers' own folders were their own
    assert workers[fetcher].var_dir != workers[installer].var_dir
    assert Gentity.objects.filter(original_db=database).exists()
    _settle()
    return run
