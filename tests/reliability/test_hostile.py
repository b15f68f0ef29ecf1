"""Hostile remote: a remote we do not control serves crafted answers.

Before each scenario the local database holds the objects (records, files) replicated
from ANOTHER real remote, LOCAL objects created here with the ORM (``original_db``
null), and the attacked remote's own replicated objects. Whatever the attacked remote
sends, nothing outside its own replicated rows may change: when the run must fail the
whole database is compared (``integrity``); when it may succeed with the bad objects
refused or ignored, the other remote's graph, the local objects and everyone else's
records and files are compared before and after (``bystanders``).

The attacked remote is a real instance behind ``tests/faultproxy.py``, which rewrites its
answers (a real remote cannot be made to send these on cue); each docstring says what
the proxy does.
"""

import functools
import gzip
import io
import json
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from dbsync.engine.dumps import dump_name
from dbsync.engine.planner import make_plan, root_of
from dbsync.engine.remote import RemoteClient
from dbsync.models import Database, SyncRun
from hcore import models as m
from tests.faultproxy import FaultProxy, model_path
from tests.graph import assert_same_graph, local_dump, local_graph, origins, remote_graph
from tests.instance import Instance

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1 << 20
MANIFEST = "/api/"
SUMMARY = "/api/hcore/timeseries/records-summary/"
BATCH = "/api/hcore/timeseries/records/"
LISTING = "/api/hcore/gentityfile/contents/"
# Records and files fail after the objects' transaction has committed: the objects are
# unchanged, but the attacked remote's cursor moved. Compared: all but the registry.
EXCEPT_REGISTRY = ("dbsync_syncrun", "dbsync_database")


# --- the two real remotes, the local objects ----------------------------------------------------


@pytest.fixture(scope="module")
def attacked_instance(instance_template):
    instance = Instance(instance_template, hostname="attacked.example.org")
    instance.generate(stations=6, seed=31, records_per_series=20, files_per_station=0.5)
    instance.start()
    yield instance
    instance.drop()


@pytest.fixture(scope="module")
def other_instance(instance_template):
    instance = Instance(instance_template, hostname="other.example.org")
    instance.generate(stations=5, seed=32, records_per_series=20, files_per_station=0.5)
    instance.start()
    yield instance
    instance.drop()


@dataclass
class World:
    attacked: Instance
    proxy: FaultProxy
    db: Database  # the attacked remote, registered through the proxy
    other: Instance
    other_db: Database
    local: dict  # the local objects, by role
    root: Path  # a folder of its own: the work folder and MEDIA_ROOT are inside

    def attacked_dump(self, model):
        """The attacked remote's real dump of a model (straight, not through the proxy)."""
        return requests.get(f"{self.attacked.url}/api/hcore/{model}/", timeout=60).content


@pytest.fixture
def world(attacked_instance, other_instance, settings, tmp_path):
    """The other remote synced, the local objects made, the attacked remote synced
    through its proxy (which still answers truly); work folder and MEDIA_ROOT in a
    folder of the test's own."""
    settings.DBSYNC_HTTP_RETRIES = 1
    settings.DBSYNC_HTTP_BACKOFF = 0.01
    settings.MEDIA_ROOT = tmp_path / "jail" / "media"
    settings.DBSYNC_WORK_DIR = tmp_path / "jail" / "work"
    other_db = register(other_instance)
    sync(other_db)
    local = make_local_objects()
    proxy = FaultProxy(attacked_instance.url)
    db = register(attacked_instance, port=proxy.port)
    sync(db)
    yield World(attacked_instance, proxy, db, other_instance, other_db, local, tmp_path / "jail")
    proxy.close()


def register(instance, port=None):
    return Database.objects.create(
        name=instance.hostname,
        hostname=instance.hostname,
        ip_address="127.0.0.1",
        port=port or instance.port,
    )


def make_local_objects():
    person = m.Person.objects.create(last_name="Local person")
    station_type = m.StationType.objects.create(descr="Local type")
    station = m.Station.objects.create(name="Local station", owner=person, type=station_type)
    variable = m.Variable.objects.create(descr="Local variable")
    unit = m.UnitOfMeasurement.objects.create(descr="Local unit", symbol="lu")
    unit.variables.add(variable)
    zone = m.TimeZone.objects.create(code="LOC", utc_offset=120)
    series = m.Timeseries.objects.create(
        gentity=station, variable=variable, unit_of_measurement=unit, time_zone=zone
    )
    m.Record.objects.bulk_create(
        m.Record(timeseries=series, timestamp=f"2025-06-0{day} 00:00Z", value=day, flags="")
        for day in range(1, 6)
    )
    return {
        "person": person,
        "station_type": station_type,
        "station": station,
        "variable": variable,
        "unit": unit,
        "series": series,
    }


