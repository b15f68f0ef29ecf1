"""A change of concrete type at a remote, under the same primary key (a station
turned into a water basin and back), is replicated whole: the replica then holds
exactly the new type, the old child rows gone with what cascades from them, the
new ones linked to the same local parent row, every key re-linked. By change
capture (the child tables' tombstones) and by a --full run; --verify agrees."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from dbsync.models import Database
from hcore.models import Garea, Gentity, Gpoint, Instrument, Station, Timeseries, WaterBasin
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_capture import sync
from tests.test_sync import last_run, register

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_overlap")]


@pytest.fixture
def live(make_instance):
    instance = make_instance(hostname="concrete.example.org")
    instance.generate(stations=8, seed=11)
    return instance.start()


def verify(database):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(
            "hcore_remotesyncdb", "-r", database.name, "-N", "--verify", stdout=out, stderr=err
        )
    except CommandError as exc:
        return exc.returncode, out.getvalue() + err.getvalue() + str(exc)
    return 0, out.getvalue()


def station_with_series(instance):
    """The remote pk of a station that has time series and instruments."""
    return instance.sql(
        "SELECT s.gpoint_ptr_id FROM hcore_station s "
        "WHERE EXISTS (SELECT 1 FROM hcore_timeseries t WHERE t.gentity_id = s.gpoint_ptr_id) "
        "AND EXISTS (SELECT 1 FROM hcore_instrument i WHERE i.station_id = s.gpoint_ptr_id) "
        "ORDER BY 1 LIMIT 1"
    )[0][0]


def station_to_water_basin_by_sql(instance, pk):
    """What an operator would type: the station's rows and what hangs off them
    (instruments, overseers, the lines' keys to it) deleted or cleared, a water
    basin's inserted for the same gentity, and another gentity put in that basin."""
    instance.sql(
        "UPDATE hcore_timeseries SET instrument_id = NULL WHERE instrument_id IN "
        "(SELECT id FROM hcore_instrument WHERE station_id = %s)",
        [pk],
    )
    for statement in (
        "UPDATE hcore_gline SET gpoint1_id = NULL WHERE gpoint1_id = %s",
        "UPDATE hcore_gline SET gpoint2_id = NULL WHERE gpoint2_id = %s",
        "DELETE FROM hcore_instrument WHERE station_id = %s",
        "DELETE FROM hcore_overseer WHERE station_id = %s",
        "DELETE FROM hcore_station_maintainers WHERE station_id = %s",
        "DELETE FROM hcore_station WHERE gpoint_ptr_id = %s",
        "DELETE FROM hcore_gpoint WHERE gentity_ptr_id = %s",
        "INSERT INTO hcore_garea (gentity_ptr_id, area) VALUES (%s, 12.5)",
        "INSERT INTO hcore_waterbasin (garea_ptr_id, parent_id) VALUES (%s, NULL)",
    ):
        instance.sql(statement, [pk])
    instance.sql(
        "UPDATE hcore_gentity SET water_basin_id = %s WHERE id = "
        "(SELECT min(gpoint_ptr_id) FROM hcore_station)",
        [pk],
    )


def water_basin_to_station_by_django(instance, pk):
    """The way back, in Django: the basin's and area's rows deleted keeping the
    gentity (the gentity in the basin loses its key; deepest first, or Django's
    cascade from the area would take the gentity's series along), a station saved on
    the same gentity, with an instrument."""
    instance.shell(
        "from django.db.models.deletion import Collector\n"
        "from hcore.models import Garea, Gentity, Instrument, InstrumentType, Lentity, "
        "Station, StationType, WaterBasin\n"
        "collector = Collector('default')\n"
        f"collector.collect([WaterBasin.objects.get(pk={pk})], keep_parents=True)\n"
        f"collector.collect([Garea.objects.get(pk={pk})], keep_parents=True)\n"
        "collector.delete()\n"
        f"gentity = Gentity.objects.get(pk={pk})\n"
        "station = Station(owner=Lentity.objects.order_by('pk').first(), "
        "type=StationType.objects.order_by('pk').first(), altitude=321.0)\n"
        "for f in Gentity._meta.concrete_fields:\n"
        "    setattr(station, f.attname, getattr(gentity, f.attname))\n"
        f"station.gpoint_ptr_id = {pk}\n"
        "station.save()\n"
        "Instrument.objects.create(station=station, "
        "type=InstrumentType.objects.order_by('pk').first(), name='Back again')\n"
    )


def local_of(database, pk):
    return Gentity.objects.get(original_db=database, original_id=pk).pk


def assert_water_basin(database, remote_pk, local_pk, series):
    """The replica holds the gentity as a water basin only, under the same local pk,
    its series still pointing at it; another gentity of the remote lies in it."""
    assert local_of(database, remote_pk) == local_pk
    assert WaterBasin.objects.filter(pk=local_pk).exists()
    assert Garea.objects.get(pk=local_pk).area == 12.5
    assert not Gpoint.objects.filter(pk=local_pk).exists()
    assert not Station.objects.filter(pk=local_pk).exists()
    assert not Instrument.objects.filter(station_id=local_pk).exists()
    assert set(Timeseries.objects.filter(gentity_id=local_pk).values_list("pk", flat=True)) == (
        series
    )
    assert Gentity.objects.filter(original_db=database, water_basin_id=local_pk).count() == 1


def assert_station(database, remote_pk, local_pk, series):
    assert local_of(database, remote_pk) == local_pk
    assert Station.objects.get(pk=local_pk).altitude == 321.0
    assert not Garea.objects.filter(pk=local_pk).exists()
    assert not WaterBasin.objects.filter(pk=local_pk).exists()
    assert list(Instrument.objects.filter(station_id=local_pk).values_list("name", flat=True)) == [
        "Back again"
    ]
    assert set(Timeseries.objects.filter(gentity_id=local_pk).values_list("pk", flat=True)) == (
        series
    )
    assert not Gentity.objects.filter(water_basin_id=local_pk).exists()


@pytest.mark.parametrize("mode", ["capture", "full"])
def test_a_station_turned_water_basin_and_back_is_replicated_whole(live, mode):
    database = register(live)
    sync(database)
    pk = station_with_series(live)
    local = local_of(database, pk)
    series = set(Timeseries.objects.filter(gentity_id=local).values_list("pk", flat=True))
    assert series and Instrument.objects.filter(station_id=local).exists()
    args = ["--full"] if mode == "full" else []

    station_to_water_basin_by_sql(live, pk)
    out = sync(database, *args)
    if mode == "capture":
        assert "objects written by transaction" in out and last_run(database).full is False
    assert_same_graph(remote_graph(live), local_graph(database))
    assert_water_basin(database, pk, local, series)
    assert verify(database)[0] == 0

    water_basin_to_station_by_django(live, pk)
    sync(database, *args)
    assert_same_graph(remote_graph(live), local_graph(database))
    assert_station(database, pk, local, series)
    status, out = verify(database)
    assert status == 0, out


def test_a_type_change_that_would_change_another_origin_is_refused(live, make_instance):
    """The old child row's cascade obeys the delete guard: an instrument of another
    origin on the station stops it, and nothing changes."""
    database = register(live)
    sync(database)
    pk = station_with_series(live)
    local = local_of(database, pk)
    mine = Instrument.objects.filter(station_id=local).first()
    outsider = Instrument.objects.create(
        station_id=local, type_id=mine.type_id, name="Local instrument"
    )
    station_to_water_basin_by_sql(live, pk)
    with pytest.raises(CommandError, match=r"do not come from this remote.*hcore\.instrument"):
        sync(database)
    assert Station.objects.filter(pk=local).exists()
    assert not Garea.objects.filter(pk=local).exists()
    assert Instrument.objects.filter(pk=outsider.pk).exists()


def test_repair_replicates_a_type_change_that_no_sync_brought(live):
    """--verify names the old child rows left here and the new ones missing; --repair
    deletes the former, installs the latter, and the replica is equal again."""
    database = register(live)
    sync(database)
    pk = station_with_series(live)
    local = local_of(database, pk)
    series = set(Timeseries.objects.filter(gentity_id=local).values_list("pk", flat=True))
    station_to_water_basin_by_sql(live, pk)
    # No sync brought it, yet the replica's cursor is past it (a change lost): without
    # that, --verify counts the remote's rows written since the cursor as pending.
    (now,) = live.sql("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")[0]
    Database.objects.filter(pk=database.pk).update(capture_cursor=now)
    status, out = verify(database)
    assert status == 1 and "hcore.station" in out and "hcore.waterbasin" in out, out
    assert Station.objects.filter(pk=local).exists()

    call_command("hcore_remotesyncdb", "-r", database.name, "-N", "--repair", stdout=io.StringIO())
    assert_same_graph(remote_graph(live), local_graph(database))
    assert_water_basin(database, pk, local, series)
    assert verify(database)[0] == 0


def test_type_changes_beyond_the_guard_are_refused_and_counted(live):
    """Five of the eight stations turned water basins: more stations would go than the
    delete guard allows (50 %), so the run is refused, nothing changed, and the
    refusal counts each object once, the five whose type changed (their gentity rows
    stay) with the instruments and overseers that went with them at the remote."""
    database = register(live)
    sync(database)
    stations = [pk for (pk,) in live.sql("SELECT gpoint_ptr_id FROM hcore_station ORDER BY 1")]
    changed = stations[:5]
    (hanging,) = live.sql(
        "SELECT (SELECT count(*) FROM hcore_instrument WHERE station_id = ANY(%s)) + "
        "(SELECT count(*) FROM hcore_overseer WHERE station_id = ANY(%s))",
        [changed, changed],
    )[0]
    for pk in changed:
        station_to_water_basin_by_sql(live, pk)
    before = Station.objects.filter(original_db=database).count()
    with pytest.raises(CommandError) as refused:
        sync(database)
    message = str(refused.value)
    assert "hcore.station: 5 of 8" in message and "more than allowed" in message, message
    assert f"({5 + hanging} objects in all)" in message, message
    assert Station.objects.filter(original_db=database).count() == before == 8
    assert not WaterBasin.objects.filter(original_db=database, original_id__in=changed).exists()
