"""Offboarding a remote (manage.py dbsync_removeremote, the admin's Remove actions),
after real syncs from a real remote over HTTP, on PostgreSQL.

One remote instance serves two registered remotes ("athens" and "patras"): each has
its own replicated copy, as two agencies would, so what belongs to which is told by
``original_db`` alone.
"""

import hashlib
import io
import os
import pty
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from dbsync.engine import journal
from dbsync.engine.errors import RemoteRemoved
from dbsync.engine.install.impact import is_replicated
from dbsync.engine.offboard import OffboardingChanged
from dbsync.models import Database, SyncRun
from dbsync.runs import offboarding
from dbsync.runs.locking import remote_lock
from dbsync.runs.schedules import periodic_task_of
from hcore.models import (
    GentityFile,
    Person,
    Record,
    RecordsSyncState,
    Station,
    StationType,
    Timeseries,
    UnitOfMeasurement,
    Variable,
)
from tests.instance import ROOT, Instance, instance_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="offboard.example.org")
    instance.generate(stations=5, seed=11, files_per_station=0.6, records_per_series=20)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def register(instance, name, **fields):
    return Database.objects.create(
        name=name,
        hostname=instance.hostname,
        ip_address="127.0.0.1",
        port=instance.port,
        **fields,
    )


def sync(database, *args):
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=io.StringIO())


@pytest.fixture
def two(remote):
    """Two remotes synced (objects, records, files), and local objects beside them."""
    athens = register(remote, "athens", schedule_kind="interval", interval_minutes=60)
    patras = register(remote, "patras")
    sync(athens)
    sync(patras)
    person = Person.objects.create(last_name="Local")
    Station.objects.create(name="Local", owner=person, type=StationType.objects.create(descr="L"))
    assert Record.objects.filter(timeseries__original_db=athens).exists()
    assert GentityFile.objects.filter(original_db=athens).exclude(content="").exists()
    return athens, patras


