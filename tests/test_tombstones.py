"""Tombstone retention (hcore.tombstones): the tombstones older than the retention are
pruned in batches and the horizon moves with them; a replica whose cursor is then older
runs in full and ends equal (a real remote over HTTP); the daily periodic task exists
after migrate with no step of its own; the command's dry run changes nothing."""

import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django_celery_beat.models import PeriodicTask

from hcore import tasks, tombstones
from hcore.capture import CLOCK_TABLE, CURSOR_SQL, STATE_TABLE, TOMBSTONE_TABLE, prune_tombstones
from hcore.models import EventType, GentityEvent
from hcore.schedule import PRUNE_TASK, PRUNE_TASK_NAME
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.reliability import servers
from tests.test_capture import first_pk, sync
from tests.test_sync import last_run, register

pytestmark = pytest.mark.django_db(transaction=True)


def fetch(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def horizon():
    return fetch(f"SELECT horizon FROM {STATE_TABLE} WHERE id = 1")[0][0]


def tombstoned(pks):
    rows = fetch(
        f"SELECT pk FROM {TOMBSTONE_TABLE} WHERE table_name = 'hcore_eventtype' AND pk = ANY(%s)",
        [list(pks)],
    )
    return sorted(row[0] for row in rows)


def deleted_eventtypes(n, name):
    """n event types created and deleted, each in its own transaction: their pks."""
    pks = [EventType.objects.create(descr=f"{name} {i}").pk for i in range(n)]
    for pk in pks:
        EventType.objects.filter(pk=pk).delete()
    return pks


def mark_the_clock(days_ago):
    """A clock mark as a pruning days_ago would have left: every transaction so far ended."""
    fetch(
        f"INSERT INTO {CLOCK_TABLE} (xid, at) "
        f"SELECT {CURSOR_SQL}, now() - make_interval(days => %s) RETURNING xid",
        [days_ago],
    )


def prune_command(*args):
    out = io.StringIO()
    call_command("hcore_prunetombstones", *args, stdout=out)
    return out.getvalue()


def test_only_the_tombstones_older_than_the_retention_go_and_the_horizon_moves():
    old = deleted_eventtypes(3, "old")
    mark_the_clock(days_ago=40)
    recent = deleted_eventtypes(2, "recent")
    before = horizon()
    assert tombstoned(old + recent) == sorted(old + recent)

    # Counted over every table: a test database's flush leaves tombstones too.
    out = prune_command("--days", "30", "--dry-run")
    would = int(re.search(r"would drop (\d+);", out)[1])
    assert would >= 3, out
    assert tombstoned(old + recent) == sorted(old + recent)
    assert horizon() == before

    out = prune_command("--days", "30")
    assert f"dropped {would};" in out, out
    assert tombstoned(old + recent) == sorted(recent)
    assert horizon() > before
    # Nothing left older than 30 days: a second pruning does nothing.
    assert "No tombstone older than 30 day(s)" in prune_command("--days", "30")
    assert tombstoned(recent) == sorted(recent)


def test_no_tombstone_goes_before_the_retention_has_passed_since_the_first_mark():
    """A fresh instance (its only mark the migration's): nothing is old enough yet."""
    pks = deleted_eventtypes(2, "fresh")
    before = horizon()
    assert "No tombstone older than 30 day(s)" in prune_command()
    assert tombstoned(pks) == sorted(pks)
    assert horizon() == before
    assert "dropped" in prune_command("--days", "0")
    assert tombstoned(pks) == []


def test_tombstones_are_deleted_in_batches_each_one_whole():
    pks = deleted_eventtypes(7, "batched")
    assert prune_tombstones(connection, 2**62, batch=2) >= 7
    assert tombstoned(pks) == []
    assert horizon() == 2**62


def test_a_negative_number_of_days_is_refused_and_nothing_changes():
    pks = deleted_eventtypes(1, "kept")
    with pytest.raises(CommandError, match="negative"):
        prune_command("--days", "-1")
    assert tombstoned(pks) == pks


def test_the_daily_periodic_task_exists_after_migrate_and_prunes(settings):
    task = PeriodicTask.objects.get(name=PRUNE_TASK_NAME)
    assert task.task == PRUNE_TASK and task.enabled
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("17", "3", "*")
    assert json.loads(task.args) == [] and json.loads(task.kwargs) == {}

    pks = deleted_eventtypes(2, "by the task")
    settings.DBSYNC_TOMBSTONE_RETENTION_DAYS = 0
    assert tasks.prune_tombstones.apply().get() == tombstones.RETENTION_OFF
    assert tombstoned(pks) == pks
    settings.DBSYNC_TOMBSTONE_RETENTION_DAYS = 30
    mark_the_clock(days_ago=31)
    assert "dropped" in tasks.prune_tombstones.apply().get()
    assert tombstoned(pks) == []

    # An operator's change is kept by the next migrate.
    task.enabled = False
    task.save()
    call_command("migrate", "-v0")
    assert PeriodicTask.objects.get(name=PRUNE_TASK_NAME).enabled is False


def test_a_replica_behind_the_pruned_horizon_runs_in_full_and_ends_equal(make_instance):
    live = make_instance(hostname="prune.example.org")
    live.generate(stations=8, seed=7)
    live.start()
    database = register(live)
    sync(database)
    database.refresh_from_db()
    cursor = database.capture_cursor
    assert cursor is not None

    event = first_pk(live, "hcore_gentityevent")
    live.sql("DELETE FROM hcore_gentityevent WHERE id = %s", [event])
    live.sql("UPDATE hcore_gentity SET name = 'Renamed before the pruning'")
    out = live.manage("hcore_prunetombstones", "--days", "0").stdout
    assert "dropped 1" in out, out
    assert live.sql(f"SELECT count(*) FROM {TOMBSTONE_TABLE}")[0][0] == 0
    assert live.sql(f"SELECT horizon FROM {STATE_TABLE}")[0][0] > cursor
    assert GentityEvent.objects.filter(original_db=database, original_id=event).exists()

    out = sync(database)
    assert "pruned its tombstones past our cursor" in out, out
    run = last_run(database)
    assert run.full is True
    assert not GentityEvent.objects.filter(original_db=database, original_id=event).exists()
    assert_same_graph(remote_graph(live), local_graph(database))
    database.refresh_from_db()
    assert database.capture_cursor > cursor


def test_tombstones_pruned_while_a_run_reads_its_deletions_send_it_in_full(make_instance):
    """A pruning at the remote lands between the manifest a run planned on (horizon
    behind the replica's cursor: an incremental run) and its listing of deletions,
    which then lacks the one deletion made since the last run. A manifest read after
    the listing shows the horizon past the cursor: nothing of the listing is used, the
    run fetches again, in full, deletes the event and ends equal to the remote."""
    live = make_instance(hostname="midprune.example.org")
    live.generate(stations=8, seed=8)
    live.start()
    front = servers.FaultyFront(live.url)
    try:
        database = register(live, port=front.port)
        sync(database)
        event = first_pk(live, "hcore_gentityevent")
        live.sql("DELETE FROM hcore_gentityevent WHERE id = %s", [event])

        def prune():
            out = live.manage("hcore_prunetombstones", "--days", "0").stdout
            assert "dropped 1" in out, out

        front.on(lambda path: "deleted_since=" in path, servers.after(prune))
        out = sync(database)
        assert "the remote pruned its tombstones while this run read its deletions" in out
        assert "fetching again" in out
        assert any("deleted_since=" in path for path, _ in front.requests)
        run = last_run(database)
        assert run.full is True
        assert not GentityEvent.objects.filter(original_db=database, original_id=event).exists()
        assert_same_graph(remote_graph(live), local_graph(database))
    finally:
        front.close()
