"""The read-only web-service API (``api/``), as a client sees it.

Most tests use Django's test client on the test database; the round trip through
``loaddata`` and the streaming go through a real second instance over HTTP.
"""

import base64
import datetime as dt
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import call_command

from api import dumps
from hcore import models as m
from protocol.schema import (
    describe_model,
    fingerprint,
    served_fields,
    served_m2m_fields,
    served_models,
)
from tests.api_helpers import (
    PROFILE,
    USER,
    create_sample_data,
    load_order,
    parse_dump,
)

REFERENCE = Path(__file__).parent / "fixtures" / "enhydris-2010-dbsync-testdata.json"
SERVER_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
NOT_SERVED_FIELDS = {"last_modified", "original_id", "original_db", "creator", "maintainers"}
OLD = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


def body(response):
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def get_dump(client, label, **params):
    response = client.get(f"/api/{label.replace('.', '/')}/", params)
    assert response.status_code == 200, body(response)
    return parse_dump(body(response))


def pks_of(objects):
    return [obj["pk"] for obj in objects]


def assert_json_error(response, status, *words):
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    error = json.loads(body(response))["error"]
    for word in words:
        assert word in error, error
    return error


def make_event_types(count, descr="Event type"):
    return m.EventType.objects.bulk_create(m.EventType(descr=f"{descr} {i}") for i in range(count))


@pytest.fixture
def sample(db):
    return create_sample_data()


# --- The manifest ----------------------------------------------------------------


@pytest.mark.django_db
def test_manifest_lists_every_served_model(client, sample):
    before = dt.datetime.now(dt.UTC)
    response = client.get("/api/")
    assert response.status_code == 200
    manifest = response.json()
    assert manifest["version"] == 1
    assert manifest["apps"] == ["hcore"]
    assert SERVER_TIME.match(manifest["server_time"])
    server_time = dt.datetime.fromisoformat(manifest["server_time"])
    assert before <= server_time <= dt.datetime.now(dt.UTC)
    assert response["X-Server-Time"] == manifest["server_time"]

    by_label = {entry["model"]: entry for entry in manifest["models"]}
    assert list(by_label) == [model._meta.label_lower for model in served_models()]
    assert "hcore.userprofile" not in by_label
    assert len(by_label) == 26
    for model in served_models():
        entry = by_label[model._meta.label_lower]
        opts = model._meta
        assert entry["url"] == f"/api/{opts.app_label}/{opts.model_name}/"
        assert entry["keys_url"] == f"/api/{opts.app_label}/{opts.model_name}/keys/"
        assert entry["count"] == model._base_manager.count()
        assert entry["fingerprint"] == fingerprint(model)
        assert entry["parents"] == describe_model(model)["parents"]
    assert by_label["hcore.station"]["parents"] == ["hcore.gpoint", "hcore.gentity"]
    assert by_label["hcore.station"]["count"] == 2
    assert by_label["hcore.eventtype"]["parents"] == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/api/",
        "/api/hcore/station/",
        "/api/hcore/station/keys/",
        "/api/hcore/station/?limit=0",
        "/api/auth/user/",
        "/api/no/such/url/",
    ],
)
def test_every_response_has_the_server_time(client, url):
    response = client.get(url)
    assert SERVER_TIME.match(response["X-Server-Time"])


# --- Dumps: exactly what dumpdata writes --------------------------------------------


def dumpdata(*labels):
    out = io.StringIO()
    call_command("dumpdata", *labels, format="json", stdout=out)
    return json.loads(out.getvalue())


def served_view(obj, model):
    """Django's object restricted to the served fields (in their order), m2m sorted."""
    names = [f.name for f in served_fields(model)]
    m2m_names = [f.name for f in served_m2m_fields(model)]
    fields = {name: obj["fields"][name] for name in names}
    fields.update((name, sorted(obj["fields"][name])) for name in m2m_names)
    return {"model": obj["model"], "pk": obj["pk"], "fields": fields}


@pytest.mark.django_db
@pytest.mark.parametrize("chunk_size", [2_000, 2])
def test_dump_equals_djangos_dumpdata(client, sample, monkeypatch, chunk_size):
    monkeypatch.setattr(dumps, "CHUNK_SIZE", chunk_size)  # 2: many chunks, links across
    django_dump = dumpdata("hcore")
    for model in served_models():
        label = model._meta.label_lower
        expected = [served_view(obj, model) for obj in django_dump if obj["model"] == label]
        expected.sort(key=lambda obj: obj["pk"])
        served = get_dump(client, label)
        assert expected, f"the sample data has no {label}"
        assert served == expected, label
        for obj in served:  # the order of the fields too, as Django writes them
            assert list(obj) == ["model", "pk", "fields"]
            assert list(obj["fields"]) == list(expected[0]["fields"])


