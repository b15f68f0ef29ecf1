"""The replica's tallies (dbsync.engine.tally): an unchanged incremental run reads its
counts of the replica as the last run left them, instead of counting every row; a row
or a records sync state lost here, by any writer, is still noticed by the next run."""

import io

import pytest
from django.core.management import call_command
from django.db import connection

from dbsync.models import Database
from hcore.models import GentityEvent, Record, RecordsSyncState, Timeseries
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_records import assert_same_records
from tests.test_sync import register

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_overlap")]


@pytest.fixture
def live(make_instance):
    instance = make_instance(hostname="tally.example.org")
    instance.generate(stations=6, seed=5, records_per_series=50)
    return instance.start()


def sync(database, *args):
    out = io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", "-v", "2", *args, stdout=out)
    return out.getvalue()


def incremental(database):
    out = sync(database)
    assert "objects written by transaction" in out, out
    return out


def sql(query, params=None, replica=False):
    """``query`` on the local database; ``replica``: as a sync's bulk path writes, with
    the ordinary triggers off."""
    with connection.cursor() as cursor:
        if replica:
            cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(query, params)
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


def test_an_unchanged_run_counts_nothing_and_a_row_lost_here_is_still_noticed(live):
    database = register(live)
    sync(database)
    incremental(database)
    out = incremental(database)
    # The rows of every model and the time series: all as the last run left them.
    assert out.count("tallies of the replica: 0 counted") == 2, out
    gone = GentityEvent.objects.filter(original_db=database).order_by("pk").first()
    sql("DELETE FROM hcore_gentityevent WHERE id = %s", [gone.pk], replica=True)
    out = incremental(database)
    assert "Fetching 1 hcore.gentityevent object(s) the remote has and we lack" in out, out
    assert_same_graph(remote_graph(live), local_graph(database))
    # That run counted again, at its end, what it wrote: the next reads it as it is.
    assert "tallies of the replica that this run wrote: 1 counted again" in out, out
    out = incremental(database)
    assert out.count("tallies of the replica: 0 counted") == 2, out
    # Tallies counted in another database (this one restored elsewhere, say), whose
    # transaction ids do not compare with ours: counted again.
    database.refresh_from_db()
    moved = {key: {**entry, "identity": "elsewhere"} for key, entry in database.tallies.items()}
    Database.objects.filter(pk=database.pk).update(tallies=moved)
    out = incremental(database)
    assert out.count(" kept") == 2 and out.count(", 0 kept") == 2, out
    assert_same_graph(remote_graph(live), local_graph(database))


def test_records_deleted_here_with_their_sync_state_come_back(live):
    database = register(live)
    sync(database)
    incremental(database)
    series = Timeseries.objects.filter(original_db=database).order_by("pk").first()
    assert Record.objects.filter(timeseries=series).count() == 50
    sql("DELETE FROM hcore_record WHERE timeseries_id = %s", [series.pk])
    sql("DELETE FROM hcore_recordssyncstate WHERE timeseries_id = %s", [series.pk])
    out = incremental(database)
    assert "Records: 1 of" in out, out
    assert RecordsSyncState.objects.filter(timeseries=series).exists()
    assert_same_records(live, database)
