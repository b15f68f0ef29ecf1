"""Sample data and small helpers for the API tests.

``create_sample_data`` runs in the test database and, through ``manage.py shell``,
in a real instance: one or more objects of every served model, with the awkward
cases (multi-table children three levels deep, self keys, a many-to-many field, a
FileField, non-ASCII text, microseconds) and a user account with private data that
must never come out of the API.
"""

import datetime as dt
import json

from django.apps import apps

USER = {
    "username": "hidden_account_7f3a",
    "email": "private.person.7f3a@example.com",
    "password": "Tr0ub4dor&3-not-for-the-api",
}
PROFILE = {"fname": "Secretia", "lname": "Privatopoulou", "address": "12 Hidden Lane"}


def create_sample_data():
    from django.contrib.auth import get_user_model

    from hcore import models as m

    user = get_user_model().objects.create_user(**USER)
    m.UserProfile.objects.create(user=user, organization="Private Org", **PROFILE)

    org = m.Organization.objects.create(name="Ministry of Water", acronym="MoW")
    person = m.Person.objects.create(last_name="Παπαδόπουλος", first_name="Νίκος")
    m.Lentity.objects.create(remarks="a plain legal entity")

    division = m.WaterDivision.objects.create(name="Attica", area=3000.5)
    basin = m.WaterBasin.objects.create(name="Kifissos", water_division=division)
    sub_basin = m.WaterBasin.objects.create(name="Podoniftis", parent=basin, area=21.25)
    country = m.PoliticalDivision.objects.create(name="Greece", code="GR")
    prefecture = m.PoliticalDivision.objects.create(name="Attiki", code="GR-I", parent=country)
    m.Garea.objects.create(name="A plain area", area=1.5)
    m.Gentity.objects.create(name="A plain gentity", remarks='line 1\nline 2 "quoted"')
    gpoint = m.Gpoint.objects.create(name="A point", abscissa=23.7, ordinate=37.9, srid=4326)

    station_type = m.StationType.objects.create(descr="Meteorological", descr_alt="Μετεωρολογικός")
    station = m.Station.objects.create(
        name="Athens Observatory",
        owner=org,
        type=station_type,
        creator=user,
        abscissa=23.718,
        ordinate=37.972,
        srid=4326,
        altitude=107.0,
        is_active=True,
        start_date=dt.date(1890, 1, 1),
        water_basin=sub_basin,
        water_division=division,
        political_division=prefecture,
    )
    station.maintainers.add(user)
    m.Station.objects.create(name="Second station", owner=person, type=station_type)
    m.Gline.objects.create(name="A line", gpoint1=gpoint, gpoint2=station, length=12.0)

    code_type = m.GentityAltCodeType.objects.create(descr="WMO code")
    m.GentityAltCode.objects.create(gentity=station, type=code_type, value="16714")
    file_type = m.FileType.objects.create(descr="PNG image", mime_type="image/png")
    m.GentityFile.objects.create(
        gentity=station,
        file_type=file_type,
        content="gentityfile/observatory.png",
        date=dt.date(2001, 5, 6),
        descr="Photo",
    )
    m.GentityFile.objects.create(gentity=station, file_type=file_type, descr="No file yet")
    event_type = m.EventType.objects.create(descr="Maintenance")
    m.GentityEvent.objects.create(
        gentity=station,
        type=event_type,
        date=dt.datetime(2009, 3, 4, 10, 11, 12, 345678, tzinfo=dt.UTC),
        user="the maintainer",
        report="Replaced the rain gauge.",
    )
    m.Overseer.objects.create(
        station=station, person=person, is_current=True, start_date=dt.date(2000, 1, 1)
    )
    instrument_type = m.InstrumentType.objects.create(descr="Rain gauge")
    instrument = m.Instrument.objects.create(
        station=station, type=instrument_type, manufacturer="Acme", name="Gauge 1"
    )

    rain = m.Variable.objects.create(descr="Rainfall")
    temperature = m.Variable.objects.create(descr="Temperature")
    snow = m.Variable.objects.create(descr="Snow depth")
    millimetres = m.UnitOfMeasurement.objects.create(descr="millimetres", symbol="mm")
    millimetres.variables.add(snow, rain)
    m.UnitOfMeasurement.objects.create(descr="degrees Celsius", symbol="°C").variables.add(
        temperature
    )
    m.UnitOfMeasurement.objects.create(descr="unused", symbol="?")
    time_zone = m.TimeZone.objects.create(code="EET", utc_offset=120)
    ten_minutes = m.TimeStep.objects.create(descr="10 minutes", length_minutes=10)
    m.TimeStep.objects.create(descr="monthly", length_months=1)
    m.Timeseries.objects.create(
        gentity=station,
        variable=rain,
        unit_of_measurement=millimetres,
        time_zone=time_zone,
        instrument=instrument,
        time_step=ten_minutes,
        name="Rain, 10 minutes",
        precision=1,
        actual_offset_minutes=0,
        actual_offset_months=0,
    )
    m.Timeseries.objects.create(
        gentity=gpoint, variable=temperature, unit_of_measurement=millimetres, time_zone=time_zone
    )
    return {"user": user, "station": station, "uom": millimetres, "variables": [rain, snow]}


def load_order(labels):
    """The model labels ordered parents first, and keys' targets before referrers.

    Cycles (Gentity's keys into its own subclasses) are cut where they close;
    PostgreSQL checks foreign keys at commit, so that is enough for ``loaddata``.
    """
    wanted = set(labels)
    ordered, seen = [], set()

    def visit(label):
        if label in seen:
            return
        seen.add(label)
        model = apps.get_model(label)
        for parent in model._meta.get_parent_list():
            visit(parent._meta.label_lower)
        for field in model._meta.get_fields():
            target = field.related_model
            if field.concrete and target is not None:
                target_label = target._meta.label_lower
                if target_label in wanted:
                    visit(target_label)
        ordered.append(label)

    for label in sorted(labels):
        visit(label)
    return ordered


def parse_dump(body):
    """Parse a dump body, checking its line layout on the way."""
    text = body.decode() if isinstance(body, bytes) else body
    lines = text.split("\n")
    assert lines[0] == "[", f"first line is {lines[0]!r}"
    assert lines[-2:] == ["]", ""], "a dump ends with a line ']' and a newline"
    objects = lines[1:-2]
    for line in objects[:-1]:
        assert line.endswith(","), f"object line without its separator: {line[:80]}"
    parsed = [json.loads(line.removesuffix(",")) for line in objects]
    assert parsed == json.loads(text)
    return parsed
