"""No stored value makes an endpoint or an admin page answer 500.

Hypothesis writes text of every kind that PostgreSQL can hold (newlines, CR, control
characters, quotes, markup, very long strings, right-to-left and astral text; not
NUL, which a text column cannot hold) into every CharField, TextField and FileField
of every model of ``hcore`` and ``dbsync`` (within its max_length), odd numbers
into the few others that a page reads as text (a time zone's offset, record
values), and real files under odd names; then every API endpoint and every admin
page of those models is requested with Django's test client (a superuser for the
admin): none may answer 5xx, and a JSON or CSV body must parse. Last, one sync
between two real instances of such objects, compared equal field by field.

The URLs come from tables (``API_URLS``, and every named URL of each ModelAdmin):
a new API endpoint is one line in ``API_URLS``, and a test fails until it has one.
"""

import csv
import io
import json
from pathlib import Path

import hypothesis
import pytest
from django.apps import apps
from django.contrib import admin
from django.db import IntegrityError, models, transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django_celery_beat.models import PeriodicTask
from htimeseries import HTimeseries
from hypothesis import HealthCheck, example, given, reject
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from api import urls as api_urls
from dbsync.engine.records import sync_records
from dbsync.engine.remote import RemoteClient
from dbsync.models import Database, SyncRun, TaskCount
from hcore import models as m
from hcore.media import media_type
from project import urls as project_urls
from protocol.legacy import legacy_model, served_legacy_names
from protocol.schema import served_models
from tests.api_helpers import create_sample_data
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_sync import register, sync

APPS = ("hcore", "dbsync")
NASTY = (
    "",
    " ",
    "\n",
    "\r\n",
    "\r",
    "line 1\nline 2\r\nline 3\rline 4",
    '"',
    "'",
    "\"'`<>&;,",
    "<script>alert('x')</script>",
    "</svg><svg onload=alert(1)>",
    "\x01\x07\x08\x0b\x0c\x1b[31m\x1f\x7f",
    "\t\v\f",
    "\u2028\u2029\x85",
    "\u202eRTL override\u202c",
    "עברית و مرحبا Ελληνικά",
    "😀🇬🇷\U0010ffff",
    "e\u0301\u0301\u0301",
    "\ufeff\ufffe\uffff",
    "%s %(x)s {0} {{ x }} {% now %}",
    "../../../etc/passwd",
    "=cmd|' /C calc'!A0",
    "x" * 10_000,
    "ß" * 300,
)
# Any character PostgreSQL's text can hold: not NUL, not a lone surrogate.
STORABLE = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
FILE_NAME_CHARACTERS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00/")


def stored_text(max_length=None):
    texts = st.one_of(st.sampled_from(NASTY), st.text(STORABLE, max_size=300))
    if max_length is None:
        return texts
    return texts.map(lambda value: value[:max_length])


def text_fields(model):
    """The text columns of ``model``'s own table (a parent's are its parent's)."""
    return [
        field
        for field in model._meta.local_fields
        if isinstance(field, models.CharField | models.TextField | models.FileField)
    ]


def text_models():
    return [
        model
        for label in APPS
        for model in apps.get_app_config(label).get_models()
        if text_fields(model)
    ]


def stored_values():
    """{model: {field name: text}} for every text field of every model."""
    return st.fixed_dictionaries(
        {
            model: st.fixed_dictionaries(
                {field.name: stored_text(field.max_length) for field in text_fields(model)}
            )
            for model in text_models()
        }
    )


# A stored value of any number: PostgreSQL keeps NaN and the infinities in a float column.
record_values = st.one_of(st.none(), st.floats(), st.sampled_from([float("nan"), float("inf")]))
utc_offsets = st.integers(-32768, 32767)  # a SmallIntegerField
file_names = st.one_of(
    st.sampled_from(['a"b.txt', "new\nline.txt", "cr\r.txt", "ε ψ.pdf", "semi;colon=1.txt"]),
    st.text(FILE_NAME_CHARACTERS, min_size=1, max_size=60),
).filter(lambda name: name not in {".", ".."} and len(name.encode()) < 200)


