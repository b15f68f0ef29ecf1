"""Foreign keys of a sync's new rows checked in bulk (dbsync.engine.keychecks), on PostgreSQL."""

from types import SimpleNamespace

import pytest
from django.db import connection, transaction

from dbsync.engine.errors import ObjectError
from dbsync.engine.keychecks import KeyChecks, _bulk_allowed
from hcore.models import GentityAltCode, GentityAltCodeType, Station
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_sync import last_run, register, remote, sync  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db(transaction=True)


def test_first_sync_checks_new_rows_in_bulk(remote, settings):  # noqa: F811
    settings.DBSYNC_BULK_KEY_CHECKS = True
    # The Python path's first sync (the server's joins every key instead: test_inserver).
    settings.DBSYNC_INSTALL_IN_SERVER = False
    database = register(remote)
    out, _ = sync(database, "-v", "2")
    assert "Checked the foreign keys of" in out
    assert_same_graph(remote_graph(remote), local_graph(database))


@pytest.mark.parametrize("in_server", [True, False])
def test_row_by_row_checks_when_turned_off_give_the_same_result(remote, settings, in_server):  # noqa: F811
    settings.DBSYNC_BULK_KEY_CHECKS = False
    settings.DBSYNC_INSTALL_IN_SERVER = in_server
    database = register(remote)
    out, _ = sync(database, "-v", "2")
    assert "Checked the foreign keys of" not in out
    assert_same_graph(remote_graph(remote), local_graph(database))


def altcode_spec():
    opts = GentityAltCode._meta
    return SimpleNamespace(
        table=opts.db_table, pk_column=opts.pk.column, label="hcore.gentityaltcode"
    )


@pytest.fixture(autouse=True)
def bulk_checks(settings):
    settings.DBSYNC_BULK_KEY_CHECKS = True


def test_a_dangling_key_among_the_new_rows_is_refused_and_nothing_stays():
    kind = GentityAltCodeType.objects.create(descr="code")
    table = GentityAltCode._meta.db_table
    with pytest.raises(ObjectError) as caught, transaction.atomic():
        checks = KeyChecks("remote.example.org")
        assert checks.enabled
        with checks.unchecked(altcode_spec()) as inserted, connection.cursor() as cursor:
            # Without the triggers, PostgreSQL takes a key to nothing: the check must not.
            cursor.execute(
                f"INSERT INTO {table} (id, gentity_id, type_id, value, last_modified) "
                f"VALUES (7001, 424242, %s, 'x', now())",
                [kind.pk],
            )
            inserted.add(7001)
        checks.check()
    message = str(caught.value)
    assert "remote.example.org" in message
    assert "hcore.gentityaltcode(local pk=7001).gentity_id = 424242" in message
    assert "type_id" not in message  # that key holds
    assert not GentityAltCode.objects.exists()


def test_keys_that_hold_pass():
    kind = GentityAltCodeType.objects.create(descr="code")
    with transaction.atomic():
        checks = KeyChecks("remote.example.org")
        with checks.unchecked(altcode_spec()) as inserted:
            inserted.add(1)  # no such row at all: nothing to check, nothing wrong
        assert checks.check() == 1
    assert GentityAltCodeType.objects.get() == kind


def test_without_the_right_the_triggers_check():
    """A role that may not set session_replication_role: the install falls back to
    PostgreSQL's own per-row checks, and its transaction goes on."""
    with connection.cursor() as cursor:
        cursor.execute("DROP ROLE IF EXISTS dbsync_test_plain")
        cursor.execute("CREATE ROLE dbsync_test_plain")
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL ROLE dbsync_test_plain")
            assert not _bulk_allowed()
            cursor.execute("SELECT 1")  # the transaction is not aborted
            assert cursor.fetchone() == (1,)
            cursor.execute("RESET ROLE")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP ROLE dbsync_test_plain")


