"""The journal of each run and ``manage.py dbsync_revert``: a run that added, updated
and deleted objects, links, records and files is undone exactly (every hcore table,
the remote's row, the records' sync state and the stored files, compared by MD5);
a revert is refused twice, before a later run that touched the same rows, and for a
run without a journal; the next sync brings the remote's changes back; the admin's
action does the same."""

import hashlib
import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse

from dbsync.engine import journal
from dbsync.models import SchedulePause, SyncRun
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.reliability.conftest import snapshot
from tests.test_sync import last_run, register

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DBSYNC_JOURNAL_DIR = tmp_path / "journal"
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    return settings.MEDIA_ROOT


@pytest.fixture
def live(make_instance):
    instance = make_instance(hostname="journal.example.org")
    instance.generate(stations=10, seed=5, records_per_series=150, files_per_station=1)
    return instance.start()


def sync(database, *args):
    """A run with the default backup: the journal."""
    out = io.StringIO()
    call_command(
        "hcore_remotesyncdb", "-r", database.name, *args, stdout=out, stderr=io.StringIO()
    )
    return last_run(database)


def revert(run, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("dbsync_revert", str(run.pk), *args, stdout=out, stderr=err)
    return out.getvalue()


def state(database, media):
    """What a revert must restore: every hcore table, the remote's whole row (its
    cursors), by MD5 of the ordered rows; the stored files, by MD5 of their bytes. Not
    the remote's tallies (engine.tally): counts kept to spare the next run a count,
    which the revert's own writes make stale, so that the next run counts again."""
    tables = snapshot(exclude=("dbsync_syncrun", "dbsync_schedulepause", "dbsync_database"))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT md5((to_jsonb(t) - 'tallies')::text) FROM dbsync_database t WHERE id = %s",
            [database.pk],
        )
        tables["dbsync_database"] = cursor.fetchone()
    files = {
        str(path.relative_to(media)): hashlib.md5(path.read_bytes()).hexdigest()
        for path in sorted(media.rglob("*"))
        if path.is_file()
    }
    return tables, files


def change_everything(instance):
    """At the remote: objects added, updated, deleted; links; records appended,
    rewritten in the past and cleared; files rewritten, replaced, deleted, added."""
    files = [pk for (pk,) in instance.sql("SELECT id FROM hcore_gentityfile ORDER BY id")]
    (name,) = instance.sql("SELECT content FROM hcore_gentityfile WHERE id = %s", [files[0]])[0]
    (instance.var_dir / "media" / name).write_bytes(b"rewritten in place\n")
    instance.shell(
        "from django.core.files.base import ContentFile\n"
        "from hcore.models import *\n"
        f"f = GentityFile.objects.get(pk={files[1]})\n"
        "f.content.save('another.txt', ContentFile(b'another file'))\n"
        f"GentityFile.objects.filter(pk={files[2]}).delete()\n"
        "g = GentityFile.objects.first(); g.pk = None; g.content.save('photo.jpg', "
        "ContentFile(b'new photo'))\n"
        "s = Station.objects.order_by('pk')[0]\n"
        "s.name = 'Renamed'; s.altitude = 1234.5; s.save()\n"
        "Station.objects.order_by('pk')[1].delete()\n"
        "u = UnitOfMeasurement.objects.order_by('pk')[0]; u.variables.clear()\n"
        "v = Variable.objects.create(descr='New variable')\n"
        "u.variables.add(v)\n"
        "p = Person.objects.create(last_name='Newcomer')\n"
        "Overseer.objects.create(station=Station.objects.order_by('pk')[2], person=p,"
        " is_current=True)\n"
        "Station.objects.create(name='Brand new', owner=p, type=StationType.objects.first(),"
        " abscissa=1.0, ordinate=2.0)\n"
    )
    series = [pk for (pk,) in instance.sql("SELECT id FROM hcore_timeseries ORDER BY id")]
    instance.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        "SELECT %s, timestamptz '2031-01-01' + n * interval '10 minutes', n, '' "
        "FROM generate_series(0, 99) n",
        [series[0]],
    )
    instance.sql(
        "UPDATE hcore_record SET value = -1, flags = 'REWRITTEN' WHERE timeseries_id = %s "
        'AND "timestamp" = (SELECT min("timestamp") FROM hcore_record WHERE timeseries_id = %s)',
        [series[1], series[1]],
    )
    instance.sql("DELETE FROM hcore_record WHERE timeseries_id = %s", [series[2]])


def remote_records(instance):
    return instance.sql("SELECT count(*), sum(value::numeric) FROM hcore_record")[0]


def local_records(database):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), sum(r.value::numeric) FROM hcore_record r JOIN hcore_timeseries t "
            "ON t.id = r.timeseries_id WHERE t.original_db_id = %s",
            [database.pk],
        )
        return tuple(cursor.fetchone())


