"""A seeded, realistic Enhydris data set for demos, tests and benchmarks.

The engine of ``manage.py generate_sample_data``. Everything comes from one
``random.Random(seed)``: on an empty database the same options give the same
objects with the same keys. On a database that already has data, local lookups
(variables, units, time steps…) are reused by description and everything else is
added. Objects are local: ``original_id``/``original_db`` stay empty.

Speed (100,000 stations in about half a minute on PostgreSQL): rows are built as
plain tuples, never as model instances, and written by :mod:`hcore.bulk`:
COPY on PostgreSQL, with root keys taken from the sequences first, ``bulk_create``
(roots) and ``executemany`` (the rest) elsewhere. Multi-table children get their
parent's key. Foreign keys are checked once at the end, not row by row.
"""

import logging
import math
import random
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from hcore import models as m
from hcore.bulk import (
    copy_text,
    foreign_keys_checked_at_end,
    insert_rows,
    insert_rows_returning_pks,
)
from hcore.management import sample_vocabulary as words

logger = logging.getLogger(__name__)

FIRST_DAY = date(1950, 1, 1).toordinal()
LAST_DAY = date(2025, 12, 31).toordinal()
SAMPLE_USERNAME = "sample.user"


@dataclass(frozen=True)
class SampleOptions:
    stations: int = 20
    timeseries_per_station: float = 2
    instruments_per_station: float = 1
    events_per_station: float = 1
    files_per_station: float = 0
    records_per_series: int = 0
    seed: int = 1


@dataclass
class SampleResult:
    counts: Counter = field(default_factory=Counter)  # model label -> objects created
    files: list = field(default_factory=list)  # names written to storage
    seconds: float = 0.0

    @property
    def total(self):
        return sum(self.counts.values())

    def summary(self, seed):
        parts = ", ".join(
            f"{label} {count}" for label, count in sorted(self.counts.items()) if count
        )
        return f"Created {self.total} objects in {self.seconds:.1f} s (seed {seed}): {parts}."


@dataclass
class StationInfo:
    """What later steps need to know of a generated station."""

    name: str
    type: str
    start: int  # ordinal day
    is_active: bool
    abscissa: float
    ordinate: float
    pk: int | None = None


def generate(options, using=DEFAULT_DB_ALIAS, on_step=None):
    """Create the data set in one transaction; files written before a failure are removed."""
    generator = SampleDataGenerator(options, using=using, on_step=on_step)
    started = time.monotonic()
    try:
        with transaction.atomic(using=using):
            generator.run()
            committing = time.monotonic()
        generator.report_step("commit", time.monotonic() - committing)
        generator.analyze()
    except BaseException:
        generator.delete_files()
        raise
    generator.result.seconds = time.monotonic() - started
    logger.info("Generated sample data: %s objects", generator.result.total)
    return generator.result