@pytest.mark.django_db
def test_dump_values_are_encoded_as_django_encodes_them(client, sample):
    (event,) = get_dump(client, "hcore.gentityevent")
    assert event["fields"]["date"] == "2009-03-04T10:11:12.345Z"
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$", event["fields"]["last_modified"]
    )
    files = get_dump(client, "hcore.gentityfile")
    assert [f["fields"]["content"] for f in files] == ["gentityfile/observatory.png", ""]
    assert files[0]["fields"]["date"] == "2001-05-06"
    station = get_dump(client, "hcore.station")[0]
    assert station["fields"]["owner"] == sample["station"].owner_id
    uom = get_dump(client, "hcore.unitofmeasurement", pks=str(sample["uom"].pk))[0]
    assert uom["fields"]["variables"] == sorted(v.pk for v in sample["variables"])
    # Non-ASCII text travels as UTF-8, as dumpdata writes it.
    response = client.get("/api/hcore/person/")
    assert "Παπαδόπουλος".encode() in body(response)


@pytest.mark.django_db
def test_dump_body_layout(client):
    make_event_types(3)
    response = client.get("/api/hcore/eventtype/")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/json"
    text = body(response).decode()
    lines = text.split("\n")
    assert lines[0] == "["
    assert lines[1].endswith("},") and lines[2].endswith("},") and lines[3].endswith("}")
    assert lines[4:] == ["]", ""]
    assert (
        text
        == "[\n"
        + ",\n".join(json.dumps(o, ensure_ascii=False) for o in json.loads(text))
        + "\n]\n"
    )


@pytest.mark.django_db
def test_empty_dump_layout(client):
    response = client.get("/api/hcore/eventtype/")
    assert body(response) == b"[\n]\n"
    response = client.get("/api/hcore/eventtype/keys/")
    assert json.loads(body(response)) == []


@pytest.mark.django_db
def test_dump_leaves_out_users_and_bookkeeping(client, sample):
    (station, _) = get_dump(client, "hcore.station")
    assert not NOT_SERVED_FIELDS & set(station["fields"])  # last_modified is Gentity's
    for obj in get_dump(client, "hcore.eventtype") + get_dump(client, "hcore.gentity"):
        assert "last_modified" in obj["fields"]
        assert not {"original_id", "original_db"} & set(obj["fields"])


@pytest.mark.django_db
def test_multi_table_children_carry_their_own_fields(client, sample):
    station = sample["station"]
    (served,) = [obj for obj in get_dump(client, "hcore.station") if obj["pk"] == station.pk]
    assert set(served["fields"]) == {
        "owner", "type", "is_active", "is_automatic", "start_date", "end_date",
    }  # fmt: skip
    (as_gpoint,) = get_dump(client, "hcore.gpoint", pks=str(station.pk))
    assert as_gpoint["fields"]["abscissa"] == 23.718
    assert "name" not in as_gpoint["fields"]
    (as_gentity,) = get_dump(client, "hcore.gentity", pks=str(station.pk))
    assert as_gentity["fields"]["name"] == "Athens Observatory"
    assert as_gentity["fields"]["water_basin"] == station.water_basin_id


# --- Query parameters ----------------------------------------------------------------


@pytest.mark.django_db
def test_modified_after(client):
    old, new = make_event_types(2)
    m.EventType.objects.filter(pk=old.pk).update(last_modified=OLD)
    m.EventType.objects.filter(pk=new.pk).update(last_modified=OLD + dt.timedelta(days=1))
    for value in (
        "2001-01-01T12:00:00+00:00",
        "2001-01-01T12:00:00Z",
        "2001-01-01T12:00:00",  # naive: UTC
        "2001-01-01T14:00:00+02:00",
        "2001-01-01T12:00:00.000001+00:00",
        "2001-01-01T12:00:00 00:00",  # an unescaped "+" arrives as a space
    ):
        assert pks_of(get_dump(client, "hcore.eventtype", modified_after=value)) == [new.pk]
    assert pks_of(get_dump(client, "hcore.eventtype", modified_after="2000-12-31")) == [
        old.pk,
        new.pk,
    ]
    # Strictly after: an object modified at the very instant is not repeated.
    exact = (OLD + dt.timedelta(days=1)).isoformat()
    assert get_dump(client, "hcore.eventtype", modified_after=exact) == []


