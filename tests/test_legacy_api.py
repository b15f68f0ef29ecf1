"""The 2010 web-service layout (``api/legacy.py``, ``protocol/legacy.py``) on an
instance loaded with the 2010 fixture, through Django's test client on the test
database."""

import datetime as dt
import json
from pathlib import Path

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core import serializers
from django.core.management import call_command

from api.checks import check_legacy_names
from hcore import models as m
from protocol.legacy import LEGACY_MODELS, TSDATA, clashes, legacy_model
from protocol.schema import served_models
from tests.api_helpers import USER, parse_dump

# The same file as /work/shared/reference/enhydris-2010-dbsync-testdata.json. It loads
# into today's models with --ignorenonexistent alone: the one 2010 field they lack,
# WaterBasin.water_division, is dropped (hcore.models says why).
pytestmark = pytest.mark.filterwarnings(
    # The 2010 fixture's dates are naive, as Django of 2010 wrote them.
    "ignore:DateTimeField .* received a naive datetime:RuntimeWarning"
)
FIXTURE_2010 = Path(__file__).parent / "fixtures" / "enhydris-2010-dbsync-testdata.json"


def body(response):
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def json_error(response, status):
    assert response.status_code == status, body(response)
    assert response["Content-Type"] == "application/json"
    return json.loads(body(response))["error"]


@pytest.fixture
def data_2010(db):
    call_command("loaddata", "--ignorenonexistent", str(FIXTURE_2010), verbosity=0)
    return json.loads(FIXTURE_2010.read_text())


def objects_of(fixture, model_label):
    return sorted(o["pk"] for o in fixture if o["model"] == model_label)


def test_the_2010_fixture_loads_whole(data_2010):
    """The conversion of the 2010 fixture to today's models is ``loaddata
    --ignorenonexistent``: every object arrives."""
    for model_label in {o["model"] for o in data_2010}:
        model = apps.get_model(model_label)
        assert sorted(model._base_manager.values_list("pk", flat=True)) == objects_of(
            data_2010, model_label
        ), model_label


# --- list and detail ------------------------------------------------------------------


def test_listing_is_todays_dump_of_the_model(client, data_2010):
    for name, model_label in LEGACY_MODELS.items():
        legacy = client.get(f"/api/{name}/")
        assert legacy.status_code == 200, name
        assert legacy.streaming and legacy["Content-Type"] == "application/json"
        text = body(legacy)
        assert text == body(client.get(f"/api/{model_label.replace('.', '/')}/")), name
        assert [o["pk"] for o in parse_dump(text)] == objects_of(data_2010, model_label)
    stations = parse_dump(body(client.get("/api/Station/")))
    assert [(o["model"], o["pk"], o["fields"]["owner"]) for o in stations] == [
        ("hcore.station", 4, 1)
    ]
    zones = parse_dump(body(client.get("/api/TimeZone/")))
    assert [(o["pk"], o["fields"]["code"]) for o in zones] == [(1, "Test Time Zone")]


def test_detail_is_a_list_of_one_that_django_deserializes(client, data_2010):
    station = list(serializers.deserialize("json", body(client.get("/api/Station/4/"))))
    assert len(station) == 1
    assert isinstance(station[0].object, m.Station)
    assert (station[0].object.pk, station[0].object.owner_id) == (4, 1)
    zone = list(serializers.deserialize("json", body(client.get("/api/TimeZone/1/"))))
    assert (zone[0].object.code, zone[0].object.utc_offset) == ("Test Time Zone", 2)
    # Every object of the fixture, each equal to its line of the listing.
    for name, model_label in LEGACY_MODELS.items():
        listing = parse_dump(body(client.get(f"/api/{name}/")))
        for obj in listing:
            response = client.get(f"/api/{name}/{obj['pk']}/")
            assert response.status_code == 200
            assert json.loads(body(response)) == [obj], (name, obj["pk"])
        assert len(listing) == len(objects_of(data_2010, model_label))


@pytest.mark.parametrize(
    "url",
    [
        "/api/Station/nonexistent/",
        "/api/Station/999999/",
        "/api/Station/0/",
        "/api/Station/-4/",
        "/api/Station/99999999999999999999999/",
        "/api/Station/４/",  # a full-width digit: not an id
        "/api/TimeZone/4/",  # an id of another model
        "/api/NoSuchModel/",
        "/api/NoSuchModel/1/",
        "/api/UserProfile/",
        "/api/User/1/",
        "/api/station/",  # the names are case-sensitive, as in 2010
        "/api/tsdata/999999/",
        "/api/tsdata/nonexistent/",
        "/api/tsdata/",
    ],
)
def test_unknown_model_or_id_is_a_json_404(client, data_2010, url):
    assert json_error(client.get(url), 404)


def test_a_model_not_served_is_a_404_even_if_mapped(client, data_2010, settings):
    settings.API_APPS = []
    assert "No served model 'Station'" in json_error(client.get("/api/Station/"), 404)
    assert json_error(client.get("/api/Station/4/"), 404)
    assert json_error(client.get("/api/tsdata/1/"), 404)


