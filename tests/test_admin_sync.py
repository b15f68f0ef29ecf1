"""The admin's "Sync now": a button on a remote's page and an action on the list.

The pipeline runs eagerly (CELERY_TASK_ALWAYS_EAGER) in the process that handles the
press, against a real remote instance over HTTP; "a run in progress" is a real first
press whose pipeline waits, unconsumed, on a Redis database of its own.
"""

import os

import pytest
from django.contrib import messages
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from dbsync.admin import start_sync, sync_permission
from dbsync.models import Database, SyncRun
from hcore.models import Station
from project.celery import app
from tests import browser as b
from tests.instance import Instance
from tests.test_sync import register

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "a-long-test-password"
# No worker listens here: a queued pipeline stays queued (the remote stays busy).
IDLE_BROKER_URL = os.environ.get("TEST_IDLE_BROKER_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="adminsync.example.org")
    instance.generate(stations=6, seed=5, files_per_station=0)
    instance.start()
    code = "from hcore.models import Station\nfor s in Station.objects.all(): print(s.name)"
    names = instance.manage("shell", "-v0", "-c", code).stdout.splitlines()
    instance.station_names = sorted(names)
    yield instance
    instance.drop()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def eager(settings, tmp_path):
    """The whole pipeline in the caller's process: what CELERY_TASK_ALWAYS_EAGER does."""
    settings.DBSYNC_STORAGE_ROOT = tmp_path / "storage"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_TASK_BACKUP = False
    # The Celery app read its settings at startup; a settings override does not reach it.
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def idle_broker():
    """A broker nobody consumes: a queued run stays queued (FETCHING, heartbeat fresh)."""
    import redis

    saved = {key: app.conf[key] for key in ("broker_url", "result_backend", "task_always_eager")}
    redis.Redis.from_url(IDLE_BROKER_URL).flushdb()
    app.conf.update(broker_url=IDLE_BROKER_URL, result_backend=IDLE_BROKER_URL)
    app.conf.task_always_eager = False
    app._pool = None
    yield
    redis.Redis.from_url(IDLE_BROKER_URL).flushdb()
    app.conf.update(saved)
    app._pool = None


def make_staff(username, sync=True):
    """A staff user who may view remotes, runs and stations, and (``sync``) start syncs."""
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    codenames = ["view_database", "view_syncrun", "view_station"]
    if sync:
        codenames.append(sync_permission().split(".", 1)[1])
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def sync_now_url(database):
    return reverse("admin:dbsync_database_sync_now", args=[database.pk])


def change_url(database):
    return reverse("admin:dbsync_database_change", args=[database.pk])


def texts(response):
    return [str(message) for message in response.context["messages"]]


# --- the button and the action, through the test client ------------------------------------


def test_sync_now_button_runs_a_sync_that_replicates_the_stations(client, remote, eager):
    database = register(remote)
    client.force_login(make_staff("syncer"))
    page = client.get(change_url(database))
    assert 'id="sync-now"' in page.text and sync_now_url(database) in page.text

    response = client.post(sync_now_url(database), follow=True)

    run = SyncRun.objects.get(database=database)
    assert response.redirect_chain[-1][0].endswith(f"?database__id__exact={database.pk}")
    assert texts(response) == [f"Queued a sync of {database}: run #{run.pk} ({run.status})."]
    assert (run.status, run.trigger, run.started_by) == (SyncRun.SUCCEEDED, "admin", "syncer")
    replicated = Station.objects.filter(original_db=database)
    assert sorted(replicated.values_list("name", flat=True)) == remote.station_names
    assert list(response.context["cl"].result_list) == [run]


def test_sync_now_action_syncs_the_selected_remotes(client, remote, eager):
    database = register(remote)
    client.force_login(make_staff("syncer"))
    listing = client.get(reverse("admin:dbsync_database_changelist"))
    assert "sync_now" in dict(listing.context["action_form"].fields["action"].choices)
    response = client.post(
        reverse("admin:dbsync_database_changelist"),
        {"action": "sync_now", "_selected_action": [database.pk]},
        follow=True,
    )
    run = SyncRun.objects.get(database=database)
    assert texts(response) == [f"Queued a sync of {database}: run #{run.pk} ({run.status})."]
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert Station.objects.filter(original_db=database).count() == len(remote.station_names)


def test_sync_now_backing_up_first_backs_up_though_tasks_do_not_by_default(
    client, remote, eager, settings, tmp_path
):
    settings.DBSYNC_BACKUP_DIR = tmp_path / "backups"
    database = register(remote)
    client.force_login(make_staff("syncer"))
    changelist = reverse("admin:dbsync_database_changelist")
    client.post(changelist, {"action": "sync_now", "_selected_action": [database.pk]}, follow=True)
    assert SyncRun.objects.get(database=database).backup_path == ""  # DBSYNC_TASK_BACKUP off

    response = client.post(
        changelist,
        {"action": "sync_now_with_backup", "_selected_action": [database.pk]},
        follow=True,
    )

    run = SyncRun.objects.filter(database=database).latest("pk")
    assert texts(response) == [f"Queued a sync of {database}: run #{run.pk} ({run.status})."]
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.options["backup"] is True
    assert [str(p) for p in settings.DBSYNC_BACKUP_DIR.iterdir()] == [run.backup_path]


def test_a_second_press_while_a_run_is_active_is_refused_and_recorded(client, remote, idle_broker):
    database = register(remote)
    client.force_login(make_staff("syncer"))
    first = client.post(sync_now_url(database), follow=True)
    run = SyncRun.objects.get(database=database)
    assert run.status == SyncRun.FETCHING  # queued; no worker takes it
    assert texts(first) == [f"Queued a sync of {database}: run #{run.pk} (fetching)."]

    second = client.post(sync_now_url(database), follow=True)

    [message] = second.context["messages"]
    assert message.level == messages.WARNING
    assert str(message).startswith(f"Not syncing {database}: ")
    refused = SyncRun.objects.exclude(pk=run.pk).get(database=database)
    assert (refused.status, refused.trigger, refused.started_by) == (
        SyncRun.REFUSED,
        "admin",
        "syncer",
    )
    assert refused.message and refused.message in str(message)


def test_without_the_permission_there_is_no_button_no_action_and_403(client, remote):
    database = register(remote)
    client.force_login(make_staff("viewer", sync=False))
    page = client.get(change_url(database))
    assert page.status_code == 200
    assert 'id="sync-now"' not in page.text and sync_now_url(database) not in page.text
    listing = client.get(reverse("admin:dbsync_database_changelist"))
    assert listing.context["action_form"] is None or "sync_now" not in dict(
        listing.context["action_form"].fields["action"].choices
    )
    assert client.post(sync_now_url(database)).status_code == 403
    response = client.post(
        reverse("admin:dbsync_database_changelist"),
        {"action": "sync_now", "_selected_action": [database.pk]},
    )
    assert response.status_code in (200, 302)  # an unknown action: nothing done
    assert not SyncRun.objects.exists()


def test_sync_now_must_be_posted(client, remote):
    database = register(remote)
    client.force_login(make_staff("syncer"))
    assert client.get(sync_now_url(database)).status_code == 405
    assert not SyncRun.objects.exists()


def test_start_sync_reports_an_inactive_remote_as_an_error():
    database = Database.objects.create(name="off", hostname="off.example.org", is_active=False)
    level, message = start_sync(database, started_by="alice")
    assert level == messages.ERROR
    assert message == f"Could not sync off: The remote {database} is inactive; activate it first."
    assert not SyncRun.objects.exists()


# --- what the lists and the run page show --------------------------------------------------


def add_remotes_with_runs(first, count):
    for i in range(first, first + count):
        database = Database.objects.create(name=f"r{i}", hostname=f"r{i}.example.org")
        for status in (SyncRun.FAILED, SyncRun.SUCCEEDED):
            SyncRun.objects.create(database=database, status=status, trigger="beat")


def test_remote_list_shows_the_last_run_in_a_fixed_number_of_queries(
    admin_client, django_assert_max_num_queries
):
    url = reverse("admin:dbsync_database_changelist")
    add_remotes_with_runs(0, 2)
    admin_client.get(url)  # warm up: session, content types
    with django_assert_max_num_queries(8) as few:
        admin_client.get(url)
    add_remotes_with_runs(2, 10)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(url)
    latest = SyncRun.objects.filter(database__name="r7").order_by("-pk").first()
    row = next(r for r in response.text.split("<tr") if ">r7<" in r)
    assert f">#{latest.pk}</a>" in row and "succeeded" in row and " ago" in row


def test_run_page_shows_progress_and_reloads_while_active(admin_client, remote):
    database = register(remote)
    run = SyncRun.objects.create(
        database=database,
        status=SyncRun.FETCHING,
        trigger="admin",
        started_by="alice",
        progress="fetching 12 dumps",
    )
    url = reverse("admin:dbsync_syncrun_change", args=[run.pk])
    page = admin_client.get(url).text
    assert "fetching 12 dumps" in page and "alice" in page and "admin" in page
    assert 'http-equiv="refresh"' in page
    listing = admin_client.get(reverse("admin:dbsync_syncrun_changelist")).text
    assert 'http-equiv="refresh"' in listing and "fetching 12 dumps" in listing
    SyncRun.objects.filter(pk=run.pk).update(status=SyncRun.SUCCEEDED, progress="")
    assert 'http-equiv="refresh"' not in admin_client.get(url).text


# --- in a real browser ---------------------------------------------------------------------


@pytest.fixture
def chromium():
    browser = b.browser_or_skip()
    yield browser
    browser.quit()


def test_in_a_browser_sync_now_replicates_the_stations(live_server, chromium, remote, eager):
    """Headless Chromium against live_server; the pipeline runs eagerly inside the
    POST (CELERY_TASK_ALWAYS_EAGER), against a real remote over HTTP."""
    database = register(remote)
    make_staff("syncer")
    b.login(chromium, live_server.url, "syncer", PASSWORD)
    chromium.get(live_server.url + change_url(database))

    b.by_css(chromium, "#sync-now")[0].click()

    b.wait_for(lambda: b.messages(chromium), what="the message")
    run = SyncRun.objects.get(database=database)
    assert b.messages(chromium)[0].startswith(f"Queued a sync of {database}: run #{run.pk}")
    runs_url = chromium.current_url
    assert runs_url.endswith(f"?database__id__exact={database.pk}")

    def succeeded():
        chromium.get(runs_url)
        rows = [row.text for row in b.by_css(chromium, "#result_list tbody tr")]
        return len(rows) == 1 and "succeeded" in rows[0] and rows[0].startswith(str(run.pk))

    b.wait_for(succeeded, what="the run to show succeeded")
    chromium.get(live_server.url + reverse("admin:hcore_station_changelist"))
    listed = b.by_css(chromium, "#result_list").pop().text
    for name in remote.station_names:
        assert name in listed


def test_in_a_browser_a_user_without_the_permission_cannot_sync(live_server, chromium, remote):
    database = register(remote)
    make_staff("viewer", sync=False)
    b.login(chromium, live_server.url, "viewer", PASSWORD)
    chromium.get(live_server.url + change_url(database))
    assert b.by_css(chromium, "#content-main")  # the page opened
    assert not b.by_css(chromium, "#sync-now")
    # A hand-made form, posted with the page's CSRF token, is refused.
    chromium.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post";
        form.action = arguments[0];
        const token = document.createElement("input");
        token.name = "csrfmiddlewaretoken";
        token.value = document.cookie.match(/csrftoken=([^;]+)/)[1];
        form.appendChild(token);
        document.body.appendChild(form);
        form.submit();
        """,
        sync_now_url(database),
    )
    b.wait_for(lambda: "403" in chromium.title or "Forbidden" in chromium.page_source)
    assert not SyncRun.objects.exists()