@pytest.mark.django_db
def test_modified_after_of_a_child_is_its_roots(client, sample):
    station = sample["station"]
    m.Gentity.objects.update(last_modified=OLD)
    assert get_dump(client, "hcore.station", modified_after="2001-06-01") == []
    station.refresh_from_db()
    station.is_automatic = True
    station.save()
    assert pks_of(get_dump(client, "hcore.station", modified_after="2001-06-01")) == [station.pk]
    assert pks_of(get_dump(client, "hcore.gpoint", modified_after="2001-06-01")) == [station.pk]


@pytest.mark.django_db
def test_pks(client):
    objs = make_event_types(5)
    wanted = [objs[3].pk, objs[0].pk, objs[3].pk, 999_999]
    served = get_dump(client, "hcore.eventtype", pks=",".join(map(str, wanted)))
    assert pks_of(served) == [objs[0].pk, objs[3].pk]


@pytest.mark.django_db
def test_pks_at_most_the_maximum(client, settings):
    settings.API_MAX_KEYS_PER_REQUEST = 5
    objs = make_event_types(6)
    keys = [str(obj.pk) for obj in objs]
    assert len(get_dump(client, "hcore.eventtype", pks=",".join(keys[:5]))) == 5
    response = client.get("/api/hcore/eventtype/", {"pks": ",".join(keys)})
    assert_json_error(response, 400, "pks", "at most 5")


@pytest.mark.django_db
@pytest.mark.parametrize("chunk_size", [2_000, 2])
def test_after_and_limit_page_through_everything(client, monkeypatch, chunk_size):
    monkeypatch.setattr(dumps, "CHUNK_SIZE", chunk_size)
    all_pks = [obj.pk for obj in make_event_types(7)]
    pages, after = [], 0
    while True:
        page = get_dump(client, "hcore.eventtype", after=after, limit=3)
        pages.append(pks_of(page))
        if len(page) < 3:
            break
        after = page[-1]["pk"]
    assert pages == [all_pks[0:3], all_pks[3:6], all_pks[6:7]]
    assert pks_of(get_dump(client, "hcore.eventtype", after=all_pks[4])) == all_pks[5:]
    assert pks_of(get_dump(client, "hcore.eventtype", limit=2)) == all_pks[:2]


@pytest.mark.django_db
def test_parameters_combine(client):
    objs = make_event_types(6)
    m.EventType.objects.filter(pk__in=[o.pk for o in objs[:2]]).update(last_modified=OLD)
    pks = ",".join(str(o.pk) for o in objs[1:])  # objs[1] is too old
    served = get_dump(
        client, "hcore.eventtype", pks=pks, modified_after="2002-01-01", after=objs[2].pk, limit=2
    )
    assert pks_of(served) == [objs[3].pk, objs[4].pk]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params, words",
    [
        ({"pks": "1,x"}, ["pks", "'x'"]),
        ({"pks": "1.5"}, ["pks"]),
        ({"pks": ""}, ["pks"]),
        ({"pks": "1,,2"}, ["pks"]),
        ({"pks": "99999999999999999999"}, ["pks"]),
        ({"pks": "1) OR 1=1 --"}, ["pks"]),
        ({"pks": ",".join(["1"] * 1001)}, ["pks", "at most 1000"]),
        ({"after": "abc"}, ["after"]),
        ({"after": "1; DROP TABLE hcore_eventtype"}, ["after"]),
        ({"after": "1" * 5000}, ["after"]),
        ({"limit": "0"}, ["limit", "from 1 to 100000"]),
        ({"limit": "-1"}, ["limit"]),
        ({"limit": "100001"}, ["limit"]),
        ({"limit": "10" * 20}, ["limit"]),
        ({"limit": "ten"}, ["limit"]),
        ({"modified_after": "yesterday"}, ["modified_after", "ISO 8601"]),
        ({"modified_after": "2001-02-30T00:00:00"}, ["modified_after"]),
        ({"modified_after": "2001-01-01' OR '1'='1"}, ["modified_after"]),
        ({"modified_after": ""}, ["modified_after"]),
        ({"format": "xml"}, ["'format'"]),
        ({"pk": "1"}, ["'pk'"]),
        ({"limit": ["1", "2"]}, ["limit", "more than once"]),
    ],
)
def test_bad_parameters_are_refused(client, params, words):
    make_event_types(2)
    response = client.get("/api/hcore/eventtype/", params)
    assert_json_error(response, 400, *words)
    assert m.EventType.objects.count() == 2


