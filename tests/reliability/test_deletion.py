"""Deletions: a remote that lists less than it has, or really deletes much.

hcore_remotesyncdb against a real remote over HTTP (tests/instance.py), changed as its
users would change it (its own ``manage.py shell``), or, for a cut listing that a real
server does not send on cue, behind ``servers.FaultyFront``. Each scenario checks what
an operator would: the exit status and the message (naming the remote, the models or
series, what would go and how to allow it), the local database unchanged
(``integrity``), and what the next run does: after an approval in the admin (a real
headless Chromium), exactly the approved deletion, and no further one.
"""

import json

import pytest
from django.urls import reverse

from dbsync.models import SyncRun
from dbsync.runs.service import approve_deletions
from hcore.models import (
    EventType,
    GentityEvent,
    Instrument,
    Record,
    Timeseries,
    TimeStep,
    TimeZone,
)
from tests import browser as b
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.reliability import servers
from tests.reliability.test_network import (
    assert_failed,
    assert_recovers,
    hcore_remotesyncdb,
    last_run,
    register,
    synced,
)
from tests.test_admin_sync import PASSWORD, make_staff

pytestmark = pytest.mark.django_db(transaction=True)

RECORDS = 40  # per series
# A refused records sync comes after the objects' part, which commits as usual: the
# remote's last_sync and cursor move (its objects were unchanged, so nothing else).
OBJECTS_COMMITTED = ("dbsync_syncrun", "dbsync_database")


@pytest.fixture(autouse=True)
def fast_retries(settings, tmp_path):
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.05
    settings.DBSYNC_WORK_DIR = tmp_path / "work"
    settings.DBSYNC_MAX_DELETE = "50%"
    settings.DBSYNC_MAX_RECORDS_DELETE = "50%"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def remote(make_instance):
    """A remote of its own (scenarios change it), synced once, behind a front."""
    instance = make_instance(hostname="deleting.example.org")
    instance.generate(stations=5, seed=31, records_per_series=RECORDS)
    instance.start()
    front = servers.FaultyFront(instance.url)
    database = register(instance.hostname, front.port)
    synced(database)
    yield instance, front, database
    front.close()


def replicated(model, database):
    return model._base_manager.filter(original_db=database)


def is_keys_of(model):
    return lambda path: path.split("?")[0] == f"/api/hcore/{model}/keys/"


# --- a listing that lacks what the rest still refers to ------------------------------------


def test_an_empty_time_zone_listing_is_refused_and_deletes_nothing(remote, integrity):
    """The remote's key listing of time zones comes back empty (a bug, or a cut
    response that still parses) while its series still point at them. Before, the run
    deleted the time zones, PostgreSQL cascaded that to every series and its records,
    and it exited 0. Now the contradiction, the same on a second fetch, refuses the
    run: exit 1, the message names
    the model, the referrers and the field; nothing changed, nothing is offered for
    approval; the listing whole again, the next run succeeds and changes nothing."""
    instance, front, database = remote
    zones, series = replicated(TimeZone, database).count(), replicated(Timeseries, database)
    records = Record.objects.filter(timeseries__in=series).count()
    assert zones and series.exists() and records
    # A time zone added at the remote: its count differs, so even a capture remote's
    # incremental run asks for the whole listing (an unchanged one asks for none).
    instance.shell(
        "from hcore.models import TimeZone\nTimeZone.objects.create(code='NEW', utc_offset=60)\n"
    )
    before = integrity.snapshot()
    front.on(is_keys_of("timezone"), servers.rewrite(lambda body: b"[]"))
    outcome = hcore_remotesyncdb(database)
    message = assert_failed(
        outcome, database, "contradicts itself", "hcore.timeseries", "time_zone", "hcore.timezone"
    )
    assert f"{series.count()} hcore.timeseries object(s) it still lists" in message
    assert "nothing was deleted or changed" in message
    # Fetched once more (the remote may have changed during the fetch), then refused.
    assert len([path for path, _ in front.requests if is_keys_of("timezone")(path)]) == 2
    integrity.assert_unchanged(before)
    assert last_run(database).deletions == {}  # an error, not a deletion to approve
    assert_recovers(database, remote_graph(instance), front)
    assert Record.objects.filter(timeseries__in=series).count() == records


def without(pk):
    """A keys listing's body, ``pk`` left out."""
    return lambda body: json.dumps([key for key in json.loads(body) if key != pk]).encode()


