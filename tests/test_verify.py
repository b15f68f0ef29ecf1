"""hcore_remotesyncdb --verify and --repair, against a real remote over HTTP."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from dbsync.models import Database, SyncRun
from hcore.models import (
    Gentity,
    GentityAltCode,
    GentityFile,
    RecordsSyncState,
    Station,
    Timeseries,
)
from tests.instance import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def remote(make_instance):
    instance = make_instance(hostname="verify.example.org")
    instance.generate(stations=20, seed=5, files_per_station=0.3)
    return instance.start()


def register(instance, name="athens", port=None):
    return Database.objects.create(
        name=name,
        hostname=instance.hostname if instance else "nowhere.example.org",
        ip_address="127.0.0.1",
        port=port or instance.port,
    )


def command(database, *args):
    """(exit status, stdout, stderr) of hcore_remotesyncdb."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(
            "hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=out, stderr=err
        )
    except CommandError as exc:
        return exc.returncode, out.getvalue(), err.getvalue() + str(exc)
    return 0, out.getvalue(), err.getvalue()


def tables_md5():
    """An MD5 of every hcore and dbsync table but the run history, rows in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND "
            "(tablename LIKE 'hcore%%' OR tablename = 'dbsync_database') ORDER BY tablename"
        )
        digests = {}
        for (table,) in cursor.fetchall():
            cursor.execute(
                f"SELECT md5(COALESCE(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                f'FROM "{table}" t'
            )
            digests[table] = cursor.fetchone()[0]
        return digests


def test_verify_finds_hand_edits_and_changes_nothing(remote):
    database = register(remote)
    assert command(database)[0] == 0  # the first sync
    status, out, _ = command(database, "--verify")
    assert status == 0, out
    assert "Verified equal" in out
    # By hand: a station's coordinate edited, an alternative code deleted.
    station = Station.objects.filter(original_db=database).order_by("pk").first()
    code = GentityAltCode.objects.filter(original_db=database).order_by("pk").first()
    assert code is not None
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE hcore_gpoint SET abscissa = abscissa + 0.001 WHERE gentity_ptr_id = %s",
            [station.pk],
        )
        cursor.execute("DELETE FROM hcore_gentityaltcode WHERE id = %s", [code.pk])
    before = tables_md5()
    status, out, err = command(database, "--verify")
    assert status == 1
    assert "hcore.gpoint: 1 objects differ (1 changed here)" in err
    assert "hcore.gentityaltcode: 1 objects differ (1 missing here)" in err
    assert "hcore.station" not in err  # its own fields are intact
    assert tables_md5() == before  # read-only
    run = SyncRun.objects.filter(database=database).order_by("-pk").first()
    assert run.kind == SyncRun.VERIFY and run.status == SyncRun.SUCCEEDED
    assert run.verification["state"] == "differs"
    gpoint = next(v for v in run.verification["verdicts"] if v["model"] == "hcore.gpoint")
    assert gpoint["changed"] == [station.original_id]


def test_repair_restores_equality(remote):
    database = register(remote)
    command(database)
    station = Station.objects.filter(original_db=database).order_by("pk").first()
    code = GentityAltCode.objects.filter(original_db=database).order_by("pk").first()
    name = Gentity.objects.get(pk=station.pk).name
    with connection.cursor() as cursor:
        cursor.execute("UPDATE hcore_gentity SET name = 'vandalised' WHERE id = %s", [station.pk])
        cursor.execute("DELETE FROM hcore_gentityaltcode WHERE id = %s", [code.pk])
    database.refresh_from_db()
    synced = (database.last_sync, database.sync_cursor)
    status, out, err = command(database, "--repair")
    assert status == 0, out + err
    assert Gentity.objects.get(pk=station.pk).name == name
    database.refresh_from_db()
    assert (database.last_sync, database.sync_cursor) == synced  # a repair is no sync
    assert GentityAltCode.objects.filter(
        original_db=database, original_id=code.original_id
    ).exists()
    assert command(database, "--verify")[0] == 0


def test_repair_deletes_what_the_remote_no_longer_has_under_the_guard(remote):
    database = register(remote)
    command(database)
    # The remote deletes an object and prunes its tombstones (so nothing says the next
    # sync brings the deletion), and the replica is not synced since: the repair
    # deletes it.
    pk = int(remote.sql("SELECT min(id) FROM hcore_gentityaltcode")[0][0])
    remote.sql("DELETE FROM hcore_gentityaltcode WHERE id = %s", [pk])
    status, out, _err = command(database, "--verify")
    assert status == 0 and "1 changed at the remote since the last sync" in out, out
    remote.manage("hcore_prunetombstones", "--days", "0")
    status, _out, err = command(database, "--verify")
    assert status == 1 and "1 no longer at the remote" in err
    status, out, err = command(database, "--repair", "--max-delete=0")
    assert status == 1 and "refused" in err  # the guard holds
    assert GentityAltCode.objects.filter(original_db=database, original_id=pk).exists()
    status, out, err = command(database, "--repair")
    assert status == 0, out + err
    assert not GentityAltCode.objects.filter(original_db=database, original_id=pk).exists()


def test_a_change_at_the_remote_after_the_sync_is_no_divergence(remote):
    database = register(remote)
    command(database)
    # Changed through save() (last_modified moves): the next sync's work.
    remote.sql(
        "UPDATE hcore_gentity SET name = 'renamed', last_modified = now() + "
        "interval '1 second' WHERE id = (SELECT min(id) FROM hcore_gentity)"
    )
    status, out, _ = command(database, "--verify")
    assert status == 0, out
    assert "1 changed at the remote since the last sync" in out


def test_update_and_deletions_at_the_remote_since_the_capture_cursor_are_pending(remote):
    """With change capture, the remote flags by its markers what the next incremental
    run brings: a QuerySet.update() (last_modified untouched) and a deletion (its
    tombstone) are pending, not divergences; a hand edit here still is one."""
    database = register(remote)
    command(database)
    database.refresh_from_db()
    assert database.capture_cursor is not None
    station = remote.sql("SELECT min(gpoint_ptr_id) FROM hcore_station")[0][0]
    code = remote.sql("SELECT min(id) FROM hcore_gentityaltcode")[0][0]
    remote.shell(
        "from hcore.models import Station\n"
        f"Station.objects.filter(pk={station}).update(name='Renamed by update()')\n"
    )
    remote.sql("DELETE FROM hcore_gentityaltcode WHERE id = %s", [code])
    before = tables_md5()
    status, out, err = command(database, "--verify")
    assert status == 0, out + err
    assert "Verified equal" in out
    assert "hcore.gentity: equal" in out and "1 changed at the remote since the last sync" in out
    assert "hcore.gentityaltcode: equal" in out
    assert out.count("1 changed at the remote since the last sync") == 2, out
    assert tables_md5() == before

    # A hand edit here is a divergence all the same.
    mine = Station.objects.filter(original_db=database).exclude(original_id=station).first()
    Gentity.objects.filter(pk=mine.pk).update(name="Edited by hand")
    status, out, err = command(database, "--verify")
    assert status == 1
    assert "hcore.gentity: 1 objects differ (1 changed here)" in err
    run = SyncRun.objects.filter(database=database).order_by("-pk").first()
    gentity = next(v for v in run.verification["verdicts"] if v["model"] == "hcore.gentity")
    assert gentity["changed"] == [mine.original_id] and gentity["pending"] == 1

    # Without a capture cursor (a replica that never ran on it), on the clock: the
    # update() left last_modified alone, and shows as a divergence.
    Database.objects.filter(pk=database.pk).update(capture_cursor=None)
    status, _out, err = command(database, "--verify")
    assert status == 1
    assert "hcore.gentity: 2 objects differ (2 changed here)" in err
    assert "hcore.gentityaltcode: 1 objects differ (1 no longer at the remote)" in err


def test_an_unreachable_remote_gives_2(remote):
    database = register(remote)
    command(database)
    Database.objects.filter(pk=database.pk).update(port=free_port())
    status, _out, err = command(database, "--verify")
    assert status == 2
    assert "Could not verify" in err


def test_a_never_synced_remote_gives_2(remote):
    database = register(remote)
    status, _out, err = command(database, "--verify")
    assert status == 2 and "never synced" in err


def test_the_result_is_shown_by_status_metrics_and_mailed(remote, mailoutbox, settings):
    settings.ADMINS = [("Ops", "ops@example.org")]
    database = register(remote)
    command(database)
    command(database, "--verify")
    out = io.StringIO()
    call_command("dbsync_status", stdout=out)
    assert "athens: last success" in out.getvalue()
    assert "; verified equal at " in out.getvalue()
    assert not mailoutbox
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE hcore_gentity SET name = 'x' WHERE original_db_id = %s", [database.pk]
        )
    assert command(database, "--verify")[0] == 1
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_status:
        call_command("dbsync_status", stdout=out)
    assert exit_status.value.code == 1
    assert "differs (at " in out.getvalue() and "hcore.gentity" in out.getvalue()
    (mail,) = mailoutbox
    assert "differs from its remote" in mail.subject and "hcore.gentity" in mail.body
    from dbsync.runs.metrics import SyncCollector

    families = {f.name: f for f in SyncCollector(broker=False).collect()}
    samples = {s.labels["state"]: s.value for s in families["dbsync_verification_state"].samples}
    assert samples == {"equal": 0, "differs": 1, "never": 0}
    # The freshness is the syncs': a verification is no sync.
    assert "last success" in out.getvalue()


def test_a_remote_has_a_weekly_verification_schedule(remote):
    from django_celery_beat.models import PeriodicTask

    database = register(remote)
    task = PeriodicTask.objects.get(name=f"dbsync: verify remote #{database.pk}")
    assert task.task == "dbsync.tasks.verify_remote" and task.enabled
    assert (task.interval.every, task.interval.period) == (7, "days")
    database.verify_every_days = 0
    database.save()
    task.refresh_from_db()
    assert not task.enabled


def test_a_remote_registered_before_verifications_gets_its_task_at_migrate(remote):
    """A remote upgraded into 0011 has ``verify_every_days`` but no periodic task:
    ``migrate`` gives it one (and a migrate back to an older state does not fail)."""
    from django_celery_beat.models import PeriodicTask

    database = register(remote)
    name = f"dbsync: verify remote #{database.pk}"
    PeriodicTask.objects.filter(name=name).delete()
    call_command("migrate", verbosity=0)
    assert PeriodicTask.objects.get(name=name).enabled


def test_a_repair_is_journaled_as_a_sync(remote):
    database = register(remote)
    command(database)
    station = Station.objects.filter(original_db=database).order_by("pk").first()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE hcore_gentity SET name = 'vandalised' WHERE id = %s", [station.pk])
    out, err = io.StringIO(), io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "--repair", stdout=out, stderr=err)
    run = SyncRun.objects.filter(database=database).order_by("-pk").first()
    assert (run.kind, run.status) == (SyncRun.REPAIR, SyncRun.SUCCEEDED)
    assert run.journal == SyncRun.JOURNAL_KEPT  # it may be reverted as a sync may
    assert Gentity.objects.get(pk=station.pk).name != "vandalised"


def test_records_and_files_edited_by_hand_are_found_and_repaired(make_instance, settings):
    # The remote's records were written a moment ago: within the default overlap, a
    # series counts as changed since the records cursor (pending), not as a divergence.
    settings.DBSYNC_OVERLAP_SECONDS = 0
    instance = make_instance(hostname="records.example.org")
    instance.generate(stations=4, seed=9, records_per_series=30, files_per_station=1)
    instance.start()
    database = register(instance, name="records")
    assert command(database)[0] == 0
    assert command(database, "--verify")[0] == 0
    series = Timeseries.objects.filter(original_db=database).order_by("pk").first()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE hcore_record SET value = COALESCE(value, 0) + 1 WHERE timeseries_id = %s "
            "AND timestamp = (SELECT min(timestamp) FROM hcore_record WHERE timeseries_id = %s)",
            [series.pk, series.pk],
        )
    stored = GentityFile.objects.filter(original_db=database).exclude(content="").first()
    with stored.content.storage.open(stored.content.name, "wb") as fh:
        fh.write(b"not the remote's file")
    status, _out, err = command(database, "--verify")
    assert status == 1
    assert "hcore.record: the records of 1 series differ" in err
    assert "hcore.gentityfile.content: 1 files differ" in err
    status, out, err = command(database, "--repair")
    assert status == 0, out + err
    assert command(database, "--verify")[0] == 0


def test_a_repair_keeps_a_file_it_cannot_fetch_and_its_revert_restores_the_records_state(
    make_instance, settings, tmp_path
):
    """The differing file is replaced only once its new copy arrived: over the size
    limit it is not fetched, and the stored one stays. The records' state the repair
    drops is journaled: reverting the repair puts it back."""
    settings.DBSYNC_OVERLAP_SECONDS = 0
    settings.DBSYNC_JOURNAL_DIR = tmp_path / "journal"
    instance = make_instance(hostname="keep.example.org")
    instance.generate(stations=2, seed=4, records_per_series=20, files_per_station=1)
    instance.start()
    database = register(instance, name="keep")
    assert command(database)[0] == 0
    series = Timeseries.objects.filter(original_db=database).order_by("pk").first()
    states = list(RecordsSyncState.objects.order_by("pk").values())
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE hcore_record SET value = COALESCE(value, 0) + 1 WHERE timeseries_id = %s "
            "AND timestamp = (SELECT min(timestamp) FROM hcore_record WHERE timeseries_id = %s)",
            [series.pk, series.pk],
        )
    stored = GentityFile.objects.filter(original_db=database).exclude(content="").first()
    with stored.content.storage.open(stored.content.name, "wb") as fh:
        fh.write(b"our own copy")
    settings.DBSYNC_MAX_FILE_BYTES = 1
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("hcore_remotesyncdb", "-r", database.name, "--repair", stdout=out, stderr=err)
    except CommandError:
        pass  # the file it could not fetch: reported
    with stored.content.storage.open(stored.content.name, "rb") as fh:
        assert fh.read() == b"our own copy"
    run = SyncRun.objects.filter(database=database).order_by("-pk").first()
    assert run.kind == SyncRun.REPAIR
    assert RecordsSyncState.objects.filter(timeseries=series).exists()
    call_command("dbsync_revert", str(run.pk), stdout=io.StringIO(), stderr=io.StringIO())
    assert list(RecordsSyncState.objects.order_by("pk").values()) == states
