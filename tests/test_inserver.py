"""A first sync installed by PostgreSQL (``dbsync.engine.install.inserver``) against the
Python path: the same dumps give the same rows, or the same error, on either path.

The remote is a real instance behind ``tests/faultproxy.py``, which rewrites one object
of a dump (a real remote cannot be made to send these values). Each case syncs the
remote for the first time twice, as two registrations: once as configured (the server
path, which either installs or doubts and hands over to Python) and once with
``DBSYNC_INSTALL_IN_SERVER`` off (the Python path alone); what arrives, or the error, must
be the same.
"""

import io
import json

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from dbsync.models import Database
from hcore.models import Gentity, Timeseries
from tests.faultproxy import FaultProxy, model_path
from tests.graph import assert_same_graph, local_graph, remote_graph
from tests.instance import Instance

pytestmark = pytest.mark.django_db(transaction=True)

IN_SERVER = "new objects in the database server"
ROW_BY_ROW = "Installing in Python, row by row"


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="inserver.example.org")
    instance.generate(stations=4, seed=41, events_per_station=1, files_per_station=0.5)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture
def proxy(remote):
    proxy = FaultProxy(remote.url)
    yield proxy
    proxy.close()


def first_sync(remote, proxy, name, settings, in_server):
    """A first sync of ``remote`` through ``proxy`` as a new registration ``name``:
    (the Database, the command's output, the error's message or None)."""
    settings.DBSYNC_INSTALL_IN_SERVER = in_server
    database = Database.objects.create(
        name=name, hostname=remote.hostname, ip_address="127.0.0.1", port=proxy.port
    )
    out = io.StringIO()
    try:
        call_command("hcore_remotesyncdb", "-r", name, "-N", "--no-records", "-v", "2", stdout=out)
    except CommandError as exc:
        return database, out.getvalue(), str(exc).replace(name, "<remote>")
    return database, out.getvalue(), None


def replace_first(remote, proxy, model, change):
    """The proxy serves ``model``'s dump with its first object changed by ``change``
    (which edits the object in place, or returns the line's bytes itself)."""
    body = requests.get(f"{remote.url}/api/hcore/{model}/", timeout=60).content
    lines = body.split(b"\n")
    first = json.loads(lines[1].rstrip(b","))
    line = change(first)
    lines[1] = (line if isinstance(line, bytes) else json.dumps(first).encode()) + b","
    changed = b"\n".join(lines)
    proxy.on(model_path(model), lambda path, status, headers, _: (status, headers, changed))
    return first["pk"]


def stage_tables():
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'dbsync_stage_%%'")
        return cursor.fetchall()


def both_paths(remote, proxy, settings):
    server = first_sync(remote, proxy, "via-server", settings, True)
    python = first_sync(remote, proxy, "via-python", settings, False)
    assert not stage_tables()
    assert IN_SERVER not in python[1] and ROW_BY_ROW not in python[1]
    return server, python


def test_a_clean_first_sync_is_installed_by_the_server_as_python_installs_it(
    remote, proxy, settings
):
    (server_db, server_out, error), (python_db, _out, python_error) = both_paths(
        remote, proxy, settings
    )
    assert error is None and python_error is None
    assert IN_SERVER in server_out and ROW_BY_ROW not in server_out
    assert_same_graph(remote_graph(remote), local_graph(server_db))
    assert_same_graph(local_graph(python_db), local_graph(server_db))
    # The local pks of a root model follow the remote's order: one run of keys.
    pairs = list(
        Timeseries.objects.filter(original_db=server_db)
        .order_by("original_id")
        .values_list("original_id", "id")
    )
    assert [local for _remote, local in pairs] == sorted(local for _remote, local in pairs)
    assert "Successfully installed" in server_out


def exponent(obj):
    """The line of ``obj`` with its precision 10, spelled 1e1 (Python reads a float)."""
    text = json.dumps(dict(obj, fields={**obj["fields"], "precision": 1}))
    return text.replace('"precision": 1', '"precision": 1e1').encode()