def nasty_values():
    """Every NASTY text in turn, field after field (an example that always runs)."""
    values, k = {}, 0
    for model in text_models():
        values[model] = {}
        for field in text_fields(model):
            values[model][field.name] = NASTY[k % len(NASTY)][: field.max_length]
            k += 1
    return values


def unique_names(name, n):
    """``n`` distinct names of at most a remote name's length, the first ``name`` itself."""
    room = Database._meta.get_field("name").max_length
    return [name, *(f"{name[: room - len(f' ({k})')]} ({k})" for k in range(2, n + 1))][:n]


def write(values, *, replicated_from=None):
    """Write ``values`` ({model: {field: text}}) into every object of each model. A remote's
    name is unique: each remote gets the text, made distinct, and is saved, so that its
    periodic tasks (dbsync.runs.schedules) are written with that name too."""
    for model, fields in values.items():
        changes = dict(fields)
        name = changes.pop("name", None) if model is Database else None
        model._base_manager.update(**changes)
        if name is not None:
            remotes = list(Database._base_manager.order_by("pk"))
            for remote, unique in zip(remotes, unique_names(name, len(remotes)), strict=True):
                remote.name = unique
                remote.save(update_fields=["name"])
    if replicated_from is not None:
        for model in apps.get_app_config("hcore").get_models():
            if "original_db" in {f.name for f in model._meta.local_fields}:
                for pk in model._base_manager.values_list("pk", flat=True):
                    model._base_manager.filter(pk=pk).update(
                        original_db=replicated_from, original_id=pk
                    )


def write_file(name, media_root):
    """A real file in storage under ``name``, and every GentityFile pointing at it."""
    stored = f"gentityfile/{name}"
    path = Path(media_root) / stored
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the contents of " + name.encode())
    m.GentityFile.objects.filter(pk=m.GentityFile.objects.order_by("pk")[0].pk).update(
        content=stored
    )


# --- the URLs ----------------------------------------------------------------------------


def series_pks():
    return list(m.Timeseries.objects.order_by("pk").values_list("pk", flat=True))


def file_pks():
    return list(m.GentityFile.objects.order_by("pk").values_list("pk", flat=True))


# Every named API URL, with the requests that read stored data through it.
API_URLS = {
    "manifest": lambda: [reverse("api:manifest")],
    "records-summary": lambda: [reverse("api:records-summary")],
    "records-batch": lambda: [
        reverse("api:records-batch") + "?series=" + ",".join(map(str, series_pks()))
    ],
    "records": lambda: [
        reverse("api:records", args=(pk,)) + query
        for pk in series_pks()
        for query in (
            "",
            "?start_date=2020-01-01 00:10&end_date=2020-01-02",
            "?fmt=hts",
            "?fmt=hts2",
            "?fmt=csv",
        )
    ],
    "file-listing": lambda: [reverse("api:file-listing")],
    "file-content": lambda: [reverse("api:file-content", args=(pk,)) for pk in file_pks()],
    "dump": lambda: [
        reverse("api:dump", args=(model._meta.app_label, model._meta.model_name))
        for model in served_models()
    ],
    "keys": lambda: [
        reverse("api:keys", args=(model._meta.app_label, model._meta.model_name))
        for model in served_models()
    ],
    "checksums": lambda: [
        reverse("api:checksums", args=(model._meta.app_label, model._meta.model_name)) + query
        for model in served_models()
        for query in ("", "?parts=3&from=1&to=9")
    ],
    "hashes": lambda: [
        reverse("api:hashes", args=(model._meta.app_label, model._meta.model_name))
        for model in served_models()
    ],
    "legacy-listing": lambda: [
        reverse("api:legacy-listing", args=(name,)) for name in served_legacy_names()
    ],
    "legacy-detail": lambda: [
        reverse("api:legacy-detail", args=(name, pk))
        for name in served_legacy_names()
        for pk in legacy_model(name).objects.order_by("pk").values_list("pk", flat=True)[:3]
    ],
    "legacy-tsdata": lambda: [reverse("api:legacy-tsdata", args=(pk,)) for pk in series_pks()],
    "not-found": lambda: [],  # reads no stored data
}


