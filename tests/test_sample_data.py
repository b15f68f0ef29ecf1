"""``manage.py generate_sample_data`` and its engine, ``hcore.management.sample_data``."""

import io
import json
import logging
import os
import re

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import connection

from hcore import models as m
from hcore.management import sample_data
from hcore.management.sample_data import SampleDataGenerator, SampleOptions, generate
from tests.instance import manage

REPLICATED_MODELS = [
    model
    for model in apps.get_app_config("hcore").get_models()
    if issubclass(model, m.ReplicatedModel)
]


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def run_command(**options):
    out = io.StringIO()
    call_command("generate_sample_data", stdout=out, **options)
    return out.getvalue()


def summary_counts(output):
    """{"Station": 12, …} from the command's summary line."""
    counts_text = output.strip().split(": ", 1)[1].rstrip(".")
    return {
        label: int(n) for label, n in (part.rsplit(" ", 1) for part in counts_text.split(", "))
    }


def dump_without_last_modified(env):
    objects = json.loads(manage(env, "dumpdata", "hcore").stdout)
    for obj in objects:
        obj["fields"].pop("last_modified", None)
    return objects


# --- what is made ------------------------------------------------------------------


@pytest.mark.django_db
def test_counts_follow_the_options(media):
    output = run_command(
        stations=12,
        timeseries_per_station=3,
        instruments_per_station=2,
        events_per_station=1,
        files_per_station=1,
    )
    assert m.Station.objects.count() == 12
    assert m.Gpoint.objects.count() == 12
    assert m.Timeseries.objects.count() == 36
    assert m.Instrument.objects.count() == 24
    assert m.GentityEvent.objects.count() == 12
    assert m.GentityFile.objects.count() == 12
    assert m.Gline.objects.count() == 2
    assert m.UserProfile.objects.count() == 1
    counts = summary_counts(output)
    assert counts["Station"] == 12
    assert counts["Timeseries"] == 36
    assert counts["Gentity"] == m.Gentity.objects.count()
    assert counts["Overseer"] == m.Overseer.objects.count()


@pytest.mark.django_db
def test_fractional_options_give_averages(media):
    run_command(stations=60, files_per_station=0.5, timeseries_per_station=1.5)
    assert 0 < m.GentityFile.objects.count() < 60
    assert 60 < m.Timeseries.objects.count() < 120


@pytest.mark.django_db
def test_every_model_gets_objects(media):
    run_command(stations=30, files_per_station=0.3)
    empty = [model.__name__ for model in REPLICATED_MODELS if not model.objects.exists()]
    assert empty == []
    assert m.Person.objects.exists() and m.Organization.objects.exists()
    assert m.WaterDivision.objects.exists() and m.Garea.objects.exists()
    assert m.UnitOfMeasurement.variables.through.objects.exists()


@pytest.mark.django_db
def test_stations_are_complete():
    run_command(stations=25)
    for station in m.Station.objects.select_related("owner__person", "owner__organization"):
        assert station.type_id is not None
        assert hasattr(station.owner, "person") or hasattr(station.owner, "organization")
        assert station.abscissa is not None and station.ordinate is not None
        assert station.water_basin_id and station.water_division_id
        assert station.political_division_id
        assert station.water_division_id == station.water_basin.water_division_id


@pytest.mark.django_db
def test_lookups_and_time_series_pass_full_clean():
    run_command(stations=40, timeseries_per_station=3)
    for model in (m.TimeStep, m.TimeZone, m.Variable, m.UnitOfMeasurement, m.FileType):
        for obj in model.objects.all():
            obj.full_clean()
    series = list(m.Timeseries.objects.select_related("instrument"))
    for timeseries in series:
        timeseries.full_clean()
        if timeseries.instrument:
            assert timeseries.instrument.station_id == timeseries.gentity_id
    assert any(ts.time_step_id is None for ts in series)
    assert any(ts.time_step_id is not None for ts in series)
    for step in m.TimeStep.objects.all():
        assert bool(step.length_minutes) != bool(step.length_months)