# (model, change, the error both paths give (None: both install), whether the server
# path doubts it)
CASES = {
    "an integer spelled with an exponent": (
        "timeseries",
        exponent,
        "field 'precision': expected an integer, got float",
        True,
    ),
    "text with trailing spaces past max_length": (
        "gentity",
        lambda obj: obj["fields"].update(name="n" + " " * 200),
        "field 'name': text of 201 characters is longer than 200",
        True,
    ),
    "a number for text": (
        "gentity",
        lambda obj: obj["fields"].update(name=5),
        "field 'name': expected text, got int",
        True,
    ),
    "a number for a boolean": (
        "gpoint",
        lambda obj: obj["fields"].update(approximate=1),
        "field 'approximate': expected true or false, got int",
        True,
    ),
    "a field the local model lacks": (
        "timeseries",
        lambda obj: obj["fields"].update(colour="red"),
        "has field(s) 'colour' that the local model does not have",
        True,
    ),
    "a date and time the server would read otherwise": (
        "gentityevent",
        lambda obj: obj["fields"].update(date="2020-01-05T24:00:00"),
        "field 'date': expected an ISO 8601 date and time",
        True,
    ),
    # Values the Python path takes: both install them alike.
    "a date without leading zeros": (
        "station",
        lambda obj: obj["fields"].update(start_date="2020-1-5"),
        None,
        True,
    ),
    "a number as a string": (
        "gpoint",
        lambda obj: obj["fields"].update(altitude="12.5"),
        None,
        True,
    ),
    "a key as a string": (
        "timeseries",
        lambda obj: obj["fields"].update(time_zone=str(obj["fields"]["time_zone"])),
        None,
        False,
    ),
}


# Three cases run by default (each is two first syncs); the others are slow.
QUICK = {
    "an integer spelled with an exponent",
    "text with trailing spaces past max_length",
    "a date without leading zeros",
}


@pytest.mark.parametrize(
    "case",
    [case if case in QUICK else pytest.param(case, marks=pytest.mark.slow) for case in CASES],
)
def test_what_the_server_path_doubts_ends_as_the_python_path_ends_it(
    remote, proxy, settings, case
):
    model, change, expected, doubted = CASES[case]
    pk = replace_first(remote, proxy, model, change)
    (server_db, server_out, error), (python_db, _out, python_error) = both_paths(
        remote, proxy, settings
    )
    # Doubted: the server path handed over to Python; else it installed.
    assert (ROW_BY_ROW in server_out) == doubted
    assert (IN_SERVER in server_out) == (not doubted)
    assert error == python_error
    if expected is None:
        assert error is None
        assert_same_graph(local_graph(python_db), local_graph(server_db))
        return
    assert error is not None and f"hcore.{model}(pk={pk})" in error and expected in error
    # Nothing of either run was installed.
    assert not Gentity.objects.exclude(original_db=None).exists()


@pytest.mark.slow
def test_a_reference_the_dumps_lack_is_asked_for_as_on_the_python_path(remote, proxy, settings):
    """A series' key to a station the remote does not have: the server path doubts, and
    the Python path asks for it again, then names it."""
    replace_first(remote, proxy, "timeseries", lambda obj: obj["fields"].update(gentity=999999))
    (_db, server_out, error), (_python_db, _out, python_error) = both_paths(
        remote, proxy, settings
    )
    assert ROW_BY_ROW in server_out
    assert error == python_error
    assert error is not None and "refers to hcore.gentity(pk=999999)" in error


def test_a_dry_run_of_a_first_sync_leaves_no_staged_dump_behind(remote, proxy, settings):
    """``--dry-run`` rolls the install's transaction back, with the DROPs of the staged
    dumps in it (the stager's session committed them): they are dropped after it, so
    no unlogged copy of a remote's dumps is left taking disk; nothing is installed."""
    settings.DBSYNC_INSTALL_IN_SERVER = True
    database = Database.objects.create(
        name="dry", hostname=remote.hostname, ip_address="127.0.0.1", port=proxy.port
    )
    out = io.StringIO()
    call_command(
        "hcore_remotesyncdb", "-r", "dry", "-N", "--no-records", "--dry-run", "-v", "2", stdout=out
    )
    assert IN_SERVER in out.getvalue()
    assert not Gentity.objects.filter(original_db=database).exists()
    assert not stage_tables()
