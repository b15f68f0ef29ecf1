"""The workers' task metrics (dbsync.runs.task_counts) with a real Celery worker.

In a process of its own (bin/test), like tests/test_tasks.py: a process's Celery app
configuration is global, and other modules' real workers (tests/test_tasks.py's session
cluster) would take this test's tasks with another storage folder.
"""

import pytest

from dbsync.models import SyncRun, TaskCount
from dbsync.runs.tasks import sync_remote
from project.celery import app
from tests.celery_helpers import FAST_RETRIES, Cluster, WorkerSpec, flush_redis, use_test_broker
from tests.faultproxy import FaultProxy, model_path

# remote, and the module's autouse fixtures (the scrape's token, fresh sums, eager mode)
from tests.test_metrics import eager, figures, fresh_sums, of, remote, token  # noqa: F401
from tests.test_sync import register
from tests.test_tasks import wait_for_run, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# --- the workers' tasks ---------------------------------------------------------------------

FETCH, INSTALL, SYNC = (
    "dbsync.tasks.fetch_dump",
    "dbsync.tasks.install_run",
    "dbsync.tasks.sync_remote",
)


def test_a_real_workers_tasks_are_counted_by_outcome_with_their_time(
    live_server,
    remote,  # noqa: F811 - the fixture
    tmp_path,
):
    """A real Celery worker (tests/celery_helpers.py) on the test Redis runs a sync that
    succeeds, then one whose station dump the remote refuses (503): that fetch is retried
    once (DBSYNC_TASK_MAX_RETRIES), then fails the run. Each execution is counted by the
    worker process that ran it, and the scrape adds them up."""
    saved = {key: app.conf[key] for key in ("broker_url", "result_backend")}
    use_test_broker()
    flush_redis()
    cluster = Cluster(tmp_path, dict(FAST_RETRIES, DBSYNC_STORAGE_ROOT=tmp_path / "storage"))
    proxy = FaultProxy(remote.url)
    proxy.on(
        model_path("station"),
        lambda p, s, h, b: (503, {"Content-Type": "application/json"}, b'{"error": "busy"}'),
    )
    try:
        cluster.use(WorkerSpec.of("counted", concurrency=2))
        good = register(remote, name="good")
        sync_remote.delay(good.pk)
        run = wait_for_run(good)
        assert run.status == SyncRun.SUCCEEDED, run.message
        busy = register(remote, name="busy", port=proxy.port)
        sync_remote.delay(busy.pk)
        run = wait_for_run(busy)
        assert run.status == SyncRun.FAILED, run.message
        # an execution is counted as it ends: after what it wrote on its run
        wait_until(lambda: TaskCount.objects.filter(task=FETCH, outcome="failed").exists())
        wait_until(lambda: TaskCount.objects.filter(task=INSTALL).exists())
        found = figures(live_server)
    finally:
        proxy.close()
        cluster.stop()
        app.conf.update(saved)
        app._pool = None
        app.amqp._producer_pool = None  # it holds the old pool otherwise
    good_fetches = len(SyncRun.objects.get(database=good).fetch_plan["fetched"])
    assert of(found, "dbsync_celery_tasks_total", task=SYNC, outcome="succeeded") == 2
    assert of(found, "dbsync_celery_tasks_total", task=INSTALL, outcome="succeeded") == 1
    assert of(found, "dbsync_celery_tasks_total", task=FETCH, outcome="retried") == 1
    assert of(found, "dbsync_celery_tasks_total", task=FETCH, outcome="failed") == 1
    fetched = of(found, "dbsync_celery_tasks_total", task=FETCH, outcome="succeeded")
    assert fetched >= good_fetches > 0
    assert of(found, "dbsync_celery_tasks_total", task=INSTALL, outcome="failed") is None
    for task in (SYNC, FETCH, INSTALL):
        assert of(found, "dbsync_celery_task_seconds_total", task=task) > 0