@pytest.mark.django_db
def test_keys_and_manifest_take_no_parameters(client):
    assert_json_error(client.get("/api/hcore/station/keys/", {"limit": 1}), 400, "'limit'")
    assert_json_error(client.get("/api/", {"x": 1}), 400, "'x'")


# --- Keys ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("chunk_size", [20_000, 3])
def test_keys_lists_every_pk_ascending(client, sample, monkeypatch, chunk_size):
    monkeypatch.setattr(dumps, "KEYS_CHUNK_SIZE", chunk_size)
    make_event_types(10)
    for model in served_models():
        response = client.get(f"/api/{model._meta.label_lower.replace('.', '/')}/keys/")
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        expected = list(model._base_manager.order_by("pk").values_list("pk", flat=True))
        assert json.loads(body(response)) == expected


# --- Errors -------------------------------------------------------------------------


PRIVATE_PATHS = [
    "hcore/userprofile",
    "auth/user",
    "auth/group",
    "auth/permission",
    "sessions/session",
    "admin/logentry",
    "contenttypes/contenttype",
    "dbsync/database",
    "django_celery_beat/periodictask",
    "hcore/unitofmeasurement_variables",  # the auto-created through table
    "hcore/station_maintainers",
    "hcore/nosuchmodel",
    "nosuchapp/station",
]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PRIVATE_PATHS)
@pytest.mark.parametrize("suffix", ["", "keys/", "?pks=1", "?limit=1&after=0"])
def test_unserved_models_are_404(client, sample, path, suffix):
    response = client.get(f"/api/{path}/{suffix}")
    assert_json_error(response, 404, "No served model")
    assert USER["email"].encode() not in body(response)


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/hcore/", "/api/hcore/station/keys/x/", "/api/a/b/c/d/"])
def test_unknown_urls_are_json_404(client, url):
    assert_json_error(client.get(url), 404, "No such API URL")


@pytest.mark.django_db
def test_missing_slash_redirects(client):
    response = client.get("/api/hcore/station")
    assert response.status_code == 301
    assert response["Location"] == "/api/hcore/station/"


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("url", ["/api/", "/api/hcore/station/", "/api/hcore/station/keys/"])
def test_only_get_and_head(client, method, url):
    response = getattr(client, method)(url, data="{}", content_type="application/json")
    assert_json_error(response, 405, method.upper())
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.django_db
def test_head(client, sample):
    for url in ["/api/", "/api/hcore/station/", "/api/hcore/station/keys/"]:
        response = client.head(url)
        assert response.status_code == 200
        assert response["Content-Type"] == "application/json"
        assert body(response) == b""
        assert SERVER_TIME.match(response["X-Server-Time"])


@pytest.mark.django_db
def test_a_crash_is_a_json_500_and_logged(client, monkeypatch, caplog):
    def crash():
        raise RuntimeError("secret internals")

    monkeypatch.setattr("api.views.served_models", crash)
    response = client.get("/api/")
    error = assert_json_error(response, 500, "Internal server error")
    assert "secret" not in error
    assert "secret internals" in caplog.text
    assert any(r.name == "api.views" and r.exc_info for r in caplog.records)


@pytest.mark.django_db
def test_a_crash_while_streaming_leaves_the_dump_visibly_truncated(client, monkeypatch, caplog):
    monkeypatch.setattr(dumps, "CHUNK_SIZE", 2)
    make_event_types(5)
    calls = []
    encode_rows = dumps.ModelDumper.encode_rows

    def failing(self, rows):
        calls.append(rows)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return encode_rows(self, rows)

    monkeypatch.setattr(dumps.ModelDumper, "encode_rows", failing)
    response = client.get("/api/hcore/eventtype/")
    received = []
    with pytest.raises(RuntimeError):
        for piece in response.streaming_content:
            received.append(piece)
    assert not b"".join(received).endswith(b"]\n")
    assert "Dump of hcore.eventtype failed after 2 objects" in caplog.text