class SampleDataGenerator:
    def __init__(self, options, using=DEFAULT_DB_ALIAS, on_step=None, storage=default_storage):
        self.options = options
        self.using = using
        self.on_step = on_step
        self.storage = storage
        self.rng = random.Random(options.seed)
        self.now = timezone.now()
        self.result = SampleResult()

    # --- the plan ------------------------------------------------------------------

    def run(self):
        steps = [
            ("lookups", self.make_lookups),
            ("user", self.make_user),
            ("persons and organizations", self.make_parties),
            ("geography", self.make_geography),
            ("stations", self.make_stations),
            ("lines", self.make_glines),
            ("overseers", self.make_overseers),
            ("instruments", self.make_instruments),
            ("time series", self.make_timeseries),
            ("events", self.make_events),
            ("alternative codes", self.make_alt_codes),
            ("files", self.make_files),
            # Last, so that the random draws of everything else stay as they were.
            ("records", self.make_records),
        ]
        with self.foreign_key_checks():
            for name, step in steps:
                started = time.monotonic()
                step()
                self.report_step(name, time.monotonic() - started)
            started = time.monotonic()
        self.report_step("foreign key checks", time.monotonic() - started)

    def foreign_key_checks(self):
        """Check foreign keys at the end (fast for a large load) unless adding a little
        to a lot: a check at the end costs what the tables hold, a check per row what
        is added."""
        existing = m.Station.objects.using(self.using).count()
        if existing > self.options.stations:
            return nullcontext()
        hcore_models = apps.get_app_config("hcore").get_models(include_auto_created=True)
        return foreign_keys_checked_at_end(hcore_models, using=self.using)

    def analyze(self):
        """Statistics for the new rows (PostgreSQL has none after a bulk load, and plans
        the instance's queries blind until autovacuum comes by)."""
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return
        started = time.monotonic()
        with connection.cursor() as cursor:
            for model in apps.get_app_config("hcore").get_models(include_auto_created=True):
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        self.report_step("analyze", time.monotonic() - started)

    def report_step(self, name, seconds):
        logger.debug("Sample data: %s in %.2f s", name, seconds)
        if self.on_step:
            self.on_step(name, seconds)

    def delete_files(self):
        for name in self.result.files:
            self.storage.delete(name)

    # --- small helpers ---------------------------------------------------------------

    def pick(self, items):
        return items[int(self.rng.random() * len(items))]

    def how_many(self, mean):
        """An integer count whose average is ``mean`` (e.g. 0.3 -> 1 in 30% of cases)."""
        whole = int(mean)
        fraction = mean - whole
        return whole + (1 if fraction and self.rng.random() < fraction else 0)

    def day(self, first=FIRST_DAY, last=LAST_DAY):
        return first + int(self.rng.random() * (last - first + 1))

    def bulk_create(self, model, objects):
        model.objects.using(self.using).bulk_create(objects)
        self.result.counts[model_label(model)] += len(objects)
        return [obj.pk for obj in objects]

    def insert(self, model, field_names, rows):
        count = insert_rows(model, field_names, rows, using=self.using)
        self.result.counts[model_label(model)] += count

    def insert_returning_pks(self, model, field_names, rows):
        pks = insert_rows_returning_pks(model, field_names, rows, using=self.using)
        self.result.counts[model_label(model)] += len(pks)
        return pks

    def reuse_or_create(self, model, key, specs):
        """One local object per spec (a dict of field values), reusing those with equal key.

        Returns their primary keys in the order of ``specs``.
        """
        keys = [spec[key] for spec in specs]
        existing = model.objects.using(self.using).filter(
            original_db__isnull=True, **{f"{key}__in": keys}
        )
        found = {}
        for obj in existing.order_by("pk"):
            found.setdefault(getattr(obj, key), obj.pk)
        missing = [spec for spec in specs if spec[key] not in found]
        created = self.bulk_create(model, [model(**spec) for spec in missing])
        found.update(zip((spec[key] for spec in missing), created, strict=True))
        return [found[k] for k in keys], dict(zip(created, missing, strict=True))

    # --- lookups ---------------------------------------------------------------------

    def make_lookups(self):
        self.event_types, _ = self.reuse_or_create(
            m.EventType, "descr", [{"descr": d, "descr_alt": a} for d, a in words.EVENT_TYPES]
        )
        file_type_pks, _ = self.reuse_or_create(
            m.FileType, "descr", [{"descr": d, "mime_type": t} for d, t, _ in words.FILE_TYPES]
        )
        self.written_file_types = [
            (pk, suffix)
            for pk, (_, mime, suffix) in zip(file_type_pks, words.FILE_TYPES, strict=True)
            if mime in words.WRITTEN_FILE_TYPES
        ]
        self.alt_code_types, _ = self.reuse_or_create(
            m.GentityAltCodeType, "descr", [{"descr": d} for d in words.ALT_CODE_TYPES]
        )
        self.instrument_types, _ = self.reuse_or_create(
            m.InstrumentType, "descr", [{"descr": d} for d in words.INSTRUMENT_TYPES]
        )
        station_type_pks, _ = self.reuse_or_create(
            m.StationType,
            "descr",
            [{"descr": d, "descr_alt": alt} for d, (alt, _) in words.STATION_TYPES.items()],
        )
        self.station_types = list(zip(station_type_pks, words.STATION_TYPES, strict=True))
        self.make_time_lookups()
        self.make_variables_and_units()

    def make_time_lookups(self):
        step_pks, _ = self.reuse_or_create(
            m.TimeStep,
            "descr",
            [
                {"descr": d, "length_minutes": minutes, "length_months": months}
                for d, minutes, months in words.TIME_STEPS
            ],
        )
        self.time_steps = list(zip(step_pks, words.TIME_STEPS, strict=True))
        zone_pks, _ = self.reuse_or_create(
            m.TimeZone, "code", [{"code": c, "utc_offset": o} for c, o in words.TIME_ZONES]
        )
        self.time_zones = dict(zip((code for code, _ in words.TIME_ZONES), zone_pks, strict=True))

    def make_variables_and_units(self):
        variable_pks, _ = self.reuse_or_create(
            m.Variable,
            "descr",
            [{"descr": d, "descr_alt": alt} for d, (alt, _, _) in words.VARIABLES.items()],
        )
        self.variables = dict(zip(words.VARIABLES, variable_pks, strict=True))
        unit_pks, created = self.reuse_or_create(
            m.UnitOfMeasurement, "descr", [{"descr": d, "symbol": s} for d, s in words.UNITS]
        )
        self.units = dict(zip((symbol for _, symbol in words.UNITS), unit_pks, strict=True))
        links = [
            (unit_pk, self.variables[variable])
            for unit_pk, spec in created.items()
            for variable, (_, symbols, _) in words.VARIABLES.items()
            if spec["symbol"] in symbols
        ]
        through = m.UnitOfMeasurement.variables.through
        self.insert(through, ["unitofmeasurement", "variable"], links)

    # --- people ---------------------------------------------------------------------

    def make_user(self):
        """One account with personal data: the kind of thing that is never served."""
        users = get_user_model().objects.db_manager(self.using)
        user, created = users.get_or_create(
            username=SAMPLE_USERNAME,
            defaults={"first_name": "Sample", "last_name": "User", "email": "sample@example.org"},
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            self.result.counts[model_label(type(user))] += 1
        _, created = m.UserProfile.objects.using(self.using).get_or_create(
            user=user,
            defaults={
                "fname": "Sample",
                "lname": "User",
                "address": "9 Heroon Polytechneiou, Zografou",
                "organization": "Sample organization",
            },
        )
        self.result.counts[model_label(m.UserProfile)] += created
        self.user = user.pk

    def make_parties(self):
        stations = self.options.stations
        person_count = max(5, stations // 10)
        organization_count = max(len(words.ORGANIZATIONS), stations // 100)
        self.persons = self.create_lentities(person_count)
        self.insert(
            m.Person,
            ["lentity_ptr", "first_name", "last_name", "initials", *PERSON_BLANKS],
            [self.person_row(pk) for pk in self.persons],
        )
        organization_pks = self.create_lentities(organization_count)
        self.insert(
            m.Organization,
            ["lentity_ptr", "name", "acronym", "name_alt", "acronym_alt"],
            [(pk, *self.organization_name(i), "", "") for i, pk in enumerate(organization_pks)],
        )
        self.organizations = organization_pks

    def create_lentities(self, count):
        fields = ["remarks", "remarks_alt", "last_modified"]
        return self.insert_returning_pks(m.Lentity, fields, [("", "", self.now)] * count)

    def person_row(self, pk):
        first, last = self.pick(words.FIRST_NAMES), self.pick(words.LAST_NAMES)
        return (pk, first, last, f"{first[0]}. {last[0]}.", *([""] * len(PERSON_BLANKS)))

    def organization_name(self, index):
        if index < len(words.ORGANIZATIONS):
            return words.ORGANIZATIONS[index]
        place = self.pick(words.PLACES)
        return f"Municipal Water Utility of {place} ({index})", f"DEYA {place[:4].upper()}"

    # --- geography --------------------------------------------------------------------

    def make_geography(self):
        self.make_water_divisions()
        self.make_water_basins()
        self.make_political_divisions()

    def make_water_divisions(self):
        self.water_divisions = self.create_areas(
            m.WaterDivision,
            [{"name": name, "short_name": code} for code, name in words.WATER_DIVISIONS],
        )

    def make_water_basins(self):
        rivers = list(words.RIVER_BASINS.items())
        river_pks = self.create_areas(
            m.WaterBasin,
            [
                {"name": f"{river} basin", "water_division": self.water_divisions[division]}
                for river, division in rivers
            ],
            ["parent"],
            [(None,)] * len(rivers),
        )
        self.water_basins = list(
            zip(river_pks, (self.water_divisions[d] for _, d in rivers), strict=True)
        )
        parents = list(zip(river_pks, rivers, strict=True))
        subbasins = [self.pick(parents) for _ in range(max(3, self.options.stations // 100))]
        subbasin_pks = self.create_areas(
            m.WaterBasin,
            [
                {
                    "name": f"{self.pick(words.PLACES)} stream ({river})",
                    "water_division": self.water_divisions[division],
                }
                for _, (river, division) in subbasins
            ],
            ["parent"],
            [(parent,) for parent, _ in subbasins],
        )
        self.water_basins += [
            (pk, self.water_divisions[division])
            for pk, (_, (_, division)) in zip(subbasin_pks, subbasins, strict=True)
        ]

    def make_political_divisions(self):
        fields = ["parent", "code"]
        (country,) = self.create_areas(
            m.PoliticalDivision, [{"name": "Greece"}], fields, [(None, "GR")]
        )
        regions = self.create_areas(
            m.PoliticalDivision,
            [{"name": name} for _, name in words.REGIONS],
            fields,
            [(country, f"GR-{letter}") for letter, _ in words.REGIONS],
        )
        per_region = Counter()
        units = []
        for _ in range(max(len(regions), self.options.stations // 200)):
            region = int(self.rng.random() * len(regions))
            per_region[region] += 1
            letter = words.REGIONS[region][0]
            units.append((regions[region], f"{letter}{per_region[region] % 10_000:02d}"))
        self.political_divisions = self.create_areas(
            m.PoliticalDivision,
            [{"name": f"{self.pick(words.PLACES)} regional unit"} for _ in units],
            fields,
            units,
        )

    def create_areas(self, model, gentities, fields=(), rows=None):
        """Gentity, Garea and ``model`` rows for each of ``gentities`` (dicts)."""
        pks = self.create_gentities(gentities)
        self.insert(
            m.Garea,
            ["gentity_ptr", "area"],
            [(pk, round(50 + self.rng.random() * 5000, 1)) for pk in pks],
        )
        rows = rows or [()] * len(pks)
        self.insert(
            model, ["garea_ptr", *fields], [(pk, *row) for pk, row in zip(pks, rows, strict=True)]
        )
        return pks

    def create_gentities(self, specs):
        """Gentity rows from dicts of some of GENTITY_FIELDS (keys as integers)."""
        defaults = dict.fromkeys(GENTITY_KEYS) | {"last_modified": self.now}
        rows = [tuple(spec.get(f, defaults.get(f, "")) for f in GENTITY_FIELDS) for spec in specs]
        return self.insert_returning_pks(m.Gentity, GENTITY_FIELDS, rows)

    # --- stations ----------------------------------------------------------------------

    def make_stations(self):
        specs = [self.station_spec(i) for i in range(self.options.stations)]
        pks = self.create_gentities([gentity for gentity, _, _, _ in specs])
        self.insert(
            m.Gpoint,
            ["gentity_ptr", "abscissa", "ordinate", "srid", "approximate", "altitude", "asrid"],
            ((pk, *gpoint) for pk, (_, gpoint, _, _) in zip(pks, specs, strict=True)),
        )
        self.insert(
            m.Station,
            ["gpoint_ptr", *STATION_FIELDS],
            ((pk, *station) for pk, (_, _, station, _) in zip(pks, specs, strict=True)),
        )
        self.stations = [info for _, _, _, info in specs]
        for pk, info in zip(pks, self.stations, strict=True):
            info.pk = pk
        self.make_maintainers()

    def station_spec(self, index):
        """(Gentity fields, Gpoint row, Station row, StationInfo) of one station."""
        place = self.pick(words.PLACES)
        basin, division = self.pick(self.water_basins)
        gentity = {
            "name": f"{place} {self.pick(words.FEATURES)}",
            "short_name": f"{place[:3].upper()}{index + 1:05d}",
            "water_basin": basin,
            "water_division": division,
            "political_division": self.pick(self.political_divisions),
        }
        longitude = round(20.0 + self.rng.random() * 8.0, 5)
        latitude = round(35.0 + self.rng.random() * 6.7, 5)
        altitude = round(self.rng.random() * 2000.0, 1)
        gpoint = (longitude, latitude, 4326, self.rng.random() < 0.1, altitude, None)
        owners = self.organizations if self.rng.random() < 0.7 else self.persons
        type_pk, type_name = self.pick(self.station_types)
        is_active = self.rng.random() < 0.8
        start = self.day(last=date(2015, 12, 31).toordinal())
        end = None if is_active else date.fromordinal(self.day(first=start + 365))
        station = (
            self.pick(owners),
            type_pk,
            is_active,
            self.rng.random() < 0.6,  # is_automatic
            date.fromordinal(start),
            end,
            self.user if self.rng.random() < 0.1 else None,  # creator
        )
        info = StationInfo(gentity["name"], type_name, start, is_active, longitude, latitude)
        return gentity, gpoint, station, info

    def make_maintainers(self):
        """Link some stations to the sample user: a key that is never replicated."""
        through = m.Station.maintainers.through
        rows = [(s.pk, self.user) for s in self.stations if self.rng.random() < 0.05]
        self.insert(through, ["station", "user"], rows)

    def make_glines(self):
        """Lines between neighbours in generation order (river reaches, transects)."""
        count = len(self.stations)
        if count < 2:
            return
        pairs = []
        for _ in range(max(2, count // 100)):
            first = int(self.rng.random() * count)
            step = 1 + int(self.rng.random() * min(3, count - 1))
            pairs.append((self.stations[first], self.stations[(first + step) % count]))
        pks = self.create_gentities([{"name": f"{a.name} – {b.name}"} for a, b in pairs])
        self.insert(
            m.Gline,
            ["gentity_ptr", "gpoint1", "gpoint2", "length"],
            [(pk, a.pk, b.pk, distance_m(a, b)) for pk, (a, b) in zip(pks, pairs, strict=True)],
        )

    def make_overseers(self):
        fields = ["station", "person", "is_current", "start_date", "end_date", "last_modified"]
        self.insert(m.Overseer, fields, self.overseer_rows())

    def overseer_rows(self):
        """Zero to two overseers a station, one after the other; the last may be current."""
        for station in self.stations:
            count = int(self.rng.random() * 3)
            start = station.start
            for k in range(count):
                is_last = k == count - 1
                end = None if is_last else self.day(first=start)
                yield (
                    station.pk,
                    self.pick(self.persons),
                    is_last and station.is_active,
                    date.fromordinal(start),
                    None if end is None else date.fromordinal(end),
                    self.now,
                )
                start = end

    # --- what hangs off a station --------------------------------------------------------

    def make_instruments(self):
        rows, owners = [], []
        for index, station in enumerate(self.stations):
            for _ in range(self.how_many(self.options.instruments_per_station)):
                rows.append(self.instrument_row(station))
                owners.append(index)
        pks = self.insert_returning_pks(m.Instrument, INSTRUMENT_FIELDS, rows)
        self.instruments = [[] for _ in self.stations]
        for index, pk in zip(owners, pks, strict=True):
            self.instruments[index].append(pk)

    def instrument_row(self, station):
        manufacturer = self.pick(MANUFACTURERS)
        model = self.pick(words.INSTRUMENT_MODELS[manufacturer])
        type_pk = self.pick(self.instrument_types)
        start = self.day(first=station.start, last=station.start + 3650)
        return (
            station.pk,
            type_pk,
            manufacturer,
            model,
            station.is_active,
            date.fromordinal(min(start, LAST_DAY)),
            f"{manufacturer} {model}",
            "",
            "",
            "",
            self.now,
        )

    def make_timeseries(self):
        self.series_variables = []
        pks = self.insert_returning_pks(
            m.Timeseries, TIMESERIES_FIELDS, list(self.timeseries_rows())
        )
        self.series = list(zip(pks, self.series_variables, strict=True))

    def timeseries_rows(self):
        """Per station, time series of the variables its type measures, in turn."""
        for index, station in enumerate(self.stations):
            variables = words.STATION_TYPES[station.type][1]
            first = int(self.rng.random() * len(variables))
            for k in range(self.how_many(self.options.timeseries_per_station)):
                variable = variables[(first + k) % len(variables)]
                self.series_variables.append(variable)
                yield self.timeseries_row(station, variable, self.instruments[index])

    def timeseries_row(self, station, variable, instruments):
        _, symbols, precision = words.VARIABLES[variable]
        symbol = symbols[0] if self.rng.random() < 0.85 else self.pick(symbols)
        time_step = None if self.rng.random() < 0.15 else self.pick(self.time_steps)
        zone = "EET" if self.rng.random() < 0.8 else self.pick(words.TIME_ZONES)[0]
        instrument = self.pick(instruments) if instruments and self.rng.random() < 0.8 else None
        step_name = time_step[1][0].lower() if time_step else "irregular"
        return (
            station.pk,
            self.variables[variable],
            self.units[symbol],
            f"{variable} ({step_name})",
            "",
            precision,
            self.time_zones[zone],
            "",
            "",
            instrument,
            time_step[0] if time_step else None,
            *self.offsets(time_step[1] if time_step else None),
            self.now,
        )

    def offsets(self, time_step):
        """Nominal and actual offsets (minutes, months) that Timeseries.clean() accepts."""
        if time_step is None:
            return None, None, None, None
        _, minutes, months = time_step
        nominal = (480 if minutes == 1440 else 0, 0) if self.rng.random() < 0.7 else (None, None)
        return (*nominal, minutes, months)

    def make_events(self):
        rows = (
            self.event_row(station)
            for station in self.stations
            for _ in range(self.how_many(self.options.events_per_station))
        )
        fields = ["gentity", "date", "type", "user", "report", "report_alt", "last_modified"]
        self.insert(m.GentityEvent, fields, rows)

    def event_row(self, station):
        day = date.fromordinal(self.day(first=station.start))
        minutes = int(self.rng.random() * 24 * 60)
        when = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=UTC)
        user = f"{self.pick(words.FIRST_NAMES)[0]}{self.pick(words.LAST_NAMES)}".lower()
        return (
            station.pk,
            when,
            self.pick(self.event_types),
            user,
            self.pick(words.EVENT_REPORTS),
            "",
            self.now,
        )

    def make_alt_codes(self):
        fields = ["gentity", "type", "value", "last_modified"]
        self.insert(m.GentityAltCode, fields, self.alt_code_rows())

    def alt_code_rows(self):
        """An alternative code for half the stations (a WMO number, or another network's)."""
        for station in self.stations:
            if self.rng.random() < 0.5:
                type_index = int(self.rng.random() * len(self.alt_code_types))
                prefix = "16" if type_index == 0 else words.ALT_CODE_TYPES[type_index][:2].upper()
                value = f"{prefix}{int(self.rng.random() * 1000):03d}"
                yield station.pk, self.alt_code_types[type_index], value, self.now

    def make_files(self):
        rows = (
            self.file_row(station, k)
            for station in self.stations
            for k in range(self.how_many(self.options.files_per_station))
        )
        self.insert(m.GentityFile, GENTITYFILE_FIELDS, rows)

    def file_row(self, station, number):
        file_type, suffix = self.pick(self.written_file_types)
        day = date.fromordinal(self.day(first=station.start))
        if suffix == "csv":
            descr, content = "Measurements extract", self.csv_content(day)
        else:
            descr, content = "Field notes", self.notes_content(station, day)
        wanted = f"gentityfile/sample-{station.pk}-{number + 1}.{suffix}"
        name = self.storage.save(wanted, ContentFile(content.encode()))
        self.result.files.append(name)
        return (station.pk, day, file_type, name, f"{descr}, {station.name}", "", "", "", self.now)

    def make_records(self):
        count = self.options.records_per_series
        if not count or not self.series:
            return
        records = SampleRecords(count, self.rng)
        fields = ["timeseries", "timestamp", "value", "flags"]
        connection = connections[self.using]
        if connection.vendor == "postgresql":
            columns = ", ".join(
                connection.ops.quote_name(m.Record._meta.get_field(name).column) for name in fields
            )
            table = connection.ops.quote_name(m.Record._meta.db_table)
            sql = f"COPY {table} ({columns}) FROM STDIN"
            copy_text(connection, sql, records.copy_text(self.series))
            self.result.counts[model_label(m.Record)] += count * len(self.series)
        else:
            self.insert(m.Record, fields, records.rows(self.series))

    def csv_content(self, first_day):
        lines = ["date,value"]
        for offset in range(10):
            day = date.fromordinal(first_day.toordinal() + offset)
            lines.append(f"{day:%Y-%m-%d},{self.rng.random() * 20:.1f}")
        return "\n".join(lines) + "\n"

    def notes_content(self, station, day):
        return f"{station.name}, {day:%Y-%m-%d}\n\n{self.pick(words.EVENT_REPORTS)}\n"


class SampleRecords:
    """The records of the sample time series: 10-minute values up to a fixed moment.

    A daily cycle plus noise around each variable's mean, about 1% missing (flag
    MISS). Made from tables drawn once (the noise, which records are missing) and
    shifted per series, so that millions of rows cost little more than writing them.
    """

    END = datetime(2025, 12, 31, 23, 50, tzinfo=UTC)
    STEP_MINUTES = 10
    PER_DAY = 24 * 60 // STEP_MINUTES
    MISSING_SHARE = 0.01

    def __init__(self, count, rng):
        self.count = count
        self.rng = rng
        self.noise = [rng.gauss(0.0, 1.0) for _ in range(count)]
        self.missing = bytes(rng.random() < self.MISSING_SHARE for _ in range(count))
        self.cycle = [
            -math.cos(2 * math.pi * (k - self.PER_DAY / 12) / self.PER_DAY)
            for k in range(self.PER_DAY)
        ]
        self.times = [
            self.END - timedelta(minutes=self.STEP_MINUTES * (count - 1 - k)) for k in range(count)
        ]

    def values(self, variable):
        """(value or None, flags) of one series' records, oldest first."""
        mean, amplitude, deviation, low, high = words.RECORD_SHAPES[variable]
        precision = words.VARIABLES[variable][2]
        count, noise, missing, cycle = self.count, self.noise, self.missing, self.cycle
        shift = int(self.rng.random() * count)
        phase = int(self.rng.random() * 6)  # stations are not all on one clock
        for k in range(count):
            j = (k + shift) % count
            if missing[j]:
                yield None, "MISS"
                continue
            value = mean + amplitude * cycle[(k + phase) % self.PER_DAY] + deviation * noise[j]
            yield round(min(max(value, low), high), precision), ""

    def copy_text(self, series):
        """The rows of ``series`` ([(pk, variable)]) in COPY's text format, a block a series."""
        stamps = [f"{moment:%Y-%m-%d %H:%M}+00\t" for moment in self.times]
        for pk, variable in series:
            prefix = f"{pk}\t"
            yield "".join(
                f"{prefix}{stamp}{NULL if value is None else value}\t{flags}\n"
                for stamp, (value, flags) in zip(stamps, self.values(variable), strict=True)
            )

    def rows(self, series):
        for pk, variable in series:
            for moment, (value, flags) in zip(self.times, self.values(variable), strict=True):
                yield pk, moment, value, flags


NULL = "\\N"  # COPY's text format for a missing value
MANUFACTURERS = list(words.INSTRUMENT_MODELS)
GENTITY_KEYS = ["water_basin", "water_division", "political_division"]
GENTITY_FIELDS = [
    *GENTITY_KEYS,
    "name",
    "name_alt",
    "short_name",
    "short_name_alt",
    "remarks",
    "remarks_alt",
    "last_modified",
]
INSTRUMENT_FIELDS = [
    "station",
    "type",
    "manufacturer",
    "model",
    "is_active",
    "start_date",
    "name",
    "remarks",
    "name_alt",
    "remarks_alt",
    "last_modified",
]
PERSON_BLANKS = [
    "middle_names",
    "last_name_alt",
    "first_name_alt",
    "middle_names_alt",
    "initials_alt",
]
STATION_FIELDS = [
    "owner",
    "type",
    "is_active",
    "is_automatic",
    "start_date",
    "end_date",
    "creator",
]
TIMESERIES_FIELDS = [
    "gentity",
    "variable",
    "unit_of_measurement",
    "name",
    "name_alt",
    "precision",
    "time_zone",
    "remarks",
    "remarks_alt",
    "instrument",
    "time_step",
    "nominal_offset_minutes",
    "nominal_offset_months",
    "actual_offset_minutes",
    "actual_offset_months",
    "last_modified",
]
GENTITYFILE_FIELDS = [
    "gentity",
    "date",
    "file_type",
    "content",
    "descr",
    "remarks",
    "descr_alt",
    "remarks_alt",
    "last_modified",
]


def model_label(model):
    """``Station``, or ``Station.maintainers`` for the table of a many-to-many field."""
    owner = model._meta.auto_created
    if not owner:
        return model.__name__
    (m2m,) = (f for f in owner._meta.many_to_many if f.remote_field.through is model)
    return f"{owner.__name__}.{m2m.name}"


def distance_m(a, b):
    """Great-circle distance between two stations, in metres (haversine)."""
    lat1, lat2 = math.radians(a.ordinate), math.radians(b.ordinate)
    dlat, dlon = lat2 - lat1, math.radians(b.abscissa - a.abscissa)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return round(2 * 6_371_000 * math.asin(math.sqrt(h)))