def test_many_runs_of_new_rows_are_checked_too():
    """More runs of new keys than are written into a query (arrays then)."""
    kind = GentityAltCodeType.objects.create(descr="code")
    table = GentityAltCode._meta.db_table
    with pytest.raises(ObjectError) as caught, transaction.atomic():
        checks = KeyChecks("remote.example.org")
        with checks.unchecked(altcode_spec()) as inserted, connection.cursor() as cursor:
            for pk in range(9001, 9101, 2):  # 50 runs of one key each
                cursor.execute(
                    f"INSERT INTO {table} (id, gentity_id, type_id, value, last_modified) "
                    f"VALUES ({pk}, 424242, %s, 'x', now())",
                    [kind.pk],
                )
                inserted.add(pk)
        assert len(inserted.starts) == 50
        checks.check()
    assert "hcore.gentityaltcode(local pk=9001).gentity_id = 424242" in str(caught.value)
    assert not GentityAltCode.objects.exists()


@pytest.mark.parametrize("in_server", [True, False])
def test_a_table_with_triggers_of_its_own_keeps_them(remote, settings, in_server):  # noqa: F811
    """Replica mode would silence an operator's own trigger (an audit log, say): a
    table that has one is inserted into with its triggers on, and every row is seen,
    whether the first sync is installed by the server or by Python."""
    settings.DBSYNC_INSTALL_IN_SERVER = in_server
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE audit_station (gpoint_ptr_id bigint);"
            "CREATE FUNCTION audit_station() RETURNS trigger AS $$ BEGIN "
            "INSERT INTO audit_station VALUES (NEW.gpoint_ptr_id); RETURN NEW; END $$ "
            "LANGUAGE plpgsql;"
            "CREATE TRIGGER audit_station AFTER INSERT ON hcore_station "
            "FOR EACH ROW EXECUTE FUNCTION audit_station();"
        )
    try:
        database = register(remote)
        out, _ = sync(database, "-v", "2")
        if in_server:
            assert "new objects in the database server" in out
        else:
            assert "Checked the foreign keys of" in out  # the other tables still in bulk
        with connection.cursor() as cursor:
            cursor.execute("SELECT gpoint_ptr_id FROM audit_station ORDER BY 1")
            audited = [row[0] for row in cursor.fetchall()]
        stations = list(
            Station.objects.filter(original_db=database)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        assert stations and audited == stations
        assert_same_graph(remote_graph(remote), local_graph(database))
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER audit_station ON hcore_station; DROP FUNCTION audit_station(); "
                "DROP TABLE audit_station"
            )


def test_an_error_while_writing_unchecked_rows_turns_the_triggers_back_on():
    with transaction.atomic(), connection.cursor() as cursor:
        checks = KeyChecks("remote.example.org")
        with pytest.raises(ValueError), checks.unchecked(altcode_spec()):
            raise ValueError("a bad object")
        cursor.execute("SHOW session_replication_role")
        assert cursor.fetchone()[0] == "origin"


@pytest.mark.parametrize("in_server", [True, False])
def test_the_capture_triggers_keep_the_fast_path_and_mark_the_installed_rows(
    remote,  # noqa: F811
    settings,
    in_server,
):
    """hcore.capture's triggers are ENABLE ALWAYS: a first sync still checks its new rows'
    keys in bulk (replica mode; in the server's install, by its joins to the key maps),
    and the rows it installs are captured all the same (marked, counted), so that this
    aggregate can serve them as a remote."""
    from hcore.capture import COUNTER_TABLE, MARKER_COLUMN

    settings.DBSYNC_INSTALL_IN_SERVER = in_server
    assert KeyChecks(None).allowed("hcore_station")  # its triggers are all the product's
    database = register(remote)
    out, _ = sync(database, "-v", "2")
    assert ("Checked the foreign keys of" in out) is not in_server
    stations = Station.objects.filter(original_db=database).count()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM hcore_station WHERE {MARKER_COLUMN} > 0")
        assert cursor.fetchone()[0] == stations > 0
        cursor.execute(
            f"SELECT sum(row_count) FROM {COUNTER_TABLE} WHERE table_name = 'hcore_station'"
        )
        assert cursor.fetchone()[0] == Station.objects.count()