def removeremote(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("dbsync_removeremote", *args, stdout=out, stderr=err)
    return out.getvalue()


# --- what the tables hold -------------------------------------------------------------


def hcore_models():
    return list(apps.get_app_config("hcore").get_models(include_auto_created=True))


def of_remote(model, database):
    """The rows of ``model``'s table that belong to ``database``'s replica."""
    if is_replicated(model):
        return Q(original_db=database)
    if model._meta.auto_created:  # a many-to-many table: a link of one of its objects
        q = Q(pk__in=[])
        for f in model._meta.local_concrete_fields:
            if f.is_relation and is_replicated(f.related_model):
                q |= Q(**{f"{f.name}__original_db": database})
        return q
    if any(f.name == "timeseries" for f in model._meta.local_concrete_fields):
        return Q(timeseries__original_db=database)
    return Q(pk__in=[])  # UserProfile: nobody's replica


def table_rows(model, where=None, omit=()):
    columns = [f.attname for f in model._meta.local_concrete_fields if f.attname not in omit]
    rows = model._base_manager.all()
    if where is not None:
        rows = rows.filter(where)
    return sorted(repr(row) for row in rows.values_list(*columns))


def md5(rows):
    return hashlib.md5("\n".join(rows).encode()).hexdigest()


def tables_md5(where=lambda model: None, omit=()):
    """Table label -> MD5 of its rows (those ``where`` keeps), ordered."""
    return {
        model._meta.db_table: md5(table_rows(model, where(model), omit))
        for model in hcore_models()
    }


def not_of(database):
    return lambda model: ~of_remote(model, database)


def files_of(database):
    """Name -> bytes of the files its objects point at."""
    storage = GentityFile._meta.get_field("content").storage
    found = {}
    for pk, name in GentityFile.objects.filter(original_db=database).values_list("pk", "content"):
        if name:
            with storage.open(name, "rb") as fh:
                found[pk] = fh.read()
    return found


# --- purge ----------------------------------------------------------------------------


def test_purge_removes_every_row_of_the_remote_and_nothing_else(two, media):
    athens, patras = two
    others_before = tables_md5(not_of(athens))
    assert periodic_task_of(athens) is not None
    out = removeremote("athens", "--purge", "--yes")
    assert "Purging the remote athens" in out and "hcore.station: " in out
    assert "Offboarded athens, purged" in out
    for model in hcore_models():
        assert not model._base_manager.filter(of_remote(model, athens)).exists(), model
    # patras' replica and the local objects: row for row as they were
    assert tables_md5() == others_before
    athens.refresh_from_db()
    assert athens.removal == Database.PURGED and athens.removed_at is not None
    assert not athens.is_active and periodic_task_of(athens) is None
    run = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    assert run.status == SyncRun.SUCCEEDED and run.options == {
        "offboard": "purge",
        "via": "command",
    }
    assert run.model_counts["hcore.station"]["deleted"] > 0
    assert run.model_counts["hcore.record"]["deleted"] > 0


def test_purge_moves_its_files_into_the_runs_journal(two, media, settings):
    athens, _patras = two
    folder = media / "gentityfile" / str(athens.pk)
    files = sorted(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert files
    removeremote("athens", "--purge", "--yes")
    run = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    assert not any(p.is_file() for p in folder.rglob("*"))
    kept = Path(settings.DBSYNC_JOURNAL_DIR) / str(run.pk)
    assert sorted(p.read_bytes() for p in kept.iterdir()) == files
    # Deleted for good (possible now that no object refers to it): its runs' journals
    # and its folder go with it.
    Database.objects.get(pk=athens.pk).delete()
    assert not kept.exists() and not folder.exists()
    assert not journal.has_journal(run.pk)


def test_a_purge_that_would_reach_a_local_object_is_refused(two):
    athens, _patras = two
    their_type = StationType.objects.filter(original_db=athens).first()
    local = Station.objects.create(
        name="Uses their type", owner=Person.objects.create(last_name="L2"), type=their_type
    )
    unit = UnitOfMeasurement.objects.create(descr="local unit", symbol="u")
    unit.variables.add(Variable.objects.filter(original_db=athens).first())
    before = tables_md5()
    with pytest.raises(CommandError) as refused:
        removeremote("athens", "--purge", "--yes")
    message = str(refused.value)
    assert f"hcore.station(pk={local.pk})" in message
    assert f"hcore.unitofmeasurement(pk={unit.pk}) links to it" in message
    assert "--detach" in message and "Nothing was changed" in message
    assert tables_md5() == before
    athens.refresh_from_db()
    assert athens.removed_at is None and athens.is_active
    assert not SyncRun.objects.filter(database=athens, trigger=SyncRun.OFFBOARD).exists()
    # Detaching keeps them all.
    removeremote("athens", "--detach", "--yes")
    local.refresh_from_db()
    assert local.type_id == their_type.pk
    assert unit.variables.count() == 1


# --- detach ---------------------------------------------------------------------------

BOOKKEEPING = ("original_db_id", "original_id", "content")


def test_detach_keeps_every_row_as_a_local_one(two, media):
    athens, patras = two
    mine = {
        model: set(model._base_manager.filter(original_db=athens).values_list("pk", flat=True))
        for model in hcore_models()
        if is_replicated(model)
    }
    files = files_of(athens)
    states = RecordsSyncState.objects.filter(timeseries__original_db=athens).count()
    before = tables_md5(omit=BOOKKEEPING)
    before_states = RecordsSyncState.objects.count()
    out = removeremote("athens", "--detach", "--yes")
    assert "objects become local" in out and "detached" in out
    # Every row stays (records included); only the bookkeeping is cleared.
    after = tables_md5(omit=BOOKKEEPING)
    state_table = RecordsSyncState._meta.db_table
    assert {k: v for k, v in after.items() if k != state_table} == {
        k: v for k, v in before.items() if k != state_table
    }
    # The records' sync state of its series went: no sync of athens will happen again.
    assert RecordsSyncState.objects.count() == before_states - states
    for model, pks in mine.items():
        local = model._base_manager.filter(pk__in=pks)
        assert local.filter(original_db=None, original_id=None).count() == len(pks), model
    # Its files: the same bytes, out of the remote's folder.
    storage = GentityFile._meta.get_field("content").storage
    for pk, content in files.items():
        name = GentityFile.objects.get(pk=pk).content.name
        assert name.startswith(f"gentityfile/local/{pk}/")
        with storage.open(name, "rb") as fh:
            assert fh.read() == content
    # and athens itself is never synced again, saying why
    with pytest.raises(CommandError, match="offboarded .*dbsync_revert"):
        sync(athens)


def test_a_later_sync_of_another_remote_leaves_detached_objects_alone(make_instance):
    changing = make_instance(hostname="changing.example.org")
    changing.generate(stations=5, seed=5, files_per_station=0.5, records_per_series=5)
    changing.start()
    athens, patras = register(changing, "athens"), register(changing, "patras")
    sync(athens)
    sync(patras)
    removeremote("athens", "--detach", "--yes")
    detached = tables_md5(lambda model: ~of_remote(model, patras), omit=("content",))
    changing.shell(
        "from hcore.models import Station, Timeseries\n"
        "s = Station.objects.order_by('pk')[0]; s.name = 'Renamed'; s.save()\n"
        "Station.objects.order_by('pk')[1].delete()\n"
    )
    sync(patras, "--max-delete", "all")
    assert Station.objects.filter(original_db=patras, name="Renamed").exists()
    assert tables_md5(lambda model: ~of_remote(model, patras), omit=("content",)) == detached


# --- reverted ---------------------------------------------------------------------------


def database_row(database):
    """The remote's row in dbsync_database, every column."""
    columns = [f.attname for f in Database._meta.concrete_fields]
    return Database.objects.filter(pk=database.pk).values_list(*columns).get()


def stored_files(media):
    """Path -> MD5 of every file in the storage."""
    return {
        str(p.relative_to(media)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in media.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("mode", ["--purge", "--detach"])
def test_an_offboarding_reverted_brings_everything_back(two, media, mode):
    athens, _patras = two
    tables, row, files = tables_md5(), database_row(athens), stored_files(media)
    removeremote("athens", mode, "--yes")
    assert tables_md5() != tables and stored_files(media) != files
    run = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    out = io.StringIO()
    call_command("dbsync_revert", str(run.pk), stdout=out)
    assert f"Reverted run #{run.pk}" in out.getvalue()
    # Every hcore table (the records' sync state included), the remote's row (its
    # cursors, its schedule's fields) and the stored files: as before.
    assert tables_md5() == tables
    assert database_row(athens) == row
    assert stored_files(media) == files
    # Its schedule stays paused until resumed.
    assert periodic_task_of(athens) is None or not periodic_task_of(athens).enabled
    call_command("dbsync_revert", "--resume", "athens", stdout=io.StringIO())
    assert periodic_task_of(athens).enabled
    # A second revert is refused; the remote syncs again, and finds nothing to change.
    with pytest.raises(CommandError, match="already reverted"):
        call_command("dbsync_revert", str(run.pk), stdout=io.StringIO())
    sync(athens)
    last = SyncRun.objects.filter(database=athens).order_by("-pk").first()
    assert last.status == SyncRun.SUCCEEDED
    totals = last.totals()
    assert totals["created"] == totals["updated"] == totals["deleted"] == 0


# --- refusals -------------------------------------------------------------------------


def test_unknown_name_is_refused_listing_the_registered(two):
    with pytest.raises(CommandError, match="No registered remote is named 'nowhere'.*athens"):
        removeremote("nowhere", "--purge", "--yes")


def test_without_a_terminal_nor_yes_it_is_refused(two, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("athens\n"))  # a pipe, not a terminal
    before = tables_md5()
    with pytest.raises(CommandError, match="no terminal to confirm on.*--yes"):
        removeremote("athens", "--purge")
    assert tables_md5() == before


def on_a_terminal(settings, media, *args, answer):
    """Run ``manage.py dbsync_removeremote *args`` on a real terminal (a pty), against
    this test's database, typing ``answer`` at its question; (exit status, output)."""
    env = instance_env(
        connection.settings_dict["NAME"],
        Path(settings.DBSYNC_JOURNAL_DIR).parent,
        DJANGO_MEDIA_ROOT=media,
        DBSYNC_JOURNAL_DIR=settings.DBSYNC_JOURNAL_DIR,
    )
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "dbsync_removeremote", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    output = b""

    def read(until=None):
        nonlocal output
        while until is None or until not in output:
            ready, _, _ = select.select([controller], [], [], 120)
            if not ready:
                raise TimeoutError(output.decode())
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command ended
                return
            if not chunk:
                return
            output += chunk

    try:
        read(until=b"to confirm: ")
        os.write(controller, answer.encode() + b"\n")
        read()
        return process.wait(timeout=120), output.decode()
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


def test_on_a_terminal_it_asks_for_the_remotes_name(two, settings, media):
    athens, _patras = two
    before = tables_md5()
    status, output = on_a_terminal(settings, media, "athens", "--purge", answer="yes")
    assert status == 1 and "Not confirmed: nothing was changed." in output
    assert "Type the remote's name (athens) to confirm:" in output
    assert tables_md5() == before
    status, output = on_a_terminal(settings, media, "athens", "--purge", answer="athens")
    assert status == 0 and "Offboarded athens, purged" in output
    assert not Station.objects.filter(original_db=athens).exists()


def test_dry_run_shows_and_changes_nothing(two):
    before = tables_md5()
    out = removeremote("athens", "--purge", "--dry-run")
    assert "hcore.station: " in out and "Dry run: nothing was changed." in out
    out = removeremote("athens", "--detach", "--dry-run")
    assert "objects become local" in out
    assert tables_md5() == before
    assert not SyncRun.objects.filter(trigger=SyncRun.OFFBOARD).exists()


@pytest.fixture
def lock_held():
    """The lock of a remote held by another session, as a running sync holds it."""
    release, threads = threading.Event(), []

    def hold(database):
        ready = threading.Event()

        def holder():
            try:
                with remote_lock(database):
                    ready.set()
                    release.wait(60)
            finally:
                connection.close()

        thread = threading.Thread(target=holder)
        thread.start()
        threads.append(thread)
        assert ready.wait(30)

    yield hold
    release.set()
    for thread in threads:
        thread.join()


def test_it_is_refused_while_a_run_of_the_remote_is_going(two, lock_held):
    athens, _patras = two
    before = tables_md5()
    lock_held(athens)
    with pytest.raises(CommandError, match="already running"):
        removeremote("athens", "--purge", "--yes")
    assert tables_md5() == before
    refused = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    assert refused.status == SyncRun.REFUSED


def test_it_is_refused_while_a_celery_run_is_fetching(two):
    athens, _patras = two
    SyncRun.objects.create(
        database=athens, status=SyncRun.FETCHING, trigger="admin", heartbeat=timezone.now()
    )
    with pytest.raises(CommandError, match="already running"):
        removeremote("athens", "--detach", "--yes")
    assert Station.objects.filter(original_db=athens).exists()


def test_what_changed_since_the_confirmation_is_refused(two):
    athens, _patras = two
    shown = offboarding.survey_remote(athens, offboarding.PURGE).counts()
    Station.objects.filter(original_db=athens).order_by("pk").first().delete()
    before = tables_md5()
    with pytest.raises(OffboardingChanged, match="changed since it was shown"):
        offboarding.offboard_remote(athens, offboarding.PURGE, expected=shown)
    assert tables_md5() == before
    run = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    assert run.status == SyncRun.FAILED and "changed since" in run.message


def test_an_offboarded_remote_is_not_offboarded_again_nor_synced(two):
    athens, _patras = two
    removeremote("athens", "--detach", "--yes")
    with pytest.raises(CommandError, match="was offboarded"):
        removeremote("athens", "--purge", "--yes")
    from dbsync.runs.tasks import enqueue_sync

    with pytest.raises(RemoteRemoved, match="was offboarded"):
        enqueue_sync(Database.objects.get(pk=athens.pk))
    out = io.StringIO()
    call_command("dbsync_status", stdout=out)  # exit status 0: nothing is promised of it
    assert "athens: offboarded (detached" in out.getvalue()


# --- the admin ------------------------------------------------------------------------


def changelist():
    return reverse("admin:dbsync_database_changelist")


def test_admin_confirms_with_the_counts_then_purges(two, admin_client):
    athens, patras = two
    others = tables_md5(not_of(athens))
    stations = Station.objects.filter(original_db=athens).count()
    page = admin_client.post(
        changelist(), {"action": "remove_purge", "_selected_action": [athens.pk]}
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert f"hcore.station: {stations}" in text and "Yes, purge athens" in text
    assert Station.objects.filter(original_db=athens).count() == stations  # not yet
    done = admin_client.post(
        changelist(),
        {
            "action": "remove_purge",
            "_selected_action": [athens.pk],
            "post": "yes",
            "expected": page.context["expected"],
        },
        follow=True,
    )
    assert "Offboarded athens, purged" in done.content.decode()
    assert tables_md5() == others
    run = SyncRun.objects.get(database=athens, trigger=SyncRun.OFFBOARD)
    assert run.started_by == "admin" and run.options["via"] == "admin"


def test_admin_shows_a_refusal_instead_of_a_confirmation(two, admin_client):
    athens, _patras = two
    Station.objects.create(
        name="Uses their type",
        owner=Person.objects.create(last_name="L3"),
        type=StationType.objects.filter(original_db=athens).first(),
    )
    page = admin_client.post(
        changelist(), {"action": "remove_purge", "_selected_action": [athens.pk]}
    )
    text = page.content.decode()
    assert "refused" in text and "Remove (detach)" in text and 'id="offboard-confirm"' not in text


def test_admin_offboarding_needs_the_permission_to_delete_remotes(two, client):
    athens, _patras = two
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_database"),
        Permission.objects.get(codename="change_database"),
    )
    client.force_login(user)
    response = client.post(
        changelist(),
        {
            "action": "remove_detach",
            "_selected_action": [athens.pk],
            "post": "yes",
            "expected": "{}",
        },
    )
    assert response.status_code in (200, 302)
    athens.refresh_from_db()
    assert athens.removed_at is None
    assert Station.objects.filter(original_db=athens).exists()
    assert Timeseries.objects.filter(original_db=athens).exists()


def test_in_a_browser_a_remote_is_detached_after_its_confirmation_page(two, live_server):
    """Headless Chromium against live_server: the action, its confirmation page with the
    counts, the button, the message."""
    from selenium.webdriver.support.ui import Select

    from tests import browser as b

    athens, _patras = two
    stations = Station.objects.filter(original_db=athens).count()
    user = User.objects.create_user("offboarder", password="pw-offboard", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_database", "delete_database"])
    )
    chromium = b.browser_or_skip()
    try:
        b.login(chromium, live_server.url, "offboarder", "pw-offboard")
        chromium.get(live_server.url + changelist())
        b.by_css(chromium, f"input.action-select[value='{athens.pk}']")[0].click()
        Select(b.by_css(chromium, "select[name=action]")[0]).select_by_value("remove_detach")
        b.by_css(chromium, "button[name=index]")[0].click()
        b.wait_for(lambda: b.by_css(chromium, "#offboard-counts"), what="the confirmation")
        counts = b.by_css(chromium, "#offboard-counts")[0].text
        assert f"hcore.station: {stations}" in counts and "objects become local" in counts
        assert Station.objects.filter(original_db=athens).count() == stations  # not yet
        b.by_css(chromium, "#offboard-confirm")[0].click()
        b.wait_for(lambda: b.messages(chromium), what="the message")
        assert b.messages(chromium)[0].startswith("Offboarded athens, detached")
    finally:
        chromium.quit()
    assert not Station.objects.filter(original_db=athens).exists()
    assert Station.objects.filter(original_db=None).count() == stations + 1  # + the local one