# --- Personal data ------------------------------------------------------------------


@pytest.mark.django_db
def test_no_user_data_in_any_response(client, sample):
    user = get_user_model().objects.get(username=USER["username"])
    secrets = [USER["username"], USER["email"], USER["password"], user.password]
    secrets += list(PROFILE.values())
    secrets += ['"creator"', '"maintainers"']
    responses = [client.get("/api/")]
    for entry in responses[0].json()["models"]:
        responses.append(client.get(entry["url"]))
        responses.append(client.get(entry["keys_url"]))
    assert len(responses) == 53
    for response in responses:
        assert response.status_code == 200
        text = body(response).decode()
        for secret in secrets:
            assert secret not in text


# --- last_modified ------------------------------------------------------------------


@pytest.mark.django_db
def test_saving_updates_last_modified(client, sample):
    m.Gentity.objects.update(last_modified=OLD)
    m.EventType.objects.update(last_modified=OLD)
    event_type = m.EventType.objects.get()
    event_type.descr = "Calibration"
    event_type.save()
    event_type.refresh_from_db()
    assert event_type.last_modified > OLD
    served = get_dump(client, "hcore.eventtype", modified_after="2001-06-01")
    assert [obj["fields"]["descr"] for obj in served] == ["Calibration"]

    station = m.Station.objects.get(pk=sample["station"].pk)
    station.name = "Renamed"  # a field of the root, saved through the child
    station.save()
    assert m.Gentity.objects.get(pk=station.pk).last_modified > OLD
    assert pks_of(get_dump(client, "hcore.gentity", modified_after="2001-06-01")) == [station.pk]


def add_forward(uom, variable):
    uom.variables.add(variable)


def remove_forward(uom, variable):
    uom.variables.remove(variable)


def clear_forward(uom, variable):
    uom.variables.clear()


def set_forward(uom, variable):
    uom.variables.set([variable])


def add_reverse(uom, variable):
    variable.unitofmeasurement_set.add(uom)


def remove_reverse(uom, variable):
    variable.unitofmeasurement_set.remove(uom)


def clear_reverse(uom, variable):
    variable.unitofmeasurement_set.clear()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, linked",
    [
        (add_forward, False),
        (remove_forward, True),
        (clear_forward, True),
        (set_forward, True),
        (add_reverse, False),
        (remove_reverse, True),
        (clear_reverse, True),
    ],
)
def test_m2m_changes_update_last_modified(client, change, linked):
    uom = m.UnitOfMeasurement.objects.create(descr="millimetres", symbol="mm")
    variable = m.Variable.objects.create(descr="Rainfall")
    other = m.Variable.objects.create(descr="Snow depth")
    if linked:
        uom.variables.add(variable, other)
    m.UnitOfMeasurement.objects.update(last_modified=OLD)
    change(uom, variable)
    uom.refresh_from_db()
    assert uom.last_modified > OLD
    served = get_dump(client, "hcore.unitofmeasurement", modified_after="2001-06-01")
    assert pks_of(served) == [uom.pk]
    assert served[0]["fields"]["variables"] == sorted(uom.variables.values_list("pk", flat=True))


# --- Authentication -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/", "/api/hcore/station/", "/api/hcore/station/keys/"])
def test_token_auth(client, settings, url, caplog):
    settings.API_AUTH = "token"
    settings.API_TOKENS = ["first-token", "s3cret-token-value"]
    for header in ["Token s3cret-token-value", "Bearer s3cret-token-value", "token first-token"]:
        assert client.get(url, HTTP_AUTHORIZATION=header).status_code == 200
    for header in [None, "", "Token", "Token wrong-token-value", "Token s3cret-token-valu",
                   "Basic czNjcmV0LXRva2VuLXZhbHVl", "s3cret-token-value"]:  # fmt: skip
        extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
        response = client.get(url, **extra)
        assert_json_error(response, 401)
        assert response["WWW-Authenticate"].startswith("Token ")
    assert "wrong-token-value" not in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.django_db
def test_token_auth_without_tokens_refuses_everyone(client, settings):
    settings.API_AUTH = "token"
    settings.API_TOKENS = []
    assert client.get("/api/", HTTP_AUTHORIZATION="Token ").status_code == 401
    assert client.get("/api/", HTTP_AUTHORIZATION="Token x").status_code == 401


