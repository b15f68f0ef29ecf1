"""The admin pages of ``hcore`` and ``dbsync``, with sample data present."""

from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib import admin
from django.core.management import call_command
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone

from dbsync.models import Database, SyncRun
from hcore import models as m

pytestmark = pytest.mark.django_db

PASSWORD, TOKEN = "s3cret-password-value", "s3cret-token-value"
ADMINISTERED = sorted(
    (model for model in admin.site._registry if model._meta.app_label in {"hcore", "dbsync"}),
    key=lambda model: model._meta.label,
)


def admin_url(model_or_obj, view="changelist", *args):
    opts = model_or_obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


def generate(stations):
    call_command("generate_sample_data", stations=stations, files_per_station=0.5, verbosity=0)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # admin_client's superuser has a password; the default hasher costs ~1 s a test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def sample_data(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    generate(30)


@pytest.fixture
def remote():
    # https: credentials are kept (and sent) for an HTTPS remote only.
    return Database.objects.create(
        name="athens",
        hostname="athens.example.org",
        scheme="https",
        port=443,
        password=PASSWORD,
        token=TOKEN,
    )


@pytest.fixture
def run(remote):
    started = timezone.now() - timedelta(minutes=3)
    return SyncRun.objects.create(
        database=remote,
        status=SyncRun.SUCCEEDED,
        started_at=started,
        finished_at=started + timedelta(seconds=95),
        model_counts={
            "hcore.station": {"fetched": 3, "created": 2, "updated": 1},
            "hcore.variable": {"fetched": 5, "unchanged": 5},
        },
        errors=[{"remote": "athens", "model": "hcore.station", "pk": 7, "error": "no <owner>"}],
    )


@pytest.fixture
def replicated_station(sample_data, remote):
    station = m.Station.objects.order_by("pk").first()
    m.Gentity.objects.filter(pk=station.pk).update(original_db=remote, original_id=42)
    station.refresh_from_db()
    return station


# --- every page opens -------------------------------------------------------------------


# Records have a composite primary key, which the admin cannot show; they, their
# summary and their sync state are shown on the time series' page instead.
SHOWN_ON_THE_TIMESERIES_PAGE = {m.Record, m.RecordsSummary, m.RecordsSyncState}


def test_every_hcore_model_is_registered():
    missing = [
        model.__name__
        for model in apps.get_app_config("hcore").get_models()
        if model not in admin.site._registry and model not in SHOWN_ON_THE_TIMESERIES_PAGE
    ]
    assert missing == []


@pytest.mark.parametrize("model", ADMINISTERED, ids=lambda model: model._meta.label)
def test_changelist_and_change_page_open(admin_client, sample_data, run, model):
    assert admin_client.get(admin_url(model)).status_code == 200
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"no sample {model._meta.label}"
    assert admin_client.get(admin_url(model, "change", obj.pk)).status_code == 200
    if model is not SyncRun:  # runs are only ever viewed
        assert admin_client.get(admin_url(model, "add")).status_code == 200


def test_searches_and_filters_work(admin_client, sample_data, remote):
    station = m.Station.objects.order_by("pk").first()
    response = admin_client.get(admin_url(m.Station), {"q": station.short_name})
    assert response.status_code == 200
    assert station.short_name in response.text
    for params in (
        {"origin": "local"},
        {"origin": str(remote.pk)},
        {"is_active__exact": "1"},
        {"type__id__exact": str(station.type_id)},
    ):
        assert admin_client.get(admin_url(m.Station), params).status_code == 200
    assert admin_client.get(admin_url(m.Timeseries), {"q": "Precipitation"}).status_code == 200
    assert admin_client.get(admin_url(m.Lentity), {"q": "NTUA"}).status_code == 200


# --- lists fetch what they show in a fixed number of queries --------------------------------


@pytest.mark.parametrize("model", [m.Station, m.Timeseries, m.Lentity, m.Instrument, m.Gline])
def test_lists_do_not_query_per_row(
    admin_client, sample_data, replicated_station, django_assert_max_num_queries, model
):
    admin_client.get(admin_url(model))  # warm up: session, content types
    with django_assert_max_num_queries(12):
        before = admin_client.get(admin_url(model)).context["cl"].result_count
    generate(60)
    with django_assert_max_num_queries(12):
        response = admin_client.get(admin_url(model))
    assert response.context["cl"].result_count > before


# --- replicated objects --------------------------------------------------------------------