def sync(database, *args):
    out, err = io.StringIO(), io.StringIO()
    call_command("hcore_remotesyncdb", "-r", database.name, "-N", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def attack(world, *args):
    """A full sync of the attacked remote; the CommandError's message if it fails."""
    try:
        sync(world.db, "--full", *args)
    except CommandError as exc:
        return str(exc)
    return None


def last_run(database):
    return SyncRun.objects.filter(database=database).order_by("-pk").first()


# --- what must not change ----------------------------------------------------------------------


def bystanders(world):
    """Everything that is not the attacked remote's: the other remote's graph, the local
    objects (every field, links and last_modified included), their records and files."""
    table = origins()
    outside = {}
    for obj in json.loads(local_dump()):
        model = apps.get_model(obj["model"])
        if hasattr(model, "original_id"):  # not records, their summaries or states
            if table[(root_of(model), obj["pk"])][0] != world.db.pk:
                outside[(obj["model"], obj["pk"])] = obj["fields"]
    with connection.cursor() as cursor:
        cursor.execute(
            'SELECT r.timeseries_id, r."timestamp", r.value, r.flags FROM hcore_record r '
            "JOIN hcore_timeseries t ON t.id = r.timeseries_id "
            "WHERE t.original_db_id IS DISTINCT FROM %s ORDER BY 1, 2",
            [world.db.pk],
        )
        records = cursor.fetchall()
        cursor.execute(
            "SELECT s.* FROM hcore_recordssyncstate s JOIN hcore_timeseries t "
            "ON t.id = s.timeseries_id WHERE t.original_db_id IS DISTINCT FROM %s ORDER BY 1",
            [world.db.pk],
        )
        records += cursor.fetchall()
    return {
        "other": local_graph(world.other_db),
        "outside": outside,
        "records": records,
        "files": files_outside(world),
        "accounts": (User.objects.count(), LogEntry.objects.count()),
    }


def files_outside(world):
    """Every file under the test's folder but the attacked remote's own stored files."""
    own = world.root / "media" / "gentityfile" / str(world.db.pk)
    return sorted(
        (str(p.relative_to(world.root)), p.read_bytes())
        for p in world.root.rglob("*")
        if p.is_file() and own not in p.parents and (world.root / "work") not in p.parents
    )


def assert_bystanders_unchanged(world, before):
    after = bystanders(world)
    assert_same_graph(remote_graph(world.other), after["other"])
    for key in before:
        assert after[key] == before[key], f"{key} changed"


# --- rewriting the remote's answers --------------------------------------------------------------


def objects_of(body):
    return [json.loads(line.rstrip(",")) for line in body.decode().splitlines()[1:-1] if line]


def as_body(objects):
    return ("[\n" + ",\n".join(json.dumps(o) for o in objects) + "\n]\n").encode()


def on_dump(world, model, transform):
    """Rewrite the objects of a model's dump: ``transform(list of objects)``."""

    def action(path, status, headers, body):
        objects = objects_of(body)
        return status, headers, transform(objects) or as_body(objects)

    world.proxy.on(model_path(model), action)


def served(world, model):
    """The remote pks of a model at the attacked remote."""
    opts = apps.get_model("hcore", model)._meta
    query = f'SELECT "{opts.pk.column}" FROM "{opts.db_table}" ORDER BY 1'
    return [pk for (pk,) in world.attacked.sql(query)]


# --- objects of other models ---------------------------------------------------------------------

FOREIGN = {
    "auth.user": {"username": "intruder", "is_superuser": True, "password": "x"},
    "dbsync.database": {"name": "evil", "hostname": "evil.example.org"},
    "hcore.userprofile": {"user": 1, "fname": "Eve"},
    "admin.logentry": {"action_flag": 1, "object_repr": "x", "change_message": ""},
    "madeup.thing": {"anything": 1},
}


@pytest.mark.parametrize("model", sorted(FOREIGN))
def test_objects_of_models_outside_the_app_in_a_dump_fail_the_run_and_change_nothing(
    world, integrity, model
):
    """The proxy appends an object of another model (accounts, the registry of remotes,
    profiles, the admin log, an app that does not exist) to the station dump: the run
    fails naming the remote and the intruder, and nothing changes here."""
    before = integrity.snapshot()
    accounts = (User.objects.count(), LogEntry.objects.count())
    on_dump(world, "station", lambda objects: objects.append(intruder(model)))
    message = attack(world)
    assert message and str(world.db) in message
    assert f"'{model}'" in message and "only hcore.station belongs there" in message
    integrity.assert_unchanged(before)
    assert (User.objects.count(), LogEntry.objects.count()) == accounts
    assert last_run(world.db).status == SyncRun.FAILED


def intruder(model, pk=1):
    return {"model": model, "pk": pk, "fields": FOREIGN[model]}


@pytest.mark.parametrize("model", sorted(FOREIGN))
def test_objects_of_models_outside_the_app_in_a_resumed_dumpdata_are_refused_or_dropped(
    world, integrity, model
):
    """--resume from the remote's own ``dumpdata hcore`` output with an object of another
    model added (no proxy: the file is the hostile input): refused naming it, nothing
    changed; a user profile, which every ``dumpdata hcore`` holds and which is never
    synced, is left out and the rest installed."""
    work = world.root / "work" / "airgapped"
    work.mkdir(parents=True)
    objects = json.loads(world.attacked.manage("dumpdata", "hcore").stdout)
    (work / "dump.json").write_text(json.dumps([*objects, intruder(model)]))
    before = integrity.snapshot()
    accounts = (User.objects.count(), LogEntry.objects.count(), m.UserProfile.objects.count())
    if model == "hcore.userprofile":
        sync(world.db, "--resume", "-w", str(work))
        assert_same_graph(remote_graph(world.attacked), local_graph(world.db))
    else:
        with pytest.raises(CommandError, match=f"object of '{model}' .* is not a model of hcore"):
            sync(world.db, "--resume", "-w", str(work))
        integrity.assert_unchanged(before)
    assert (User.objects.count(), LogEntry.objects.count(), m.UserProfile.objects.count()) == (
        accounts
    )


# --- keys in the payload -------------------------------------------------------------------------


def test_bookkeeping_fields_and_borrowed_pks_in_the_payload_touch_only_the_remotes_rows(world):
    """The proxy sends, as the attacked remote's own objects, a station type and a station
    (with its gentity and gpoint rows) whose pks are those of local objects, with
    ``original_db`` set to the other remote, ``original_id`` to one of the other remote's
    objects and the parent links (``gentity_ptr``, ``id``) to local pks; and it sets the
    same bookkeeping fields on one of the remote's real objects. They are the attacked
    remote's own new objects, with their remote pks; nothing else changes."""
    local = world.local
    borrowed = {"station_type": local["station_type"].pk, "station": local["station"].pk}
    assert borrowed["station_type"] not in served(world, "stationtype")
    assert borrowed["station"] not in served(world, "gentity")
    other_type = m.StationType.objects.filter(original_db=world.other_db).first()
    hostile = {"original_db": world.other_db.pk, "original_id": other_type.original_id}
    owner, kind = served(world, "person")[0], served(world, "stationtype")[0]

    def types(objects):
        objects[0]["fields"].update(hostile)
        objects.append(
            {
                "model": "hcore.stationtype",
                "pk": borrowed["station_type"],
                "fields": {"descr": "Hostile type", "descr_alt": "", "id": 1, **hostile},
            }
        )

    def chain(model, fields):
        def transform(objects):
            objects.append({"model": model, "pk": borrowed["station"], "fields": fields})

        return transform

    on_dump(world, "stationtype", types)
    ptr = local["station"].pk
    on_dump(
        world, "gentity", chain("hcore.gentity", {"name": "Hostile station", "id": ptr, **hostile})
    )
    on_dump(world, "gpoint", chain("hcore.gpoint", {"abscissa": 1.0, "gentity_ptr": ptr}))
    station = {"owner": owner, "type": kind, "is_active": True, "gpoint_ptr": ptr}
    on_dump(world, "station", chain("hcore.station", station))
    before = bystanders(world)
    assert attack(world) is None
    assert_bystanders_unchanged(world, before)
    new_type = m.StationType.objects.get(descr="Hostile type")
    assert (new_type.original_db, new_type.original_id) == (world.db, borrowed["station_type"])
    new_station = m.Station.objects.get(name="Hostile station")
    assert (new_station.original_db, new_station.original_id) == (world.db, borrowed["station"])
    assert new_station.pk != local["station"].pk
    first = m.StationType.objects.get(original_db=world.db, original_id=kind)
    assert first.pk != other_type.pk


@pytest.mark.parametrize("skip", [False, True], ids=["halt", "skip"])
@pytest.mark.parametrize("kind", ["foreign key", "many-to-many"])
def test_a_key_to_a_pk_that_exists_only_locally_is_never_linked_to_the_local_object(
    world, integrity, kind, skip
):
    """The proxy points a time series' gentity (a foreign key) or a unit's variables (a
    many-to-many link) at the pk of a local object, which the attacked remote does not
    have. Asked again, the remote does not send it: the run fails naming the reference
    and changes nothing; with --skip the object is skipped, reported, and nothing of the
    remote's is linked to the local object."""
    if kind == "foreign key":
        target, model, field = world.local["station"].pk, "timeseries", "gentity"
        assert target not in served(world, "gentity")
        label = "hcore.gentity"
    else:
        target, model, field = world.local["variable"].pk, "unitofmeasurement", "variables"
        assert target not in served(world, "variable")
        label = "hcore.variable"

    def point_at_local(objects):
        value = objects[0]["fields"][field]
        objects[0]["fields"][field] = value + [target] if isinstance(value, list) else target
        point_at_local.pk = objects[0]["pk"]

    on_dump(world, model, point_at_local)
    before, around = integrity.snapshot(), bystanders(world)
    if not skip:
        message = attack(world)
        assert f"{label}(pk={target}), which the remote did not send" in message
        assert f"hcore.{model}(pk={point_at_local.pk}) refers to" in message
        integrity.assert_unchanged(before)
        return
    out, err = sync(world.db, "--full", "--skip")
    assert f"could not install hcore.{model}(pk={point_at_local.pk})" in err
    assert f"{label}(pk={target})" in err
    assert_bystanders_unchanged(world, around)
    if kind == "foreign key":
        assert not m.Timeseries.objects.filter(
            original_db=world.db, gentity=world.local["station"]
        ).exists()
    else:
        assert not m.UnitOfMeasurement.objects.filter(
            original_db=world.db, variables=world.local["variable"]
        ).exists()
    assert last_run(world.db).status == SyncRun.SUCCEEDED


@pytest.mark.parametrize("pk", [0, -1, 2**63, 2**64 - 1, 10**30])
def test_a_pk_out_of_range_is_refused_naming_it(world, integrity, pk):
    """The proxy appends a station type whose pk is not a positive 64-bit key (the remote
    pk is kept in a bigint; 10**30 is read as a float): refused, naming the remote, the
    dump, the line and the pk, not a database error; nothing changes."""
    on_dump(
        world,
        "stationtype",
        lambda objects: objects.append({"model": "hcore.stationtype", "pk": pk, "fields": {}}),
    )
    before = integrity.snapshot()
    message = attack(world)
    assert message.startswith(f"{world.db}: hcore.stationtype.json line ")
    assert "hcore.stationtype has an invalid pk" in message
    integrity.assert_unchanged(before)


def test_a_thousand_dangling_keys_with_big_pks_are_asked_again_and_named(world, integrity):
    """The proxy gives a unit 1,000 variables with 7-digit pks the remote does not have:
    they are asked for again (in requests short enough for any server: a request line of
    500 such keys is over gunicorn's 4094 bytes), then the run fails naming them."""
    missing = list(range(10**6, 10**6 + 1000))
    sent = {}

    def dangling(objects):
        objects[0]["fields"]["variables"] = missing
        sent["pk"] = objects[0]["pk"]

    on_dump(world, "unitofmeasurement", dangling)
    before = integrity.snapshot()
    asked = len(world.proxy.requests)
    message = attack(world)
    assert "1000 reference(s) to objects that do not exist" in message
    assert f"hcore.unitofmeasurement(pk={sent['pk']}) refers to hcore.variable(pk=1000000)" in (
        message
    )
    refetches = [p for p in world.proxy.requests[asked:] if "pks=" in p]
    assert refetches and max(len(p) for p in refetches) < 4000
    integrity.assert_unchanged(before)


# --- absurd sizes --------------------------------------------------------------------------------


class PeakMemory:
    """The growth of this process' peak resident memory over a block, in MB (Linux: the
    peak is reset on entry through /proc/self/clear_refs). The proxy runs in this
    process too: what it sends is built before the block."""

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")
        self.base = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = _status_mb("VmHWM") - self.base
        return False


def _status_mb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def replace_line(world, model, build):
    """The proxy answers a model's dump with its real objects and, instead of the first,
    the prebuilt bytes ``build(first object)`` (built now, before any measurement)."""
    real = objects_of(world.attacked_dump(model))
    lines = [build(real[0]), *(json.dumps(o).encode() for o in real[1:])]
    body = b"[\n" + b",\n".join(lines) + b"\n]\n"
    world.proxy.on(model_path(model), lambda path, status, headers, _: (status, headers, body))
    return real[0]


def test_a_10_mb_string_in_a_text_field_arrives_intact_with_bounded_memory(world):
    """The proxy sends a gentity whose ``remarks`` (a TextField) is 10 MB of text: it is
    installed as it came, and the sync's memory grows by a small multiple of it."""
    text = "Ω-10MB-" + "x" * (10 * MB)

    def build(obj):
        obj["fields"]["remarks"] = text
        return json.dumps(obj).encode()

    first = replace_line(world, "gentity", build)
    before = bystanders(world)
    with PeakMemory() as memory:
        assert attack(world) is None
    assert_bystanders_unchanged(world, before)
    row = m.Gentity.objects.get(original_db=world.db, original_id=first["pk"])
    assert row.remarks == text
    assert memory.growth < 100, f"the sync's memory grew by {memory.growth} MB"


def test_a_10_mb_string_in_a_char_field_is_refused_with_a_short_message(world, integrity):
    """The same 10 MB of text in ``name`` (a CharField of 200): refused, naming the
    remote, the object and the field, in a message that does not repeat the text."""
    text = "y" * (10 * MB)

    def build(obj):
        obj["fields"]["name"] = text
        return json.dumps(obj).encode()

    first = replace_line(world, "gentity", build)
    before = integrity.snapshot()
    message = attack(world)
    assert f"{world.db}: could not install hcore.gentity(pk={first['pk']}): field 'name'" in (
        message
    )
    assert "longer than 200" in message and len(message) < 500
    integrity.assert_unchanged(before)


@pytest.mark.parametrize(
    "keys, refused_by",
    [
        # over the cap on links per object, under the one on JSON values per object
        (50_000, "hcore.unitofmeasurement(pk={pk}): field 'variables'"),
        # over both: the parse stops at the JSON values' cap, before the object is read
        (10**6, "hcore.unitofmeasurement.json line 2: more than 100000 JSON values"),
    ],
)
def test_many_many_to_many_keys_in_one_object_are_refused_by_a_cap(
    world, integrity, keys, refused_by
):
    """The proxy gives one unit of measurement 50,000 or a million variables (keys the
    remote does not have): refused by a cap, quickly, without memory to match."""

    def build(obj):
        obj["fields"]["variables"] = list(range(1, keys + 1))
        return json.dumps(obj).encode()

    first = replace_line(world, "unitofmeasurement", build)
    before = integrity.snapshot()
    started = time.monotonic()
    with PeakMemory() as memory:
        message = attack(world)
    assert refused_by.format(pk=first["pk"]) in message
    cap = "DBSYNC_MAX_LINKS_PER_OBJECT" if keys < 100_000 else "DBSYNC_MAX_JSON_ITEMS"
    assert cap in message
    assert time.monotonic() - started < 30
    assert memory.growth < 100, f"the sync's memory grew by {memory.growth} MB"
    integrity.assert_unchanged(before)


LONG_LINES = {
    # where: (path, what the message names, after the objects' transaction?)
    "a dump": ("/api/hcore/gentity/", "hcore.gentity.json line 2", False),
    "the records summary": (SUMMARY, "the records summary, line 2", True),
    "the file listing": (LISTING, "the file listing, line 2", True),
}


@pytest.mark.parametrize("where", sorted(LONG_LINES))
def test_a_very_long_line_is_refused_by_the_cap_without_reading_it_whole(world, integrity, where):
    """The proxy inserts a line of 200 MB into a dump, the records summary or the file
    listing, over the cap of what one object may take (DBSYNC_MAX_OBJECT_BYTES, 64 MiB):
    refused, naming the remote, the document and the line; the line is never held whole
    in memory (the sync's memory grows by at most twice the cap); nothing changes."""
    path, named, after_objects = LONG_LINES[where]
    real = requests.get(world.attacked.url + path, timeout=60).content.split(b"\n")
    body = b"\n".join([real[0], b'{"pk": 1, "x": "' + b"z" * (200 * MB) + b'"},', *real[1:]])
    world.proxy.on(lambda p: p.split("?")[0] == path, lambda *_: (200, {}, body))
    exclude = EXCEPT_REGISTRY if after_objects else ("dbsync_syncrun",)
    before = integrity.snapshot(exclude=exclude)
    with PeakMemory() as memory:
        message = attack(world)
    # Reading up to the cap may take twice the cap (the reader joins its buffers).
    assert memory.growth < 150, f"the sync's memory grew by {memory.growth} MB"
    assert message.startswith(str(world.db)) and named in message
    assert "more than 67108864 bytes" in message and "DBSYNC_MAX_OBJECT_BYTES" in message
    integrity.assert_unchanged(before, exclude=exclude)


# --- names that would escape the work folder -----------------------------------------------------

HOSTILE_NAMES = [
    "../../../escaped",
    "/tmp/dbsync-escaped",
    "..\\..\\escaped",
    "..%2f..%2fescaped",
    "hcore.station/../../escaped",
]


def tree(world):
    """Every path under the test's folder, the work folder's own content left out; and
    the places outside it that a hostile name could reach."""
    base = world.root.parent
    work = world.root / "work"
    inside = sorted(str(p.relative_to(base)) for p in base.rglob("*") if work not in p.parents)
    reachable = []
    for name in HOSTILE_NAMES:
        for start in (work, work / "split", Path.cwd()):
            for suffix in ("", ".json", ".json.part"):
                target = (start / (name + suffix)).resolve()
                if target.exists():
                    reachable.append(str(target))
    return inside, reachable


def on_manifest(world, transform):
    def action(path, status, headers, body):
        manifest = json.loads(body)
        transform(manifest)
        return status, headers, json.dumps(manifest).encode()

    world.proxy.on(lambda path: path.split("?")[0] == MANIFEST, action)


def planned_dump_names():
    return {dump_name(lbl) for lbl in make_plan("hcore").labels}


def test_model_names_with_path_characters_in_the_manifest_write_nothing_outside_the_work_dir(
    world,
):
    """The proxy adds manifest entries named by paths (``../``, ``/``, ``\\``, absolute,
    ``..%2f``), each pointing at the station dump. They are not planned models: nothing is
    fetched for them and nothing is written outside the work folder; --fetch-only writes
    only the planned dumps, and --resume installs them."""

    def add(manifest):
        station = next(e for e in manifest["models"] if e["model"] == "hcore.station")
        manifest["models"] += [dict(station, model=name) for name in HOSTILE_NAMES]

    on_manifest(world, add)
    work = world.root / "work" / "fetched"
    before = tree(world)
    sync(world.db, "--full", "--fetch-only", "-w", str(work))
    assert {p.name for p in work.iterdir()} == planned_dump_names() | {"fetch.json"}
    sync(world.db, "--resume", "-w", str(work))
    assert tree(world) == before
    assert_same_graph(remote_graph(world.attacked), local_graph(world.db))


def test_a_manifest_naming_a_model_by_a_path_fails_clearly_and_writes_nothing(world, integrity):
    """The proxy renames the station's manifest entry to ``../../hcore.station``: the
    remote does not serve hcore.station, says the error; nothing is written anywhere."""

    def rename(manifest):
        station = next(e for e in manifest["models"] if e["model"] == "hcore.station")
        station["model"] = "../../hcore.station"

    on_manifest(world, rename)
    before, files = integrity.snapshot(), tree(world)
    message = attack(world)
    assert "does not serve hcore.station" in message
    assert tree(world) == files
    integrity.assert_unchanged(before)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_model_field_with_path_characters_in_a_dump_is_refused(world, integrity, name):
    """The proxy sets the ``model`` of the first object of the station dump to a path:
    refused, naming the remote, the dump and the name; nothing written outside the work
    folder, nothing changed."""

    def rename(objects):
        objects[0]["model"] = name

    on_dump(world, "station", rename)
    before, files = integrity.snapshot(), tree(world)
    message = attack(world)
    assert f"the hcore.station dump from {world.db} contains an object of {name!r}" in message
    assert tree(world) == files
    integrity.assert_unchanged(before)


def test_resume_from_a_work_dir_with_path_characters_in_file_names_stays_inside(world):
    """The work folder of a --resume holds the remote's ``manage.py dumpdata hcore`` under
    file names with path characters (no proxy: the remote's own output, as an air-gapped
    transfer brings it). It is split inside the work folder and installed; nothing is
    written outside it."""
    work = world.root / "work" / "airgapped"
    work.mkdir(parents=True)
    dumped = world.attacked.manage("dumpdata", "hcore", "--indent", "2").stdout
    (work / "..%2f..%2fescaped.json").write_text(dumped)
    (work / "..\\..\\escaped.json").write_text("[]")
    before = tree(world)
    sync(world.db, "--resume", "-w", str(work))
    assert tree(world) == before
    assert {p.name for p in (work / "split").iterdir()} <= planned_dump_names()
    assert_same_graph(remote_graph(world.attacked), local_graph(world.db))


@pytest.mark.parametrize("where", ["model field", "fetch record"])
def test_resume_refuses_path_names_in_a_dump_or_fetch_record(world, integrity, where):
    """--resume from a work folder whose dumpdata names a model by a path, or whose fetch
    record names a dump outside the work folder: refused, saying which; nothing written
    outside the work folder, nothing changed."""
    work = world.root / "work" / "hostile"
    work.mkdir(parents=True)
    outside = world.root / "outside.json"
    outside.write_text(world.attacked_dump("stationtype").decode())
    if where == "model field":
        objects = json.loads(world.attacked.manage("dumpdata", "hcore.stationtype").stdout)
        objects[0]["model"] = "../../../escaped"
        (work / "dump.json").write_text(json.dumps(objects))
        expected = "'../../../escaped' (pk=1) is not a model of hcore being synced"
    else:
        record = {"remote": world.db.name, "full": True, "server_time": None, "keys": {}}
        record["files"] = {"hcore.stationtype": [str(work / ".." / ".." / "outside.json")]}
        (work / "fetch.json").write_text(json.dumps(record))
        expected = "outside the work folder"
    before, files = integrity.snapshot(), tree(world)
    with pytest.raises(CommandError, match=re.escape(expected)):
        sync(world.db, "--resume", "-w", str(work))
    assert tree(world) == files
    integrity.assert_unchanged(before)


# --- unicode and NUL bytes -----------------------------------------------------------------------

# Astral plane (music, emoji, a ZWJ sequence), right-to-left text and overrides,
# combining characters (not normalized: they must stay as they came).
UNICODE = "𝄞 😀 👩\u200d🔬 \u202eעברית\u202c مرحبا e\u0301 A\u030a \u0915\u094d\u0937"


def test_astral_rtl_and_combining_characters_arrive_intact(world):
    """The proxy puts astral, right-to-left and combining characters into a gentity's
    ``name`` (200 astral characters: the field's limit counts characters, not bytes)
    and ``remarks``, and into a person's ``last_name``: each arrives as it was sent."""
    sent = {}

    def gentity(objects):
        objects[0]["fields"].update(name="𝄞" * 200, remarks=UNICODE * 100)
        sent["gentity"] = objects[0]["pk"]

    def person(objects):
        objects[0]["fields"]["last_name"] = UNICODE
        sent["person"] = objects[0]["pk"]

    on_dump(world, "gentity", gentity)
    on_dump(world, "person", person)
    before = bystanders(world)
    assert attack(world) is None
    assert_bystanders_unchanged(world, before)
    row = m.Gentity.objects.get(original_db=world.db, original_id=sent["gentity"])
    assert (row.name, row.remarks) == ("𝄞" * 200, UNICODE * 100)
    row = m.Person.objects.get(original_db=world.db, original_id=sent["person"])
    assert row.last_name == UNICODE


@pytest.mark.parametrize("skip", [False, True], ids=["halt", "skip"])
def test_a_nul_byte_in_a_text_field_is_a_clear_per_object_error(world, integrity, skip):
    """The proxy puts a NUL byte (which PostgreSQL text cannot hold) into a gentity's
    ``name``: the run fails naming the remote, the model, the pk and the field, and
    changes nothing; with --skip that object (and what needs it) is skipped and reported,
    its earlier copy kept, and the rest installed."""
    sent = {}

    def nul(objects):
        objects[0]["fields"]["name"] = "before\x00after"
        sent["pk"] = objects[0]["pk"]

    on_dump(world, "gentity", nul)
    error = (
        f"{world.db}: could not install hcore.gentity(pk=%s): field 'name': text contains "
        f"a NUL character"
    )
    if not skip:
        before = integrity.snapshot()
        message = attack(world)
        assert error % sent["pk"] in message
        integrity.assert_unchanged(before)
        return
    first = served(world, "gentity")[0]  # the first object of the dump
    kept = m.Gentity.objects.get(original_db=world.db, original_id=first)
    before = bystanders(world)
    out, err = sync(world.db, "--full", "--skip")
    assert sent["pk"] == first and error % first in err
    assert m.Gentity.objects.get(pk=kept.pk).name == kept.name
    assert_bystanders_unchanged(world, before)
    assert last_run(world.db).status == SyncRun.SUCCEEDED
    assert any(e["pk"] == sent["pk"] and "NUL" in e["error"] for e in last_run(world.db).errors)


# --- records -------------------------------------------------------------------------------------


def attacked_series(world):
    return served(world, "timeseries")


def on_summary(world, series, **changes):
    """The proxy changes the summary's entry of a series (e.g. its checksum, so that the
    series is fetched whole)."""

    def action(path, status, headers, body):
        lines = []
        for line in body.split(b"\n"):
            text = line.rstrip(b",")
            if text.startswith(b"{") and json.loads(text)["pk"] == series:
                entry = dict(json.loads(text), **changes)
                line = json.dumps(entry).encode() + line[len(text) :]
            lines.append(line)
        return status, headers, b"\n".join(lines)

    world.proxy.on(lambda path: path.split("?")[0] == SUMMARY, action)


def on_batch(world, transform):
    world.proxy.on(
        lambda path: path.split("?")[0] == BATCH,
        lambda path, status, headers, body: (status, headers, transform(body)),
    )


def first_record_of(body, series, transform):
    """``body`` with the first record line of a series changed; and its line number."""
    lines = body.split(b"\n")
    start = lines.index(next(x for x in lines if x.startswith(b"# timeseries %d " % series)))
    lines[start + 1] = transform(lines[start + 1])
    return b"\n".join(lines), start + 2


@pytest.mark.parametrize("skip", [False, True], ids=["halt", "skip"])
def test_a_nul_byte_in_record_flags_is_a_clear_per_series_error(world, integrity, skip):
    """The proxy makes a series look rewritten (its summary's checksum), then puts a NUL
    byte into the flags of its first record: the records fail naming the remote, the
    series and the line, and none is installed; with --skip that series keeps its
    records and is reported."""
    series = attacked_series(world)[1]
    on_summary(world, series, checksum="0123456789abcdef")
    line = {}

    def nul(body):
        body, line["n"] = first_record_of(body, series, lambda x: x + b"A\x00B")
        return body

    on_batch(world, nul)
    before = integrity.snapshot(exclude=EXCEPT_REGISTRY)
    if not skip:
        message = attack(world)
        assert f"{world.db}: records of hcore.timeseries(pk={series}), line {line['n']}" in (
            message
        )
        assert "flags contain a NUL character" in message
    else:
        out, err = sync(world.db, "--full", "--skip")
        assert f"hcore.timeseries(pk={series}): its records, line {line['n']}" in err
        assert "flags contain a NUL character" in err and "1 series skipped" in out
    integrity.assert_unchanged(before, exclude=EXCEPT_REGISTRY)


# --- JSON nesting bombs --------------------------------------------------------------------------

DEPTH = 100_000
BOMB = b"[" * DEPTH + b"]" * DEPTH


def bomb_lines(body):
    """A JSON-lines body (dump, summary, listing) with a bomb as its second line."""
    lines = body.split(b"\n")
    return b"\n".join([lines[0], BOMB + b",", *lines[1:]])


def bomb_in_field(body):
    objects = objects_of(body)
    line = json.dumps(objects[0]).encode().replace(b'"remarks": ""', b'"remarks": ' + BOMB)
    assert BOMB in line
    return b"[\n" + line + b"\n]\n"


BOMBS = {
    # where: (path predicate, body transform, what the message names, objects installed?)
    "a field value": (model_path("gentity"), bomb_in_field, "hcore.gentity.json line 2", False),
    "a whole dump line": (model_path("gentity"), bomb_lines, "hcore.gentity.json line 2", False),
    "the manifest": (lambda p: p.split("?")[0] == MANIFEST, lambda b: BOMB, "/api/", False),
    "a keys listing": (
        lambda p: p.startswith("/api/hcore/gentity/keys/"),
        lambda b: BOMB,
        "hcore.gentity.keys.json",
        False,
    ),
    "the records summary": (
        lambda p: p.split("?")[0] == SUMMARY,
        bomb_lines,
        "the records summary, line 2",
        True,
    ),
    "the file listing": (
        lambda p: p.split("?")[0] == LISTING,
        bomb_lines,
        "the file listing, line 2",
        True,
    ),
}


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_a_json_nesting_bomb_is_a_clear_error_not_a_crash(world, integrity, where):
    """The proxy puts 100,000 nested arrays into a dump's field, as a dump's line, as the
    manifest, a keys listing (of an incremental run), a line of the records summary or of
    the file listing: the run fails with an error naming the remote and the document
    (no RecursionError, no traceback) and changes nothing (records and files fail after
    the objects' transaction: the objects, unchanged, are left as they were)."""
    predicate, transform, named, after_objects = BOMBS[where]
    world.proxy.on(
        predicate, lambda path, status, headers, body: (status, headers, transform(body))
    )
    exclude = EXCEPT_REGISTRY if after_objects else ("dbsync_syncrun",)
    before = integrity.snapshot(exclude=exclude)
    with PeakMemory() as memory:
        if where == "a keys listing":
            # The manifest counts one gentity more than the replica holds: the
            # incremental run asks for the whole keys listing (an unchanged remote
            # asks for none).
            world.proxy.on(lambda p: p.split("?")[0] == MANIFEST, count_one_more("hcore.gentity"))
            message = incremental(world)
        else:
            message = attack(world)
    assert message and str(world.db) in message and named in message
    assert "RecursionError" not in message and "Traceback" not in message
    assert re.search("depth|nested", message), message
    assert memory.growth < 100, f"the sync's memory grew by {memory.growth} MB"
    integrity.assert_unchanged(before, exclude=exclude)
    assert last_run(world.db).status == SyncRun.FAILED


def count_one_more(model):
    def transform(path, status, headers, body):
        manifest = json.loads(body)
        for entry in manifest["models"]:
            if entry["model"] == model:
                entry["count"] += 1
        return status, headers, json.dumps(manifest).encode()

    return transform


def incremental(world):
    try:
        sync(world.db)
    except CommandError as exc:
        return str(exc)
    return None


def test_nested_values_in_key_fields_are_skipped_and_reported_with_skip(world):
    """The proxy sends a unit whose variables are nested lists (``[[1], {"a": [2]}]``, parsed
    fine, 20 levels deep at most: deeper than DBSYNC_MAX_JSON_DEPTH, the run is refused,
    see the next test), and a unit and a time series that refer to a variable
    and a gentity the remote does not have: with --skip all three are reported and skipped
    (no crash on the unhashable keys), the rest installed, nothing of anyone else's
    touched."""
    sent = {}

    def nested(objects):
        objects[0]["fields"]["variables"] = [[1], {"a": [2]}, json.loads("[" * 20 + "]" * 20)]
        objects[1]["fields"]["variables"] = [10**9]
        sent["unit"], sent["other unit"] = objects[0]["pk"], objects[1]["pk"]

    def dangling(objects):
        objects[0]["fields"]["gentity"] = 10**9
        sent["series"] = objects[0]["pk"]

    on_dump(world, "unitofmeasurement", nested)
    on_dump(world, "timeseries", dangling)
    before = bystanders(world)
    out, err = sync(world.db, "--full", "--skip")
    assert f"hcore.unitofmeasurement(pk={sent['unit']}): field 'variables': expected a list" in err
    assert f"hcore.timeseries(pk={sent['series']}): refers to hcore.gentity(pk={10**9})" in err
    assert f"hcore.unitofmeasurement(pk={sent['other unit']}): refers to hcore.variable" in err
    assert_bystanders_unchanged(world, before)
    assert last_run(world.db).status == SyncRun.SUCCEEDED


def test_an_object_nested_deeper_than_the_cap_refuses_the_run(world, integrity):
    """One unit's variables nested 500 levels deep: the parse stops at
    DBSYNC_MAX_JSON_DEPTH, naming the dump and its line, with --skip too (a line that
    cannot be read names no object to skip), and nothing changes."""

    def build(obj):
        obj["fields"]["variables"] = json.loads("[" * 500 + "]" * 500)
        return json.dumps(obj).encode()

    replace_line(world, "unitofmeasurement", build)
    before = integrity.snapshot()
    for args in ([], ["--skip"]):
        message = attack(world, *args)
        assert "hcore.unitofmeasurement.json line 2: JSON nested deeper than 32 levels" in message
        assert "DBSYNC_MAX_JSON_DEPTH" in message
        integrity.assert_unchanged(before)


# --- gzip bombs ----------------------------------------------------------------------------------


@functools.cache
def gzip_of_zeros(size):
    """A gzip stream of ``size`` zero bytes (256 MiB: about 250 kB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MB)
    return b"".join([*(packer.compress(block) for _ in range(size // MB)), packer.flush()])


def compressed(body, encoding):
    return lambda path, status, headers, _: (
        status,
        dict(headers, **{"Content-Encoding": encoding}),
        body,
    )


def test_a_compressed_answer_is_accepted(world):
    """The client accepts compressed answers (requests sends ``Accept-Encoding: gzip``):
    the proxy serves the real dumps gzip-compressed, and the sync installs them."""
    assert "gzip" in RemoteClient(world.db).session.headers["Accept-Encoding"]

    def gzipped(path, status, headers, body):
        return status, dict(headers, **{"Content-Encoding": "gzip"}), gzip.compress(body)

    world.proxy.on(lambda path: path.startswith("/api/hcore/"), gzipped)
    assert attack(world) is None
    assert_same_graph(remote_graph(world.attacked), local_graph(world.db))


GZIP_BOMBS = {
    # case: (path, Content-Encoding, layers, DBSYNC_MAX_RESPONSE_BYTES, the cap named)
    "a dump": (model_path("station"), "gzip", 1, 32 * MB, "DBSYNC_MAX_RESPONSE_BYTES"),
    "a dump, gzip twice": (
        model_path("station"),
        "gzip, gzip",
        2,
        32 * MB,
        "DBSYNC_MAX_RESPONSE_BYTES",
    ),
    "the manifest, default caps": (
        lambda path: path.split("?")[0] == MANIFEST,
        "gzip",
        1,
        None,
        "DBSYNC_MAX_OBJECT_BYTES",
    ),
}


@pytest.mark.parametrize("case", sorted(GZIP_BOMBS))
def test_a_gzip_bomb_is_refused_by_the_cap_on_the_inflated_size(world, integrity, settings, case):
    """The proxy answers with about 250 kB of gzip (once, or twice over) that inflates to
    256 MiB, over the cap (32 MiB, or by default the 64 MiB that a JSON document read whole
    may take): refused by the cap on the inflated size, inflated a piece at a time (the
    sync's memory grows by less than the cap); nothing changes."""
    predicate, encoding, layers, cap, named = GZIP_BOMBS[case]
    if cap is not None:
        settings.DBSYNC_MAX_RESPONSE_BYTES = cap
    body = gzip_of_zeros(256 * MB)
    if layers == 2:
        body = gzip.compress(body)
    assert len(body) < MB
    world.proxy.on(predicate, compressed(body, encoding))
    before = integrity.snapshot()
    with PeakMemory() as memory:
        message = attack(world)
    assert "larger than the cap" in message and named in message
    assert memory.growth < 150, f"the sync's memory grew by {memory.growth} MB"
    integrity.assert_unchanged(before)


# --- records and files of what is not the remote's ----------------------------------------------


def foreign_series(world, whose, avoid=None):
    """The pk of a series that is not one of the attacked remote's: as it is known here
    (local, or the other remote's local pk) or at the other remote (not ``avoid``)."""
    if whose == "a local series":
        return world.local["series"].pk
    theirs = m.Timeseries.objects.filter(original_db=world.other_db).exclude(original_id=avoid)
    theirs = theirs.order_by("pk").first()
    return theirs.pk if whose == "the other remote's, local pk" else theirs.original_id


@pytest.mark.parametrize(
    "whose", ["a local series", "the other remote's, local pk", "the other remote's, its pk"]
)
def test_a_records_batch_naming_a_series_not_of_the_remote_writes_nothing(world, integrity, whose):
    """The proxy makes one of the attacked remote's series look rewritten (so that it is
    fetched whole) and renames its block in the records batch after a series that is not
    the remote's: the records fail naming the series asked for, and no record changes
    anywhere."""
    series = attacked_series(world)[0]
    foreign = foreign_series(world, whose, avoid=series)
    on_summary(world, series, checksum="0123456789abcdef")
    on_batch(
        world,
        lambda body: body.replace(b"# timeseries %d " % series, b"# timeseries %d " % foreign, 1),
    )
    before = integrity.snapshot(exclude=EXCEPT_REGISTRY)
    message = attack(world)
    assert f"{world.db}: records of hcore.timeseries(pk={series}), line 1" in message
    assert f"expected the line '# timeseries {series} ...', found '# timeseries {foreign}" in (
        message
    )
    integrity.assert_unchanged(before, exclude=EXCEPT_REGISTRY)


def test_a_records_batch_with_an_extra_block_for_another_series_writes_nothing(world, integrity):
    """The proxy appends to a records batch a block of records for a local series: the
    batch is refused (data after the last series asked for); no record changes."""
    series, foreign = attacked_series(world)[0], world.local["series"].pk
    on_summary(world, series, checksum="0123456789abcdef")
    block = b"# timeseries %d utc_offset=120\n2025-06-01 02:00,666,\n" % foreign
    block += b"# end count=1 checksum=0000000000000001 utc_offset=120\n"
    on_batch(world, lambda body: body + block)
    before = integrity.snapshot(exclude=EXCEPT_REGISTRY)
    message = attack(world)
    assert "data after the last series" in message
    integrity.assert_unchanged(before, exclude=EXCEPT_REGISTRY)


def test_a_records_summary_listing_a_local_series_is_ignored(world):
    """The proxy adds to the records summary entries for the pk of a local series and of
    the other remote's series (as known here), with counts that differ from theirs: they
    are not series replicated from the attacked remote, so nothing is asked for them and
    nothing written into them; the sync succeeds."""
    pks = [world.local["series"].pk, foreign_series(world, "the other remote's, local pk")]
    assert not set(pks) & set(attacked_series(world))
    entry = {"count": 7, "start": "2020-01-01T00:00:00+00:00", "end": "2020-01-02T00:00:00+00:00"}
    entries = b"".join(
        json.dumps(dict(entry, pk=pk, checksum="00000000000000ff", utc_offset=0)).encode() + b",\n"
        for pk in pks
    )
    world.proxy.on(
        lambda path: path.split("?")[0] == SUMMARY,
        lambda path, status, headers, body: (
            status,
            headers,
            body.replace(b"[\n", b"[\n" + entries, 1),
        ),
    )
    before = bystanders(world)
    asked = len(world.proxy.requests)
    assert attack(world) is None
    assert_bystanders_unchanged(world, before)
    batches = [p for p in world.proxy.requests[asked:] if p.startswith(BATCH)]
    assert not batches, "nothing changed at the remote: no records were asked for"


def test_a_file_name_with_dot_dot_stays_under_media_root(world):
    """The proxy renames every file of the attacked remote's listing to a path that would
    escape (``../../../../escaped.txt``, ``/tmp/...``, ``..\\..``), and sets the gentityfile
    dump's ``content`` to ``../../../etc/passwd``. End to end (tests/test_records.py's
    test_local_file_names_stay_in_their_folder checks the names alone): the files are
    fetched again under their new names, inside the remote's own folder of MEDIA_ROOT;
    nothing is written anywhere else."""
    names = ["../../../../escaped.txt", "/tmp/dbsync-escaped.txt", "..\\..\\escaped.txt"]

    def rename(path, status, headers, body):
        lines, n = [], 0
        for line in body.split(b"\n"):
            text = line.rstrip(b",")
            if text.startswith(b"{") and json.loads(text)["name"]:
                entry = dict(json.loads(text), name=names[n % len(names)])
                line, n = json.dumps(entry).encode() + line[len(text) :], n + 1
            lines.append(line)
        return status, headers, b"\n".join(lines)

    world.proxy.on(lambda path: path.split("?")[0] == LISTING, rename)

    def content(objects):
        for obj in objects:
            obj["fields"]["content"] = "../../../etc/passwd"

    on_dump(world, "gentityfile", content)
    before = bystanders(world)
    media = world.root / "media"
    own = media / "gentityfile" / str(world.db.pk)
    outside = sorted(str(p) for p in world.root.parent.rglob("*") if own not in p.parents)
    assert attack(world) is None
    assert_bystanders_unchanged(world, before)
    assert sorted(str(p) for p in world.root.parent.rglob("*") if own not in p.parents) == outside
    assert not Path("/tmp/dbsync-escaped.txt").exists()
    stored = m.GentityFile.objects.filter(original_db=world.db).exclude(content="")
    assert stored.count() >= 2
    for obj in stored:
        assert obj.content.name.startswith(f"gentityfile/{world.db.pk}/{obj.original_id}/")
        assert ".." not in obj.content.name and obj.content.name.endswith("escaped.txt")
        assert (media / obj.content.name).resolve().is_relative_to(own.resolve())


def test_a_very_long_line_of_records_is_refused_without_reading_it_whole(world, integrity):
    """The proxy makes a series look rewritten and puts 200 MB of flags, without a line
    break, into its first record: that series' records fail (a field over csv's limit,
    named with the series and the line), and the sync never holds the line in memory
    (it reads lines 1 M characters at a time); no record changes."""
    series = attacked_series(world)[0]
    on_summary(world, series, checksum="0123456789abcdef")
    real = requests.get(world.attacked.url + BATCH, params={"series": series}, timeout=60)
    body = first_record_of(real.content, series, lambda line: line + b"f" * (200 * MB))[0]
    on_batch(world, lambda _: body)  # built before the measurement
    before = integrity.snapshot(exclude=EXCEPT_REGISTRY)
    with PeakMemory() as memory:
        message = attack(world)
    assert memory.growth < 100, f"the sync's memory grew by {memory.growth} MB"
    assert f"{world.db}: records of hcore.timeseries(pk={series}), line 2" in message
    assert "field larger than field limit" in message
    integrity.assert_unchanged(before, exclude=EXCEPT_REGISTRY)