def test_revert_brings_back_exactly_the_state_before_the_run(live, media):
    database = register(live)
    first = sync(database)
    assert first.status == SyncRun.SUCCEEDED and first.journal == SyncRun.JOURNAL_KEPT
    before = state(database, media)
    change_everything(live)

    run = sync(database, "--max-records-delete=all")  # a series cleared at the remote

    assert run.status == SyncRun.SUCCEEDED, run.message
    changed = state(database, media)
    assert changed[0] != before[0] and changed[1] != before[1]
    differ = {t for t in before[0] if before[0][t] != changed[0][t]}
    # the run changed objects, links, records, their states and summaries, the cursor
    assert {
        "hcore_station",
        "hcore_gentity",
        "hcore_overseer",
        "hcore_unitofmeasurement_variables",
        "hcore_record",
        "hcore_recordssyncstate",
        "hcore_recordssummary",
        "hcore_gentityfile",
        "dbsync_database",
    } <= differ
    size = journal.size(run.pk)
    assert size["rows"] > 0 and "<files>" in size["tables"]

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        (before_revert,) = cursor.fetchone()

    out = revert(run)

    assert f"Reverted run #{run.pk}" in out and "paused" in out
    assert state(database, media) == before
    # the rows it put back (the station renamed, the one deleted) are marked as written
    # by the revert (change capture): an aggregate syncing from this one sees the revert
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM hcore_gentity WHERE original_db_id = %s AND dbsync_xid >= %s",
            [database.pk, before_revert],
        )
        (remarked,) = cursor.fetchone()
    assert remarked >= 2
    run.refresh_from_db()
    assert run.reverted_at is not None and run.reverted_by == "command"
    assert SchedulePause.objects.filter(database=database).exists()
    assert journal.size(run.pk)["rows"] == 0  # a reverted run's journal is gone

    # a second revert of the same run is refused, and changes nothing
    with pytest.raises(CommandError, match=f"Run #{run.pk} was already reverted by command"):
        revert(run)
    assert state(database, media) == before

    # the next sync brings the remote's changes back
    call_command("dbsync_revert", "--resume", database.name, stdout=io.StringIO())
    assert not SchedulePause.objects.filter(database=database).exists()
    again = sync(database, "--max-records-delete=all")
    assert again.status == SyncRun.SUCCEEDED, again.message
    assert_same_graph(remote_graph(live), local_graph(database))
    assert local_records(database) == remote_records(live)
    assert state(database, media)[1].keys() != before[1].keys()  # the new files are back


def test_an_older_run_is_reverted_only_after_the_later_ones(live, media):
    database = register(live)
    sync(database)
    before = state(database, media)
    live.shell(
        "from hcore.models import *\nStation.objects.filter(name__isnull=False).update(name='One')"
    )
    one = sync(database)
    live.shell("from hcore.models import *\nStation.objects.update(name='Two')")
    two = sync(database)

    with pytest.raises(
        CommandError, match=rf"later run\(s\) changed some of the same rows: #{two.pk}"
    ):
        revert(one)
    one.refresh_from_db()
    assert one.reverted_at is None

    revert(two)
    revert(one)
    assert state(database, media) == before


def test_a_run_without_a_journal_or_past_the_retention_is_refused(live, media, settings):
    database = register(live)
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", stdout=io.StringIO())
    unjournaled = last_run(database)
    assert unjournaled.journal == SyncRun.JOURNAL_NONE
    with pytest.raises(CommandError, match="it has no journal: it was run with -N"):
        revert(unjournaled)

    settings.DBSYNC_JOURNAL_KEEP = 1
    first = sync(database, "--full")
    assert journal.size(first.pk)["rows"] > 0
    second = sync(database)
    first.refresh_from_db()
    assert first.journal == SyncRun.JOURNAL_PRUNED and journal.size(first.pk)["rows"] == 0
    assert second.journal == SyncRun.JOURNAL_KEPT
    before = state(database, media)
    with pytest.raises(CommandError, match=f"Run #{first.pk} cannot be reverted: its journal was"):
        revert(first)
    assert state(database, media) == before


def test_the_journal_keeps_the_installs_bulk_key_checks():
    """The journal's triggers are ENABLE ALWAYS: they fire under replica mode, and the
    install's bulk key checks (keychecks) do not count them as a table's own triggers
    (which would send the table back to a check per row)."""
    from dbsync.engine.journal.schema import journaled_tables
    from dbsync.engine.keychecks import own_triggers

    with connection.cursor() as cursor:
        for table in journaled_tables():
            cursor.execute(
                "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass "
                "AND tgname LIKE 'dbsync_journal_%%' ORDER BY 1",
                [table],
            )
            assert cursor.fetchall() == [
                ("dbsync_journal_delete", "A"),
                ("dbsync_journal_insert", "A"),
                ("dbsync_journal_update", "A"),
            ], table
            assert not [t for t in own_triggers(table) if t.startswith("dbsync_journal")]
    assert "hcore_userprofile" not in journaled_tables()  # personal data: never journaled