def api_request_urls():
    return [url for urls in API_URLS.values() for url in urls()]


def admin_request_urls():
    """Every named URL of every ModelAdmin of the apps, for one object of each model, and
    the pages of the remotes' periodic tasks (their descriptions hold the remote's name)."""
    urls = [reverse("admin:django_celery_beat_periodictask_changelist")] + [
        reverse("admin:django_celery_beat_periodictask_change", args=(pk,))
        for pk in PeriodicTask.objects.filter(name__startswith="dbsync: ").values_list(
            "pk", flat=True
        )
    ]
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in APPS:
            continue
        obj = model._default_manager.order_by("pk").first()
        for pattern in model_admin.get_urls():
            if not isinstance(pattern, URLPattern) or not pattern.name:
                continue
            if "object_id" in pattern.pattern.converters:
                if obj is not None:
                    urls.append(reverse(f"admin:{pattern.name}", args=(obj.pk,)))
            else:
                urls.append(reverse(f"admin:{pattern.name}"))
    return urls


def named_patterns(resolver):
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            yield from named_patterns(pattern)
        elif pattern.name:
            yield pattern.name


def test_every_api_endpoint_is_in_the_table():
    assert set(named_patterns(get_resolver(api_urls))) == set(API_URLS)


# The project's own URLs beside the API and the admin, each requested by the API test.
PROJECT_URLS = {"metrics", "media"}


def test_every_project_url_is_requested():
    patterns = get_resolver(project_urls).url_patterns
    own = {p.name for p in patterns if isinstance(p, URLPattern) and p.name}
    assert own == PROJECT_URLS


# --- the requests ------------------------------------------------------------------------