@pytest.mark.django_db
def test_geographic_hierarchy():
    run_command(stations=20)
    (country,) = m.PoliticalDivision.objects.filter(parent=None)
    regions = m.PoliticalDivision.objects.filter(parent=country)
    assert regions.count() == 13
    units = m.PoliticalDivision.objects.filter(parent__in=regions)
    assert units.exists()
    assert all(
        len(code) <= 5 for code in m.PoliticalDivision.objects.values_list("code", flat=True)
    )
    subbasins = m.WaterBasin.objects.exclude(parent=None)
    assert subbasins.exists()
    assert not subbasins.filter(parent__parent__isnull=False).exists()
    assert not m.WaterBasin.objects.filter(water_division=None).exists()
    assert set(m.Station.objects.values_list("political_division__parent__parent", flat=True)) == {
        country.pk
    }


@pytest.mark.django_db
def test_objects_are_local():
    run_command(stations=10)
    for model in REPLICATED_MODELS:
        assert not model.objects.exclude(original_db=None).exists(), model
        assert not model.objects.exclude(original_id=None).exists(), model
        assert not model.objects.filter(last_modified=None).exists(), model


@pytest.mark.django_db
def test_user_data_that_must_never_be_served():
    run_command(stations=200)
    (profile,) = m.UserProfile.objects.select_related("user")
    assert profile.user.username == "sample.user"
    assert profile.fname and profile.address
    assert not profile.user.has_usable_password()
    assert m.Station.objects.filter(creator=profile.user).exists()
    assert m.Station.objects.filter(maintainers=profile.user).exists()


@pytest.mark.django_db
def test_files_have_content_in_storage(media):
    run_command(stations=10, files_per_station=1)
    files = list(m.GentityFile.objects.select_related("file_type"))
    assert len(files) == 10
    for gentity_file in files:
        assert gentity_file.content.name.startswith("gentityfile/")
        with default_storage.open(gentity_file.content.name) as handle:
            text = handle.read().decode()
        assert text
        if gentity_file.file_type.mime_type == "text/csv":
            assert text.startswith("date,value\n")
            assert gentity_file.content.name.endswith(".csv")
        else:
            assert gentity_file.file_type.mime_type == "text/plain"


@pytest.mark.django_db
def test_files_are_removed_when_the_run_fails(media, monkeypatch):
    make_files = SampleDataGenerator.make_files

    def make_files_then_fail(self):
        make_files(self)
        assert len(self.result.files) == 3
        raise RuntimeError("after the files")

    monkeypatch.setattr(SampleDataGenerator, "make_files", make_files_then_fail)
    with pytest.raises(RuntimeError, match="after the files"):
        generate(SampleOptions(stations=3, files_per_station=1))
    assert not m.Station.objects.exists()
    assert list((media / "gentityfile").iterdir()) == []


# --- adding to a database with data ----------------------------------------------------


@pytest.mark.django_db
def test_a_second_run_adds_and_reuses_lookups():
    run_command(stations=5)
    lookups = {model: model.objects.count() for model in (m.Variable, m.TimeStep, m.TimeZone)}
    units = m.UnitOfMeasurement.variables.through.objects.count()
    output = run_command(stations=7, seed=2)
    assert m.Station.objects.count() == 12
    assert {model: model.objects.count() for model in lookups} == lookups
    assert m.UnitOfMeasurement.variables.through.objects.count() == units
    assert get_user_model().objects.filter(username="sample.user").count() == 1
    assert m.UserProfile.objects.count() == 1
    assert "Variable" not in summary_counts(output)


@pytest.mark.django_db
def test_replicated_lookups_are_not_reused():
    from dbsync.models import Database

    remote = Database.objects.create(name="remote", hostname="remote.example.org")
    m.Variable.objects.create(descr="Precipitation", original_db=remote, original_id=1)
    run_command(stations=3)
    assert m.Variable.objects.filter(descr="Precipitation", original_db=None).count() == 1
    assert not m.Timeseries.objects.filter(variable__original_db=remote).exists()


@pytest.mark.django_db
def test_a_seed_decides_the_data():
    first = generate(SampleOptions(stations=5, seed=1))
    names_1 = list(m.Station.objects.order_by("pk").values_list("name", "abscissa"))
    generate(SampleOptions(stations=5, seed=2))
    names_2 = list(m.Station.objects.order_by("pk").values_list("name", "abscissa"))[5:]
    assert names_1 != names_2
    assert first.counts["Station"] == 5