def test_unknown_parameters_are_refused(client, data_2010):
    assert "pks" in json_error(client.get("/api/Station/", {"pks": "4"}), 400)
    assert "limit" in json_error(client.get("/api/Station/4/", {"limit": "1"}), 400)


# --- tsdata ----------------------------------------------------------------------------


TEN_MINUTES = dt.timedelta(minutes=10)


def test_tsdata_is_the_records_as_text(client, data_2010):
    series = m.Timeseries.objects.get(pk=1)
    start = dt.datetime(2010, 5, 1, tzinfo=dt.UTC)
    m.Record.objects.bulk_create(
        m.Record(timeseries=series, timestamp=start + k * TEN_MINUTES, value=v, flags=f)
        for k, (v, f) in enumerate([(12.5, ""), (None, "MISS"), (-0.25, "RANGE HIGH")])
    )
    response = client.get("/api/tsdata/1/")
    assert response.status_code == 200 and response.streaming
    text = body(response).decode()
    assert text == body(client.get("/api/hcore/timeseries/1/records/")).decode()
    lines = text.splitlines()
    # Dates in the series' time zone (UTC+2 minutes in the fixture).
    assert lines[:3] == ["2010-05-01 00:02,12.5,", "2010-05-01 00:12,,MISS",
                         "2010-05-01 00:22,-0.25,RANGE HIGH"]  # fmt: skip
    assert lines[3].startswith("# end count=3 ")
    assert len(lines) == 4


def test_tsdata_of_a_series_without_records(client, data_2010):
    lines = body(client.get("/api/tsdata/1/")).decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("# end count=0 ")


# --- the same rules as today's API -------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/Station/", "/api/Station/4/", "/api/tsdata/1/"])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_read_only(client, data_2010, url, method):
    response = getattr(client, method)(url, data="{}", content_type="application/json")
    assert "read-only" in json_error(response, 405)
    assert response["Allow"] == "GET, HEAD"
    assert m.Station.objects.filter(pk=4).exists()


@pytest.mark.parametrize("url", ["/api/Station/", "/api/Station/4/", "/api/tsdata/1/"])
def test_private_instance_needs_credentials(client, data_2010, settings, url):
    settings.API_AUTH = "token"
    settings.API_TOKENS = ["s3cret-token-value"]
    assert json_error(client.get(url), 401)
    assert json_error(client.get(url, HTTP_AUTHORIZATION="Token wrong"), 401)
    # A private instance says nothing of what exists: an unknown id is a 401 too.
    assert json_error(client.get("/api/Station/999999/"), 401)
    assert client.get(url, HTTP_AUTHORIZATION="Token s3cret-token-value").status_code == 200


def test_no_user_data(client, data_2010):
    user = get_user_model().objects.create_user(**USER)
    m.UserProfile.objects.create(user=user, fname="Secretia", lname="Privatopoulou")
    station = m.Station.objects.get(pk=4)
    station.creator = user
    station.save()
    station.maintainers.add(user)
    for url in ["/api/Station/", "/api/Station/4/", "/api/Gpoint/4/", "/api/Gentity/"]:
        text = body(client.get(url)).decode()
        for private in ["creator", "maintainers", USER["username"], USER["email"], "Secretia"]:
            assert private not in text, (url, private)
    (served,) = json.loads(body(client.get("/api/Station/4/")))
    assert set(served["fields"]) == {"owner", "type", "is_active", "is_automatic",
                                     "start_date", "end_date"}  # fmt: skip
    for name in ["UserProfile", "User", "Group", "Session", "Database", "Record"]:
        assert json_error(client.get(f"/api/{name}/"), 404)


# --- the routes: the clash rule --------------------------------------------------------


def test_the_map_names_exactly_the_served_models():
    assert sorted(LEGACY_MODELS.values()) == sorted(
        model._meta.label_lower for model in served_models()
    )
    for name in LEGACY_MODELS:
        assert legacy_model(name)._meta.label_lower == LEGACY_MODELS[name]
        assert legacy_model(name).__name__ == name  # the 2010 name is the class name


def test_no_legacy_name_equals_an_app_label():
    app_labels = [config.label for config in apps.get_app_configs()]
    names = {name.lower() for name in [*LEGACY_MODELS, TSDATA]}
    assert not names & {label.lower() for label in app_labels}
    assert clashes(app_labels) == []
    assert check_legacy_names() == []
    # ... and the rule would see one.
    assert clashes(["auth", "station", "TSDATA"]) == ["Station", "tsdata"]


def test_check_reports_a_clash(monkeypatch):
    monkeypatch.setitem(LEGACY_MODELS, "Hcore", "hcore.station")
    (error,) = check_legacy_names()
    assert error.id == "api.E001" and "'Hcore'" in error.msg


def test_todays_routes_are_unchanged(client, data_2010):
    assert client.get("/api/hcore/station/").status_code == 200
    assert client.get("/api/hcore/station/keys/").status_code == 200
    assert client.get("/api/hcore/timeseries/1/records/").status_code == 200
    assert json_error(client.get("/api/hcore/nosuchmodel/"), 404)