def test_the_admin_action_reverts_a_run(live, media, client):
    database = register(live)
    sync(database)
    before = state(database, media)
    change_everything(live)
    run = sync(database, "--max-records-delete=all")
    admin = User.objects.create_superuser("boss", "boss@example.org", "pw")
    client.force_login(admin)
    page = client.get(reverse("admin:dbsync_syncrun_change", args=[run.pk])).content.decode()
    assert f"{journal.size(run.pk)['rows']} rows, " in page  # the journal's size, shown

    response = client.post(
        reverse("admin:dbsync_syncrun_changelist"),
        {"action": "revert_runs", "_selected_action": [run.pk]},
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any(f"Reverted run #{run.pk}" in m for m in shown), shown
    assert state(database, media) == before
    run.refresh_from_db()
    assert run.reverted_by == "boss"
    response = client.post(
        reverse("admin:dbsync_syncrun_changelist"),
        {"action": "revert_runs", "_selected_action": [run.pk]},
        follow=True,
    )
    assert any("already reverted" in str(m) for m in response.context["messages"])
    page = client.get(reverse("admin:dbsync_database_change", args=[database.pk]))
    assert b"Resume the schedule" in page.content
    client.post(
        reverse("admin:dbsync_database_changelist"),
        {"action": "resume_schedule", "_selected_action": [database.pk]},
    )
    assert not SchedulePause.objects.filter(database=database).exists()


def records_of(series):
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT "timestamp", value, flags FROM hcore_record WHERE timeseries_id = %s '
            'ORDER BY "timestamp"',
            [series],
        )
        return cursor.fetchall()


def test_a_merge_among_existing_records_reverts_to_them_alone():
    """The loader's merge (INSERT … ON CONFLICT DO UPDATE) inserts records in among
    others already there: its revert deletes what it inserted only, puts back what
    it updated, and an append's records are still noted as one range."""
    from django.db import transaction

    from hcore.models import Timeseries
    from tests.api_helpers import create_sample_data

    create_sample_data()
    merged, appended = Timeseries.objects.order_by("pk").values_list("pk", flat=True)[:2]
    insert = (
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        "SELECT %s, timestamptz '2030-01-01' + m * interval '1 minute', m, 'OLD' "
        "FROM unnest(%s::int[]) m"
    )
    with connection.cursor() as cursor:
        cursor.execute(insert, [merged, [0, 20, 25, 40]])
    before = records_of(merged)
    run = 424242
    with transaction.atomic(), journal.recording(run), connection.cursor() as cursor:
        cursor.execute(
            insert + ' ON CONFLICT (timeseries_id, "timestamp") DO UPDATE SET '
            "value = -EXCLUDED.value, flags = 'NEW'",
            [merged, [10, 20, 30]],
        )
        cursor.execute(insert, [appended, [0, 10, 20]])
    assert records_of(merged) != before
    notes = journal.size(run)["tables"]["hcore_record"]
    with transaction.atomic():
        journal.revert(run)
    assert records_of(merged) == before
    assert records_of(appended) == []
    assert notes == {"U": 1, "I": 2, "R": 1}  # the append: still one range


def test_a_revert_puts_back_the_remotes_cursors_but_keeps_later_admin_edits(live, media):
    """Of the remote's row, a revert restores what the run wrote (its cursors), not an
    operator's edits made since (here: its description and user name)."""
    from dbsync.models import Database

    database = register(live)
    sync(database)
    bookkeeping = (
        "sync_cursor",
        "records_cursor",
        "files_cursor",
        "last_sync",
        "is_active",
        "removed_at",
    )
    before = Database.objects.values_list(*bookkeeping).get(pk=database.pk)
    live.shell("from hcore.models import *\nStation.objects.update(name='Changed')")
    run = sync(database)
    assert Database.objects.values_list(*bookkeeping).get(pk=database.pk) != before
    assert before[2] is not None  # the files cursor moved too (a capture remote)
    Database.objects.filter(pk=database.pk).update(
        descr="Edited after the run", username="rotated"
    )
    revert(run)
    assert Database.objects.values_list(*bookkeeping).get(pk=database.pk) == before
    edited = Database.objects.values_list("descr", "username").get(pk=database.pk)
    assert edited == ("Edited after the run", "rotated")


def test_retention_skips_a_journal_a_revert_holds(live, media, settings):
    """A revert holds its run's row (SELECT … FOR UPDATE) while it reads the journal:
    the retention leaves that journal alone, and prunes it once the row is free.
    The revert's hold is reproduced by a second connection taking the same lock: a
    real revert cannot be paused half-way."""
    import threading

    from django.db import transaction

    from dbsync.runs.reverts import prune_journals

    database = register(live)
    first = sync(database)
    sync(database)
    assert journal.has_journal(first.pk)
    settings.DBSYNC_JOURNAL_KEEP = 1
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                SyncRun.objects.select_for_update().get(pk=first.pk)
                locked.set()
                release.wait(60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(60)
        assert prune_journals(database) == []
        first.refresh_from_db()
        assert first.journal == SyncRun.JOURNAL_KEPT and journal.has_journal(first.pk)
    finally:
        release.set()
        holder.join()
    assert prune_journals(database) == [first.pk]
    first.refresh_from_db()
    assert first.journal == SyncRun.JOURNAL_PRUNED and not journal.has_journal(first.pk)