# --- PostgreSQL's foreign keys ------------------------------------------------------------


def foreign_keys():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), "
            "condeferrable, condeferred FROM pg_constraint WHERE contype = 'f' ORDER BY 1, 2"
        )
        return cursor.fetchall()


@pytest.mark.django_db
def test_foreign_keys_are_restored_as_they_were():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    before = foreign_keys()
    steps = []
    generate(SampleOptions(stations=10), on_step=lambda name, _: steps.append(name))
    assert "foreign key checks" in steps
    assert foreign_keys() == before
    assert any(table == "hcore_timeseries" for table, *_ in before)


@pytest.mark.django_db
def test_pending_foreign_key_checks_fall_back_to_row_by_row(caplog):
    # Links written earlier in the same transaction leave deferred checks pending,
    # so PostgreSQL refuses to drop the constraints: the run must still work.
    unit = m.UnitOfMeasurement.objects.create(descr="earlier", symbol="e")
    unit.variables.add(m.Variable.objects.create(descr="earlier"))
    with caplog.at_level(logging.INFO, logger="hcore.bulk"):
        generate(SampleOptions(stations=4))
    assert m.Station.objects.count() == 4
    if connection.vendor == "postgresql":
        assert "row by row" in caplog.text


@pytest.mark.django_db
def test_a_small_addition_to_a_larger_table_checks_row_by_row(monkeypatch):
    bulk_checks = []
    checked_at_end = sample_data.foreign_keys_checked_at_end

    def spy(*args, **kwargs):
        bulk_checks.append(args)
        return checked_at_end(*args, **kwargs)

    monkeypatch.setattr(sample_data, "foreign_keys_checked_at_end", spy)
    generate(SampleOptions(stations=6))
    assert len(bulk_checks) == 1
    generate(SampleOptions(stations=2))
    assert len(bulk_checks) == 1
    assert m.Station.objects.count() == 8


# --- the command ------------------------------------------------------------------------


@pytest.mark.django_db
def test_verbosity():
    assert run_command(stations=1, verbosity=0) == ""
    output = run_command(stations=1)
    assert len(output.splitlines()) == 1
    assert re.match(r"Created \d+ objects in [\d.]+ s \(seed 1\): ", output)
    detailed = run_command(stations=1, verbosity=2)
    assert "  stations: " in detailed


@pytest.mark.parametrize(
    "argument", ["--stations=-1", "--files-per-station=-0.5", "--events-per-station=x"]
)
def test_bad_options_are_refused(argument):
    with pytest.raises(CommandError):
        call_command("generate_sample_data", argument)


# --- real instances: determinism and SQLite --------------------------------------------------


def test_same_seed_gives_identical_data(make_instance):
    options = {"stations": 30, "files_per_station": 0.4, "seed": 7}
    first, second = make_instance(), make_instance()
    first.generate(**options)
    second.generate(**options)
    dump = dump_without_last_modified(first.env)
    assert len(dump) > 500
    assert dump == dump_without_last_modified(second.env)


def test_works_on_sqlite(tmp_path):
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_DEBUG="1",
        DBSYNC_VAR_DIR=str(tmp_path),
    )
    manage(env, "migrate", "-v0")
    first = manage(env, "generate_sample_data", "--stations", "15", "--files-per-station", "0.5")
    second = manage(env, "generate_sample_data", "--stations", "5", "--seed", "3")
    assert summary_counts(first.stdout)["Station"] == 15
    assert summary_counts(second.stdout)["Station"] == 5
    check = manage(
        env,
        "shell",
        "-c",
        "from hcore import models as m\n"
        "for ts in m.Timeseries.objects.all(): ts.full_clean()\n"
        "print(m.Station.objects.count(), m.GentityFile.objects.count(), "
        "m.GentityEvent.objects.order_by('date').first().date.tzinfo is not None)",
    )
    stations, files, aware = check.stdout.splitlines()[-1].split()
    assert int(stations) == 20
    assert int(files) == summary_counts(first.stdout)["GentityFile"]
    assert aware == "True"
    assert len(list((tmp_path / "media" / "gentityfile").iterdir())) == int(files)