def body_of(response):
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def check(response, url):
    body = body_of(response)
    assert response.status_code < 500, f"{url}: {response.status_code} {body[:2000]!r}"
    content_type = response.get("Content-Type", "")
    if content_type.startswith("application/json"):
        json.loads(body)
    elif content_type.startswith("text/csv"):
        lines = list(csv.reader(io.StringIO(body.decode(), newline="")))
        if "/records/" in url and "fmt=" not in url and response.status_code == 200:
            assert lines and lines[-1][0].startswith("# end count="), f"{url}: no trailer"
    elif content_type.startswith("text/vnd.openmeteo.timeseries"):
        if response.status_code == 200:
            HTimeseries(io.StringIO(body.decode(), newline=""))
    elif content_type.startswith("text/html"):
        body.decode()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world(settings, tmp_path):
    """One object (or more) of every model of hcore and dbsync, records, and a run; two
    remotes (their names are unique), the first one scheduled."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.DBSYNC_METRICS_TOKEN = METRICS_TOKEN
    create_sample_data()
    remote = Database.objects.create(
        name="athens",
        hostname="athens.example.org",
        schedule_kind=Database.SCHEDULE_INTERVAL,
        interval_minutes=60,
    )
    Database.objects.create(name="patras", hostname="patras.example.org")
    TaskCount.objects.create(
        task="dbsync.tasks.fetch_dump", outcome="failed", count=2, seconds=1.5
    )
    SyncRun.objects.create(
        database=remote,
        status=SyncRun.FAILED,
        model_counts={"hcore.station": {"fetched": 3, "created": 2}},
        errors=[{"remote": "athens", "model": "hcore.station", "pk": 7, "error": "no owner"}],
    )
    series = m.Timeseries.objects.order_by("pk").first()
    m.Record.objects.bulk_create(
        m.Record(timeseries=series, timestamp=f"2020-01-01T00:{k:02d}:00Z", value=k, flags="")
        for k in range(0, 60, 10)
    )
    return remote


def write_all(world, media_root, values, replicated, utc_offset, record_values, flags, file_name):
    try:
        with transaction.atomic():
            write(values, replicated_from=world if replicated else None)
    except IntegrityError:  # pragma: no cover (no unique text but a remote's name)
        reject()
    m.TimeZone.objects.update(utc_offset=utc_offset)
    records = m.Record.objects.order_by("timestamp")
    for record, value in zip(records, record_values, strict=True):
        m.Record.objects.filter(pk=record.pk).update(value=value, flags=flags)
    write_file(file_name, media_root)


# What is written: every text field, an offset, records, a file (see the module's docstring).
STORED = {
    "values": stored_values(),
    "replicated": st.booleans(),
    "utc_offset": utc_offsets,
    "record_values": st.lists(record_values, min_size=6, max_size=6),
    "flags": stored_text(),
    "file_name": file_names,
}
NASTY_EXAMPLE = {
    "values": nasty_values(),
    "replicated": False,
    "utc_offset": 1440,
    "record_values": [float("nan"), float("inf"), -float("inf"), None, 1e308, -1e-308],
    "flags": 'MISS\nRANGE,"x"\r',
    "file_name": 'new\nline "q".txt',
}
SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
METRICS_TOKEN = "a-metrics-token-for-the-stored-values-0123"


def check_metrics(client):
    """The scrape parses, and each remote's name and each task's come back whole as
    their labels."""
    response = client.get(reverse("metrics"), headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    check(response, "/-/metrics")
    assert response.status_code == 200
    samples = [
        sample
        for family in text_string_to_metric_families(body_of(response).decode())
        for sample in family.samples
    ]
    remotes = {sample.labels["remote"] for sample in samples if "remote" in sample.labels}
    assert remotes == set(Database.objects.values_list("name", flat=True))
    tasks = {sample.labels["task"] for sample in samples if "task" in sample.labels}
    assert tasks == set(TaskCount.objects.values_list("task", flat=True))


def check_media(client, file_name):
    """The stored file is served under its odd name, by the URL that the admin links to,
    the name in Content-Disposition."""
    url = m.GentityFile.objects.get(pk=file_pks()[0]).content.url
    served = client.get(url)
    assert served.status_code == 200, f"{url}: {served.status_code}"
    assert body_of(served) == b"the contents of " + file_name.encode()
    assert served["Content-Disposition"].startswith("attachment; filename")


@pytest.mark.django_db
def test_no_stored_value_makes_an_api_endpoint_answer_500(client, admin_client, world, settings):
    """The API, the metrics (by token) and the media files (to a superuser)."""
    urls = api_request_urls()

    @hypothesis.settings(max_examples=15, deadline=None, suppress_health_check=SLOW)
    @given(**STORED)
    @example(**NASTY_EXAMPLE)
    def endpoints_answer(**stored):
        write_all(world, settings.MEDIA_ROOT, **stored)
        for url in urls:
            check(client.get(url), url)
        # The file under its odd name is served, the name in Content-Disposition.
        served = client.get(reverse("api:file-content", args=(file_pks()[0],)))
        assert served.status_code == 200
        assert body_of(served) == b"the contents of " + stored["file_name"].encode()
        assert "attachment; filename" in served["Content-Disposition"]
        check_metrics(client)
        check_media(admin_client, stored["file_name"])

    endpoints_answer()


@pytest.mark.django_db
def test_no_stored_value_makes_an_admin_page_answer_500(admin_client, world, settings):
    """Every page with the NASTY texts, of local objects and of replicated ones (read-only
    pages); then, as a page costs a tenth of a second or more, a few examples of random
    values on a random part of the pages."""
    urls = admin_request_urls()
    assert len(urls) > 100
    changelists = {
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        for model in admin.site._registry
        if model._meta.app_label in APPS
    }
    # A replicated object's page shows its fields read-only, another way of drawing them.
    read_only = [url for url in urls if url.endswith(("/change/", "/chart/"))]

    @hypothesis.settings(max_examples=3, deadline=None, suppress_health_check=SLOW)
    @given(
        **STORED,
        part=st.lists(st.sampled_from(urls), min_size=25, max_size=25, unique=True),
        search=stored_text(200),
    )
    @example(**NASTY_EXAMPLE, part=urls, search="\n")
    @example(**dict(NASTY_EXAMPLE, replicated=True), part=read_only, search="\r")
    def pages_answer(part, search, **stored):
        write_all(world, settings.MEDIA_ROOT, **stored)
        for url in part:
            # A list is searched for text too (each has a search box or ignores q).
            query = {"q": search} if url in changelists else {}
            check(admin_client.get(url, query), url)

    pages_answer()


# --- a sync of such objects between two real instances -------------------------------------

REMOTE_FILE = 'new\nline "q" ε.txt'
REMOTE_NAME = 'athens "ε"\r\n\u202e<b>%s {0}\x1b[31m'
REMOTE_SETUP = f"""
import datetime as dt
from django.conf import settings
from hcore import models as m
from tests.api_helpers import create_sample_data
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.test_sync import register, sync
from tests.test_stored_values import NASTY, nasty_values, write, write_file
create_sample_data()
write(nasty_values())
write_file({REMOTE_FILE!r}, settings.MEDIA_ROOT)
series = m.Timeseries.objects.order_by("pk").first()
start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
m.Record.objects.bulk_create(
    m.Record(timeseries=series, timestamp=start + dt.timedelta(minutes=10 * k), value=k, flags=f)
    for k, f in enumerate(NASTY)
)
"""


@pytest.mark.django_db(transaction=True)
def test_a_sync_copies_objects_holding_such_text_exactly(make_instance, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    remote = make_instance(hostname="stored-values.example.org")
    remote.shell(REMOTE_SETUP)
    remote.start()
    # The remote's name is odd too: it is in the command's messages and progress lines.
    database = register(remote, name=REMOTE_NAME)
    out, err = sync(database, "-v", "2")
    run = SyncRun.objects.get(database=database)
    assert run.status == SyncRun.SUCCEEDED, (out, err, run.errors)
    assert_same_graph(remote_graph(remote), local_graph(database))
    flags = remote.sql("SELECT flags FROM hcore_record ORDER BY timeseries_id, timestamp", None)
    local = m.Record.objects.filter(timeseries__original_db=database).order_by("timestamp")
    assert list(local.values_list("flags", flat=True)) == [f for (f,) in flags] == list(NASTY)
    (copied,) = m.GentityFile.objects.filter(original_db=database).exclude(content="")
    with copied.content.open("rb") as fh:
        assert fh.read() == b"the contents of " + REMOTE_FILE.encode()


@pytest.mark.django_db(transaction=True)
def test_a_remote_series_in_an_offset_postgresql_cannot_read_is_that_series_error(
    make_instance, settings, tmp_path
):
    """An offset of 1000 minutes (16:40) is storable but no time zone: PostgreSQL refuses
    it in a timestamp, so the syncer reports the series instead of failing its COPY."""
    settings.MEDIA_ROOT = tmp_path / "media"
    remote = make_instance(hostname="odd-offset.example.org")
    remote.shell(
        "import datetime as dt\n"
        "from hcore import models as m\n"
        "from tests.api_helpers import create_sample_data\n"
        "create_sample_data()\n"
        "good, odd = m.Timeseries.objects.order_by('pk')\n"
        "odd.time_zone = m.TimeZone.objects.create(code='ODD', utc_offset=1000)\n"
        "odd.save()\n"
        "start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)\n"
        "for series in (good, odd):\n"
        "    m.Record.objects.bulk_create(m.Record(timeseries=series, value=k, flags='',\n"
        "        timestamp=start + dt.timedelta(minutes=10 * k)) for k in range(5))\n"
    )
    remote.start()
    database = register(remote)
    sync(database, "--no-records")
    good, odd = remote.sql("SELECT id FROM hcore_timeseries ORDER BY id")
    result = sync_records(database, RemoteClient(database), skip=True)
    (problem,) = result.problems
    assert problem.pk == odd[0] and "utc_offset=1000 minutes" in problem.message
    arrived = m.Record.objects.filter(timeseries__original_db=database)
    assert set(arrived.values_list("timeseries__original_id", flat=True)) == {good[0]}
    assert arrived.count() == 5


def test_a_stored_mime_type_is_sent_only_if_it_is_a_media_type():
    assert media_type("image/png") == "image/png"
    assert media_type("application/vnd.ms-excel") == "application/vnd.ms-excel"
    for stored in ("", "\n", "image/png\r\nX-Forged: 1", "image/png ", "png", "a/b/c", "ε/ψ"):
        assert media_type(stored) is None, stored
