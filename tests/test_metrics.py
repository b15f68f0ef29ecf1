"""``/-/metrics``: scraped over HTTP (live_server) after real syncs of a real remote,
parsed with prometheus_client's own parser, as Prometheus would read it."""

from datetime import timedelta

import pytest
import requests
from django.contrib.auth.models import Permission, User
from django.core.management.base import CommandError
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from dbsync.models import Database, SyncRun
from dbsync.runs import queues
from hcore.models import Record
from project.celery import app
from tests.instance import Instance, free_port
from tests.test_sync import register, sync

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "a-metrics-token-for-the-tests-0123456789"
# No worker consumes here: what is sent waits in its queue.
IDLE_BROKER_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="metrics.example.org")
    instance.generate(stations=5, seed=3, records_per_series=20, files_per_station=0.4)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture(autouse=True)
def token(settings):
    settings.DBSYNC_METRICS_TOKEN = TOKEN
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_sums():
    """Each test as a new process: no totals kept from another test's database."""
    from dbsync.runs import metrics

    metrics.settled_sums = metrics.SettledSums()


@pytest.fixture(autouse=True)
def eager():
    """No broker for the scrapes that do not test it (its figures are then left out)."""
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def scrape(live_server, token=TOKEN, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{live_server.url}/-/metrics", headers=headers, timeout=60, **kwargs)


def figures(live_server):
    """{(name, frozenset(labels)): value} of one scrape."""
    response = scrape(live_server)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def of(found, name, **labels):
    return found.get((name, frozenset(labels.items())))


def test_after_a_real_sync_the_remote_is_fresh_and_what_it_installed_is_counted(
    live_server, remote
):
    database = register(remote, name="athens")
    sync(database)
    database.refresh_from_db()
    run = SyncRun.objects.get(database=database)
    found = figures(live_server)

    assert of(found, "dbsync_last_success_timestamp_seconds", remote="athens") == pytest.approx(
        database.last_sync.timestamp()
    )
    assert of(found, "dbsync_overdue", remote="athens") == 0
    assert of(found, "dbsync_freshness_state", remote="athens", state="ok") == 1
    assert of(found, "dbsync_freshness_state", remote="athens", state="overdue") == 0
    assert of(found, "dbsync_runs_total", remote="athens", status="succeeded") == 1
    assert of(found, "dbsync_runs_total", remote="athens", status="failed") is None
    assert of(found, "dbsync_failure_streak", remote="athens") == 0
    duration = of(found, "dbsync_last_run_duration_seconds", remote="athens", status="succeeded")
    assert duration == pytest.approx(run.duration.total_seconds())
    objects = sum(
        c["created"] + c["updated"]
        for label, c in run.model_counts.items()
        if label not in ("hcore.record", "hcore.gentityfile.content")
    )
    assert objects > 0
    assert of(found, "dbsync_installed_total", remote="athens", kind="objects") == objects
    records = Record.objects.filter(timeseries__original_db=database).count()
    assert records == remote.sql("SELECT count(*) FROM hcore_record")[0][0] > 0
    assert of(found, "dbsync_installed_total", remote="athens", kind="records") == records
    files = remote.sql("SELECT count(*) FROM hcore_gentityfile WHERE content <> ''")[0][0]
    assert of(found, "dbsync_installed_total", remote="athens", kind="files") == files
    assert of(found, "dbsync_last_success_installed", remote="athens", kind="records") == records
    for status in SyncRun.ACTIVE:
        assert of(found, "dbsync_active_runs", status=status) == 0

    sync(database)  # nothing changed: the totals stay, the last run installed nothing
    found = figures(live_server)
    assert of(found, "dbsync_runs_total", remote="athens", status="succeeded") == 2
    assert of(found, "dbsync_installed_total", remote="athens", kind="records") == records
    assert of(found, "dbsync_last_success_installed", remote="athens", kind="records") == 0


def test_a_failed_run_starts_a_streak_that_a_success_ends(live_server, remote, settings):
    database = register(remote, name="patras")
    sync(database)
    # No retry of the port where nothing listens (the good syncs keep theirs: a busy
    # machine's remote may drop a connection, which a retry absorbs).
    settings.DBSYNC_HTTP_RETRIES = 0
    Database.objects.filter(pk=database.pk).update(port=free_port())  # nothing listens
    database.refresh_from_db()
    SyncRun.objects.create(
        database=database, status=SyncRun.REFUSED, finished_at=timezone.now(), trigger="beat"
    )  # a refusal neither breaks nor ends a streak
    for _ in range(2):
        with pytest.raises(CommandError, match="cannot reach"):
            sync(database)
    found = figures(live_server)
    assert of(found, "dbsync_runs_total", remote="patras", status="failed") == 2
    assert of(found, "dbsync_runs_total", remote="patras", status="refused") == 1
    assert of(found, "dbsync_runs_total", remote="patras", status="succeeded") == 1
    assert of(found, "dbsync_failure_streak", remote="patras") == 2
    assert of(found, "dbsync_freshness_state", remote="patras", state="failing") == 1
    assert of(found, "dbsync_overdue", remote="patras") == 0  # failing, but not yet late
    failed = of(found, "dbsync_last_run_duration_seconds", remote="patras", status="failed")
    assert failed is not None and failed >= 0

    settings.DBSYNC_HTTP_RETRIES = 2
    Database.objects.filter(pk=database.pk).update(port=remote.port)
    database.refresh_from_db()
    sync(database)
    found = figures(live_server)
    assert of(found, "dbsync_failure_streak", remote="patras") == 0
    assert of(found, "dbsync_runs_total", remote="patras", status="failed") == 2


def test_a_stale_remote_is_overdue_and_a_never_synced_one_too(live_server):
    now = timezone.now()
    stale = Database.objects.create(name="stale", hostname="stale.example.org")
    SyncRun.objects.create(
        database=stale,
        status=SyncRun.SUCCEEDED,
        started_at=now - timedelta(days=3, minutes=5),
        finished_at=now - timedelta(days=3),
    )
    Database.objects.filter(pk=stale.pk).update(last_sync=now - timedelta(days=3))
    hourly = Database.objects.create(
        name="hourly", hostname="hourly.example.org", schedule_kind="interval", interval_minutes=60
    )
    Database.objects.filter(pk=hourly.pk).update(last_sync=now - timedelta(minutes=30))
    Database.objects.create(name="new", hostname="new.example.org")
    Database.objects.create(name="off", hostname="off.example.org", is_active=False)

    found = figures(live_server)
    assert of(found, "dbsync_overdue", remote="stale") == 1
    assert of(found, "dbsync_freshness_state", remote="stale", state="overdue") == 1
    due = of(found, "dbsync_due_by_timestamp_seconds", remote="stale")
    assert due < now.timestamp()
    assert of(found, "dbsync_overdue", remote="hourly") == 0
    assert of(found, "dbsync_due_by_timestamp_seconds", remote="hourly") > now.timestamp()
    assert of(found, "dbsync_overdue", remote="new") == 1
    assert of(found, "dbsync_freshness_state", remote="new", state="never synced") == 1
    assert of(found, "dbsync_overdue", remote="off") == 0


def test_runs_in_progress_are_counted_by_state(live_server):
    database = Database.objects.create(name="busy", hostname="busy.example.org")
    run = SyncRun.objects.create(
        database=database, status=SyncRun.FETCHING, heartbeat=timezone.now()
    )
    found = figures(live_server)
    assert of(found, "dbsync_active_runs", status="fetching") == 1
    assert of(found, "dbsync_active_runs", status="running") == 0
    beat = of(
        found, "dbsync_active_run_heartbeat_timestamp_seconds", remote="busy", status="fetching"
    )
    assert beat == pytest.approx(run.heartbeat.timestamp())


def test_stored_counts_of_another_shape_do_not_fail_the_scrape(live_server):
    database = Database.objects.create(name="odd", hostname="odd.example.org")
    for counts in ({"hcore.station": "many"}, {"hcore.record": {"created": "x"}}, [], None):
        SyncRun.objects.create(
            database=database,
            status=SyncRun.SUCCEEDED,
            finished_at=timezone.now(),
            model_counts=counts if counts is not None else {},
        )
    found = figures(live_server)
    assert of(found, "dbsync_installed_total", remote="odd", kind="records") == 0
    assert of(found, "dbsync_runs_total", remote="odd", status="succeeded") == 4


def test_the_queues_waiting_messages_are_counted(live_server):
    """A broker nobody consumes: a task sent there waits in its queue."""
    import redis

    saved = {key: app.conf[key] for key in ("broker_url", "result_backend")}
    redis.Redis.from_url(IDLE_BROKER_URL).flushdb()
    app.conf.update(broker_url=IDLE_BROKER_URL, result_backend=IDLE_BROKER_URL)
    app.conf.task_always_eager = False
    app._pool = None
    app.amqp._producer_pool = None  # it holds the old pool otherwise
    try:
        app.send_task("dbsync.tasks.reap_stale_runs", queue=queues.SYNC)
        found = figures(live_server)
        assert of(found, "dbsync_broker_up") == 1
        assert of(found, "dbsync_queue_messages", queue=queues.SYNC) == 1
        assert of(found, "dbsync_queue_messages", queue=queues.INSTALL) == 0
    finally:
        redis.Redis.from_url(IDLE_BROKER_URL).flushdb()
        app.conf.update(saved)
        app._pool = None
        app.amqp._producer_pool = None  # it holds the old pool otherwise


def test_a_broker_down_is_a_figure_not_a_failed_scrape(live_server):
    saved = app.conf.broker_url
    app.conf.update(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app.conf.task_always_eager = False
    app._pool = None
    app.amqp._producer_pool = None  # it holds the old pool otherwise
    try:
        found = figures(live_server)
    finally:
        app.conf.update(broker_url=saved)
        app._pool = None
        app.amqp._producer_pool = None  # it holds the old pool otherwise
    assert of(found, "dbsync_broker_up") == 0
    assert not [key for key in found if key[0] == "dbsync_queue_messages"]


# --- who may scrape ------------------------------------------------------------------------


def test_without_a_token_or_with_a_wrong_one_the_scrape_is_refused(live_server):
    Database.objects.create(name="secretive", hostname="secretive.example.org")
    response = scrape(live_server, token=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "secretive" not in response.text
    wrong = scrape(live_server, token=TOKEN[:-1] + "x")
    assert (
        wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    )
    assert "secretive" not in wrong.text
    basic = requests.get(f"{live_server.url}/-/metrics", auth=("admin", TOKEN), timeout=60)
    assert basic.status_code == 401
    assert scrape(live_server).status_code == 200
    assert "secretive" in scrape(live_server).text


def test_with_no_token_configured_no_token_is_accepted(live_server, settings):
    settings.DBSYNC_METRICS_TOKEN = ""
    assert scrape(live_server, token="").status_code == 401
    assert scrape(live_server, token="anything-at-all-long-enough-0123").status_code == 401


def test_a_staff_user_needs_the_permissions_to_view_remotes_and_runs(client):
    user = User.objects.create_user("watcher", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get("/-/metrics").status_code == 403
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_database", "view_syncrun"])
    )
    response = client.get("/-/metrics")
    assert response.status_code == 200
    assert b"dbsync_active_runs" in response.content
    assert client.post("/-/metrics").status_code == 405


def test_the_sums_are_the_same_whether_the_runs_have_settled_or_not():
    """The totals of runs that ended long ago are kept in the process (SettledSums): a
    later scrape, when every run has settled, and a repeated one, count each run once."""
    from dbsync.runs.metrics import SettledSums

    now = timezone.now()
    database = Database.objects.create(name="history", hostname="history.example.org")
    counts = {
        "hcore.record": {"created": 10, "updated": 1, "deleted": 2},
        "hcore.station": {"created": 1, "updated": 0, "deleted": 0},
    }
    for age in (timedelta(days=3), timedelta(days=2), timedelta(0)):
        SyncRun.objects.create(
            database=database,
            status=SyncRun.SUCCEEDED,
            started_at=now - age - timedelta(minutes=5),
            finished_at=now - age,
            model_counts=counts,
        )
    SyncRun.objects.create(
        database=database, status=SyncRun.FAILED, finished_at=now, model_counts=counts
    )
    sums = SettledSums()
    first = sums.totals(now)
    assert first[(database.pk, "records")] == (33, 6)
    assert first[(database.pk, "objects")] == (3, 0)
    assert sums.totals(now + timedelta(hours=1)) == first
    assert sums.totals(now + timedelta(hours=1)) == first