def basic(username, password):
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/", "/api/hcore/station/", "/api/hcore/station/keys/"])
def test_basic_auth(client, settings, url, caplog):
    settings.API_AUTH = "basic"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed
    users = get_user_model().objects
    users.create_user("reader", password="pass:with:colons")
    users.create_user("retired", password="old-password", is_active=False)
    ok = client.get(url, HTTP_AUTHORIZATION=basic("reader", "pass:with:colons"))
    assert ok.status_code == 200
    for header in [
        None,
        basic("reader", "wrong-password"),
        basic("retired", "old-password"),
        basic("nobody", "pass:with:colons"),
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Token pass:with:colons",
    ]:
        extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
        response = client.get(url, **extra)
        assert_json_error(response, 401)
        assert response["WWW-Authenticate"].startswith("Basic ")
    assert "wrong-password" not in caplog.text and "old-password" not in caplog.text


@pytest.mark.django_db
def test_unknown_auth_mode_fails_closed(client, settings):
    settings.API_AUTH = "tokens"
    assert_json_error(client.get("/api/"), 500, "misconfigured")


# --- A real instance over HTTP -------------------------------------------------------


def normalized_dumpdata(instance, labels):
    objects = json.loads(instance.manage("dumpdata", "hcore").stdout)
    result = set()
    for obj in objects:
        if obj["model"] not in labels:
            continue
        fields = {
            name: sorted(value) if isinstance(value, list) else value
            for name, value in obj["fields"].items()
            if name not in NOT_SERVED_FIELDS
        }
        result.add(json.dumps({"model": obj["model"], "pk": obj["pk"], "fields": fields}))
    return result


def test_dumps_load_with_loaddata_into_an_empty_instance(make_instance, tmp_path):
    source = make_instance()
    source.manage("loaddata", "--ignorenonexistent", str(REFERENCE))
    source.shell("from tests.api_helpers import create_sample_data; create_sample_data()")
    source.start()
    manifest = requests.get(f"{source.url}/api/", timeout=30).json()
    entries = {entry["model"]: entry for entry in manifest["models"]}
    files, total = [], 0
    for number, label in enumerate(load_order(entries)):
        response = requests.get(source.url + entries[label]["url"], timeout=60)
        assert response.status_code == 200
        count = len(parse_dump(response.content))
        assert count == entries[label]["count"] > 0, label
        total += count
        # The response as it came, byte for byte, is the fixture.
        files.append(tmp_path / f"{number:02d}-{label.replace('.', '-')}.json")
        files[-1].write_bytes(response.content)

    target = make_instance(hostname="aggregator.example.org")
    result = target.manage("loaddata", *map(str, files))
    assert f"Installed {total} object(s) from {len(files)} fixture(s)" in result.stdout

    labels = set(entries)
    source_data = normalized_dumpdata(source, labels)
    assert len(source_data) == total
    assert normalized_dumpdata(target, labels) == source_data
    links = "SELECT count(*) FROM hcore_unitofmeasurement_variables"
    assert target.sql(links) == source.sql(links) != [(0,)]