def test_a_listing_that_lacks_an_instrument_its_series_still_use_is_refused(remote, integrity):
    """The remote's key listing of instruments lacks one that some of its series still
    use. A series keeps its instrument through a key that is emptied when the
    instrument goes (SET NULL), not a cascade: before, one instrument of several was
    under the guard's limit, so the run deleted it and silently emptied the series'
    key, exit 0. Now it is the same contradiction as a cascade's: exit 1, the message
    names the models, the field and the remote pks; nothing changed; the listing whole
    again, the next run succeeds and the series keep their instrument."""
    instance, front, database = remote
    used = replicated(Timeseries, database).filter(instrument__isnull=False)
    instrument = used.first().instrument
    users = used.filter(instrument=instrument)
    n_users, n_instruments = users.count(), replicated(Instrument, database).count()
    assert n_instruments >= 2  # one of them is within the guard's 50%
    # An instrument added at the remote: its count differs, so even a capture remote's
    # incremental run asks for the whole listing.
    instance.shell(
        "from hcore.models import Instrument, InstrumentType, Station\n"
        "Instrument.objects.create(station=Station.objects.first(), "
        "type=InstrumentType.objects.first(), name='new')\n"
    )
    before = integrity.snapshot()
    front.on(is_keys_of("instrument"), servers.rewrite(without(instrument.original_id)))
    outcome = hcore_remotesyncdb(database)
    message = assert_failed(
        outcome,
        database,
        "contradicts itself",
        f"{n_users} hcore.timeseries object(s) it still lists",
        "refer through instrument to 1 hcore.instrument object(s) that its listing lacks "
        f"(remote pks {instrument.original_id})",
        "nothing was deleted or changed",
    )
    assert "more than allowed" not in message
    integrity.assert_unchanged(before)
    assert last_run(database).deletions == {}  # an error, not a deletion to approve
    assert_recovers(database, remote_graph(instance), front)
    assert users.count() == n_users


# --- a remote that really empties a lookup table: refused, approved once, done -------------

EMPTY_EVENT_TYPES = "from hcore.models import EventType\nEventType.objects.all().delete()\n"
EMPTY_TIME_STEPS = "from hcore.models import TimeStep\nTimeStep.objects.all().delete()\n"


@pytest.fixture
def chromium():
    browser = b.browser_or_skip()
    yield browser
    browser.quit()


def approve_in_the_browser(chromium, live_server, run):
    """As an operator: the list of runs, the refused run ticked, the action, Go."""
    make_staff("operator")
    b.login(chromium, live_server.url, "operator", PASSWORD)
    chromium.get(live_server.url + reverse("admin:dbsync_syncrun_change", args=[run.pk]))
    page = b.by_css(chromium, "#content-main")[0].text
    assert "not approved" in page and "hcore.eventtype" in page
    chromium.get(live_server.url + reverse("admin:dbsync_syncrun_changelist"))
    b.by_css(chromium, f'#result_list input.action-select[value="{run.pk}"]')[0].click()
    from selenium.webdriver.support.ui import Select

    Select(b.by_css(chromium, "select[name=action]")[0]).select_by_value("approve_deletions")
    b.by_css(chromium, "button[name=index]")[0].click()
    b.wait_for(lambda: b.messages(chromium), what="the message")
    return b.messages(chromium)


def test_an_emptied_lookup_table_is_refused_then_approved_once_in_the_admin(
    remote, integrity, live_server, chromium
):
    """The remote's users delete every event type (and so every event). No default
    lets one run empty a table: refused, listing what would go (cascades included) and
    how to allow it; nothing changed. An operator approves these deletions once in the
    admin; the next run deletes exactly them and spends the approval; a further
    deletion (every time step) is refused again."""
    instance, front, database = remote
    types, events = replicated(EventType, database), replicated(GentityEvent, database)
    n_types, n_events = types.count(), events.count()
    assert n_types and n_events
    instance.shell(EMPTY_EVENT_TYPES)
    before = integrity.snapshot()
    outcome = hcore_remotesyncdb(database)
    assert_failed(
        outcome,
        database,
        f"hcore.eventtype: {n_types} of {n_types}",
        # the events are gone from the remote's listing too: deleted, not cascaded
        f"hcore.gentityevent: {n_events} of {n_events}, more than allowed",
        f"({n_types + n_events} objects in all)",
        "Nothing was changed",
        "--max-delete=all",
        "Approve these deletions once",
    )
    integrity.assert_unchanged(before)
    refused = last_run(database)
    assert len(refused.deletions["objects"]["hcore.eventtype"]) == n_types

    shown = approve_in_the_browser(chromium, live_server, refused)
    assert shown[0].startswith(f"Approved once the deletions of run #{refused.pk}"), shown
    refused.refresh_from_db()
    assert refused.approved_by == "operator" and refused.approved_at is not None
    assert refused.approval_used_at is None

    outcome = hcore_remotesyncdb(database)
    assert outcome.status == 0, outcome.err
    applied = last_run(database)
    assert applied.status == SyncRun.SUCCEEDED
    assert not types.exists() and not events.exists()
    assert applied.model_counts["hcore.eventtype"]["deleted"] == n_types
    assert_same_graph(remote_graph(instance), local_graph(database))
    refused.refresh_from_db()
    assert refused.approval_used_by == applied and refused.approval_used_at is not None
    assert refused.deletions["applied"] == "applied (objects)"
    chromium.get(live_server.url + reverse("admin:dbsync_syncrun_change", args=[refused.pk]))
    page = b.by_css(chromium, "#content-main")[0].text
    assert f"spent by run #{applied.pk}: applied (objects)" in page

    # Spent: the next deletion above the guard is refused again.
    steps = replicated(TimeStep, database).count()
    instance.shell(EMPTY_TIME_STEPS)
    before = integrity.snapshot()
    outcome = hcore_remotesyncdb(database)
    message = assert_failed(outcome, database, f"hcore.timestep: {steps} of {steps}")
    assert "hcore.timeseries" not in message  # the series stay (their key is emptied)
    integrity.assert_unchanged(before)