def test_replicated_objects_show_their_origin(admin_client, replicated_station):
    response = admin_client.get(admin_url(m.Station), {"origin": "athens"})
    assert response.context["cl"].result_count == 0  # not a remote's id: nothing, no error
    response = admin_client.get(
        admin_url(m.Station), {"origin": replicated_station.original_db_id}
    )
    assert list(response.context["cl"].result_list) == [replicated_station]
    assert "athens" in response.text
    local = admin_client.get(admin_url(m.Station), {"origin": "local"})
    assert replicated_station not in local.context["cl"].result_list
    assert local.context["cl"].result_count == m.Station.objects.count() - 1


def test_a_replicated_station_is_read_only_but_its_local_fields(admin_client, replicated_station):
    response = admin_client.get(admin_url(m.Station, "change", replicated_station.pk))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert set(form.fields) == {"creator", "maintainers"}
    assert 'name="name"' not in response.text
    assert admin_url(m.Station, "delete", replicated_station.pk) not in response.text
    inline = response.context["inline_admin_formsets"][0]
    assert not inline.has_add_permission and not inline.has_change_permission


def test_a_replicated_lookup_is_view_only(admin_client, remote):
    variable = m.Variable.objects.create(descr="Rain", original_db=remote, original_id=3)
    url = admin_url(m.Variable, "change", variable.pk)
    response = admin_client.get(url)
    assert response.status_code == 200
    assert 'name="descr"' not in response.text
    assert admin_client.post(url, {"descr": "Changed"}).status_code == 403
    variable.refresh_from_db()
    assert variable.descr == "Rain"


def test_a_local_station_is_editable(admin_client, sample_data):
    station = m.Station.objects.order_by("pk").first()
    response = admin_client.get(admin_url(m.Station, "change", station.pk))
    form = response.context["adminform"].form
    assert {"name", "owner", "type", "creator", "maintainers"} <= set(form.fields)
    assert "original_id" not in form.fields
    assert "origin" in response.context["adminform"].readonly_fields


# --- remotes: credentials never go back to the browser ------------------------------------


def database_post_data(database, **changes):
    data = {k: v for k, v in model_to_dict(database).items() if v is not None}
    data.update({"password": "", "token": ""}, **changes)
    return {k: ("on" if v is True else v) for k, v in data.items() if v is not False}


def test_database_form_does_not_reveal_credentials(admin_client, remote):
    response = admin_client.get(admin_url(remote, "change", remote.pk))
    assert response.status_code == 200
    assert PASSWORD not in response.text
    assert TOKEN not in response.text
    assert response.text.count('type="password"') == 2
    assert "One is stored; leave empty to keep it." in response.text


def test_database_form_keeps_credentials_left_blank(admin_client, remote):
    url = admin_url(remote, "change", remote.pk)
    response = admin_client.post(url, database_post_data(remote, descr="changed"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    remote.refresh_from_db()
    assert (remote.descr, remote.password, remote.token) == ("changed", PASSWORD, TOKEN)


def test_database_form_replaces_and_clears_credentials(admin_client, remote):
    url = admin_url(remote, "change", remote.pk)
    data = database_post_data(remote, password="new-password", clear_token="on")
    assert admin_client.post(url, data).status_code == 302
    remote.refresh_from_db()
    assert (remote.password, remote.token) == ("new-password", "")


def test_database_list_links_to_its_runs(admin_client, run):
    response = admin_client.get(admin_url(Database))
    assert f"?database__id__exact={run.database_id}" in response.text
    runs = admin_client.get(admin_url(SyncRun), {"database__id__exact": run.database_id})
    assert list(runs.context["cl"].result_list) == [run]


# --- runs: a read-only record ---------------------------------------------------------------


def test_run_page_shows_counts_and_errors(admin_client, run):
    response = admin_client.get(admin_url(run, "change", run.pk))
    assert response.status_code == 200
    text = response.text
    assert "<th>fetched</th>" in text and "<td>hcore.variable</td>" in text
    assert "hcore.station(pk=7): no &lt;owner&gt;" in text
    assert "0:01:35" in text
    listing = admin_client.get(admin_url(SyncRun)).text
    assert "8 fetched, 2 created, 1 updated, 5 unchanged" in listing


def test_runs_cannot_be_added_changed_or_deleted(admin_client, run):
    assert admin_client.get(admin_url(SyncRun, "add")).status_code == 403
    assert admin_client.post(admin_url(run, "change", run.pk), {}).status_code == 403
    assert admin_client.post(admin_url(run, "delete", run.pk), {"post": "yes"}).status_code == 403
    assert SyncRun.objects.filter(pk=run.pk).exists()