def test_dump_streams_over_http(make_instance):
    instance = make_instance()
    instance.sql(
        "INSERT INTO hcore_eventtype (descr, descr_alt, last_modified) "
        "SELECT 'Event type ' || g, '', now() FROM generate_series(1, 5001) AS g"
    )
    instance.start()
    url = f"{instance.url}/api/hcore/eventtype/"
    with requests.get(url, stream=True, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.headers
        assert SERVER_TIME.match(response.headers["X-Server-Time"])
        lines = response.iter_lines(decode_unicode=True)
        assert next(lines) == "["
        pks = []
        for line in lines:
            if line == "]":
                break
            pks.append(json.loads(line.removesuffix(","))["pk"])
        assert list(lines) == []
    assert pks == sorted(pks) and len(set(pks)) == 5001

    response = requests.get(f"{url}keys/", timeout=60)
    assert response.json() == pks
    page = requests.get(url, params={"after": pks[1999], "limit": 3}, timeout=60)
    assert pks_of(parse_dump(page.content)) == pks[2000:2003]
    assert requests.get(url, params={"limit": 0}, timeout=60).status_code == 400
    assert requests.post(url, timeout=60).status_code == 405
    assert requests.get(f"{instance.url}/api/auth/user/", timeout=60).status_code == 404


def test_private_instance_over_http(make_instance):
    instance = make_instance(API_AUTH="token", API_TOKENS="alpha,beta")
    instance.start()
    url = f"{instance.url}/api/hcore/station/"
    refused = requests.get(url, timeout=30)
    assert refused.status_code == 401 and "error" in refused.json()
    assert requests.get(url, headers={"Authorization": "Token beta"}, timeout=30).ok


# --- Memory and speed (slow) ----------------------------------------------------------


def proc_status(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(value.split()[0])
        for key, value in (line.split(":", 1) for line in status.splitlines())
        if key in {"VmRSS", "VmHWM"}
    }


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def gunicorn_workers(master_pid):
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == master_pid:  # the parent pid
            workers.append(int(stat.parent.name))
    return workers


@pytest.mark.slow
def test_streaming_200k_objects_keeps_memory_flat(make_instance):
    count = 200_000
    instance = make_instance()
    instance.sql(
        "INSERT INTO hcore_eventtype (descr, descr_alt, last_modified) "
        "SELECT 'Event type number ' || g, 'Τύπος συμβάντος ' || g, now() "
        "FROM generate_series(1, %s) AS g",
        (count,),
    )
    instance.start(workers=1)
    url = f"{instance.url}/api/hcore/eventtype/"
    requests.get(url, params={"limit": 10}, timeout=60).raise_for_status()  # warm up
    (worker,) = gunicorn_workers(instance.process.pid)
    idle = proc_status(worker)

    samples, done = [], threading.Event()

    def sample_rss():
        while not done.is_set():
            samples.append(proc_status(worker)["VmRSS"])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    cpu_before = cpu_seconds(worker)
    started = time.monotonic()
    received = lines = 0
    with requests.get(url, stream=True, timeout=300) as response:
        response.raise_for_status()
        tail = b""
        for piece in response.iter_content(1 << 16):
            received += len(piece)
            lines += piece.count(b"\n")
            tail = (tail + piece)[-3:]
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(worker) - cpu_before
    done.set()
    sampler.join()
    after = proc_status(worker)

    started = time.monotonic()
    keys = requests.get(f"{url}keys/", timeout=300).json()
    keys_elapsed = time.monotonic() - started

    assert tail == b"\n]\n" and lines == count + 2 and len(keys) == count
    rate = count / elapsed
    growth_kb = after["VmHWM"] - idle["VmHWM"]
    report = (
        f"\nstreamed {count} objects ({received / 1e6:.1f} MB) in {elapsed:.2f} s: "
        f"{rate:,.0f} objects/s; the worker used {cpu:.2f} s of CPU: "
        f"{count / cpu:,.0f} objects per CPU second; keys in {keys_elapsed:.2f} s\n"
        f"worker RSS idle {idle['VmRSS'] / 1024:.1f} MiB (peak so far "
        f"{idle['VmHWM'] / 1024:.1f}), while streaming max {max(samples) / 1024:.1f} MiB, "
        f"after {after['VmRSS'] / 1024:.1f} MiB, peak {after['VmHWM'] / 1024:.1f} MiB "
        f"(+{growth_kb / 1024:.1f} MiB)\n"
    )
    print(report)
    Path(instance.var_dir / "streaming-report.txt").write_text(report)
    # The body is ~30 MB; a dump held in memory would need several times that.
    assert growth_kb < 25 * 1024
    # The machine is shared: judge the server by its CPU time, the wall clock loosely.
    assert count / cpu > 40_000
    assert rate > 10_000


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    ["parts=²", "parts=0", "parts=257", "parts=-1", "parts=1e3", "from=abc", "from=9&to=1"],
)
def test_odd_checksum_ranges_are_a_400_naming_the_parameter(client, sample, query):
    """Anything but ASCII digits in range is refused with a JSON 400 (``'²'.isdigit()``
    is true in Python, and ``int('²')`` raised: a 500)."""
    response = client.get(f"/api/hcore/station/checksums/?{query}")
    name = query.split("=")[0]
    assert_json_error(response, 400, "from" if name == "to" else name)


# --- change capture (api.changes) ------------------------------------------------------


def capture_of(client):
    manifest = client.get("/api/").json()
    assert manifest["protocol"] == 3
    return manifest, manifest["capture"]