# --- records: a series cleared, a series shortened -------------------------------------------


def series_records(instance, remote_pk):
    return int(
        instance.sql("SELECT count(*) FROM hcore_record WHERE timeseries_id = %s", [remote_pk])[0][
            0
        ]
    )


def a_series_with_records(instance, database):
    remote_pk = int(
        instance.sql(
            "SELECT timeseries_id FROM hcore_record GROUP BY timeseries_id "
            "HAVING count(*) = %s ORDER BY 1 LIMIT 1",
            [RECORDS],
        )[0][0]
    )
    local = replicated(Timeseries, database).get(original_id=remote_pk)
    assert Record.objects.filter(timeseries=local).count() == RECORDS
    return remote_pk, local


def keep_first(remote_pk, n):
    """Shell code: the remote keeps the first ``n`` records of a series."""
    return (
        "from hcore.models import Record\n"
        f"keep = Record.objects.filter(timeseries_id={remote_pk}).order_by('timestamp')"
        f"[:{n}].values_list('timestamp', flat=True)\n"
        f"Record.objects.filter(timeseries_id={remote_pk}).exclude(timestamp__in=list(keep))"
        ".delete()\n"
    )


def test_a_series_cleared_at_the_remote_is_refused_then_approved(remote, integrity):
    """The remote's users remove every record of a series. The records guard refuses:
    exit 1, the series named with what it would lose; no record changed (the objects'
    part, unchanged, committed as usual). Approved once (the admin action's helper),
    the next run clears exactly that series."""
    instance, front, database = remote
    remote_pk, local = a_series_with_records(instance, database)
    others = Record.objects.exclude(timeseries=local).count()
    instance.shell(keep_first(remote_pk, 0))
    before = integrity.snapshot(OBJECTS_COMMITTED)
    outcome = hcore_remotesyncdb(database)
    message = assert_failed(
        outcome,
        database,
        f"hcore.timeseries(pk={remote_pk}; here {local.pk}): {RECORDS} -> 0 records",
        "No records were changed",
        "--max-records-delete=all",
    )
    assert "records sync would remove more records than allowed" in message
    integrity.assert_unchanged(before, OBJECTS_COMMITTED)
    refused = last_run(database)
    assert refused.deletions["records"] == {str(remote_pk): 0}

    approve_deletions(refused, "operator")
    outcome = hcore_remotesyncdb(database)
    assert outcome.status == 0, outcome.err
    assert not Record.objects.filter(timeseries=local).exists()
    assert Record.objects.exclude(timeseries=local).count() == others
    refused.refresh_from_db()
    assert refused.approval_used_by == last_run(database)
    assert refused.deletions["applied"] == "applied (records)"


def test_a_series_shortened_at_the_remote_is_refused_beyond_the_guard(remote, integrity):
    """A series shortened a little (a tenth of its records) follows the remote; one
    shortened much (to a quarter) is refused, named with its counts, and changes no
    record; allowed on the command line (--max-records-delete=all), it follows."""
    instance, front, database = remote
    remote_pk, local = a_series_with_records(instance, database)
    little = RECORDS - RECORDS // 10
    instance.shell(keep_first(remote_pk, little))
    synced(database)
    assert Record.objects.filter(timeseries=local).count() == little

    much = RECORDS // 4
    instance.shell(keep_first(remote_pk, much))
    before = integrity.snapshot(OBJECTS_COMMITTED)
    outcome = hcore_remotesyncdb(database)
    assert_failed(
        outcome,
        database,
        f"hcore.timeseries(pk={remote_pk}; here {local.pk}): {little} -> {much} records",
    )
    integrity.assert_unchanged(before, OBJECTS_COMMITTED)
    synced(database, "--max-records-delete=all")
    assert (
        Record.objects.filter(timeseries=local).count()
        == much
        == series_records(instance, remote_pk)
    )