@pytest.mark.django_db(transaction=True)
def test_the_manifest_gives_a_snapshot_cursor_and_changed_since_serves_what_came_after(client):
    old = make_event_types(1)[0]
    manifest, capture = capture_of(client)
    assert capture["guarantee"] == "snapshot"
    assert set(capture["identity"]) == {
        "system_identifier",
        "timeline",
        "database",
        "database_oid",
    }
    entry = {e["model"]: e for e in manifest["models"]}["hcore.eventtype"]
    assert entry["count"] == 1 and entry["changed"] < capture["cursor"]
    cursor = capture["cursor"]
    assert get_dump(client, "hcore.eventtype", changed_since=cursor) == []
    # raw SQL, bypassing save(): marked by the database all the same
    new = make_event_types(1, descr="After")[0]
    from django.db import connection

    with connection.cursor() as cursor_:
        cursor_.execute("UPDATE hcore_eventtype SET descr = 'Raw' WHERE id = %s", [old.pk])
    assert pks_of(get_dump(client, "hcore.eventtype", changed_since=cursor)) == [old.pk, new.pk]
    manifest, later = capture_of(client)
    entry = {e["model"]: e for e in manifest["models"]}["hcore.eventtype"]
    assert entry["count"] == 2 and entry["changed"] >= cursor and later["cursor"] > cursor
    assert entry["deleted"] < cursor
    # deletions: tombstones, listed by deleted_since
    m.EventType.objects.filter(pk=old.pk).delete()
    response = client.get("/api/hcore/eventtype/keys/", {"deleted_since": cursor})
    assert json.loads(body(response)) == [old.pk]
    assert json.loads(body(client.get("/api/hcore/eventtype/keys/"))) == [new.pk]


@pytest.mark.django_db(transaction=True)
def test_the_hashes_flag_what_changed_since_a_capture_cursor_update_and_deletion_included(
    client,
):
    """--verify's pending rows by the capture's markers: an update() (last_modified
    untouched) is flagged, a deletion is listed with no hash; before the cursor, neither."""
    kept, renamed, gone = make_event_types(3)
    cursor = capture_of(client)[1]["cursor"]
    keys = f"{kept.pk},{renamed.pk},{gone.pk}"
    url = "/api/hcore/eventtype/hashes/"
    before = client.get(url, {"pks": keys, "changed_since": cursor}).json()
    assert [len(row) for row in before] == [2, 2, 2]  # nothing pending yet
    latest = max(e.last_modified for e in m.EventType.objects.all()).isoformat()
    m.EventType.objects.filter(pk=renamed.pk).update(descr="Renamed by update()")
    m.EventType.objects.filter(pk=gone.pk).delete()

    rows = client.get(url, {"pks": keys, "changed_since": cursor}).json()
    assert rows[0] == before[0]
    assert rows[1][0] == renamed.pk and rows[1][1] != before[1][1] and rows[1][2] == 1
    assert rows[2] == [gone.pk, None, 1]
    assert (
        client.get(url, {"from": kept.pk, "to": gone.pk, "changed_since": cursor}).json() == rows
    )
    # On the clock the update() is not seen (what changed_since is for), nor the deletion.
    assert [len(row) for row in client.get(url, {"pks": keys, "after": latest}).json()] == [2, 2]
    # From a later cursor, nothing is pending.
    later = capture_of(client)[1]["cursor"]
    assert [len(r) for r in client.get(url, {"pks": keys, "changed_since": later}).json()] == [
        2,
        2,
    ]
    assert_json_error(client.get(url, {"pks": keys, "changed_since": "-1"}), 400, "changed_since")
    # Several ranges a request (what --verify asks a protocol 3 remote), the same rows.
    ranges = f"{kept.pk}-{kept.pk},{renamed.pk}-{gone.pk}"
    assert client.get(url, {"ranges": ranges, "changed_since": cursor}).json() == rows
    assert client.get(url, {"ranges": f"{gone.pk}-{gone.pk}"}).json() == []
    for bad in ("1-", "5-3", "1-2-3", ",".join(["1-2"] * 65)):
        assert_json_error(client.get(url, {"ranges": bad}), 400, "ranges")
    assert_json_error(client.get(url, {"ranges": "1-2", "pks": "1"}), 400, "not several")


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["x", "-1", "1.5", "", "99999999999999999999"])
def test_bad_transaction_ids_are_400(client, value):
    assert_json_error(
        client.get("/api/hcore/eventtype/", {"changed_since": value}), 400, "changed_since"
    )
    assert_json_error(
        client.get("/api/hcore/eventtype/keys/", {"deleted_since": value}), 400, "deleted_since"
    )
