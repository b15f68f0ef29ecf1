"""Upgrading a populated database: one built and synced by the previous release of main
(tests/upgrade/PREVIOUS_RELEASE) is migrated by this release, and a sync then runs.

Keep this test for every later release, and bump PREVIOUS_RELEASE at each one.

The previous release's code is extracted with ``git archive`` and run as ``manage.py``
subprocesses with this virtualenv's Python; this release's likewise. Nothing here
imports dbsync: the test sees what an operator sees (commands, their exit status and
output, and SQL), so it survives any move of the code inside the package.
"""

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from hcore.models import Station, Timeseries, UnitOfMeasurement
from protocol.rowhash import served_hash_sql
from tests.instance import PG_BASE, ROOT, admin_execute, instance_env, manage

PREVIOUS_RELEASE_FILE = ROOT / "tests" / "upgrade" / "PREVIOUS_RELEASE"
TOKEN = "upgrade-test-token-1f6c3b"
REMOTE_NAME = "upstream"
COUNTED = {
    "stations": "hcore_station",
    "series": "hcore_timeseries",
    "records": "hcore_record",
    "files": "hcore_gentityfile",
    "events": "hcore_gentityevent",
    "instruments": "hcore_instrument",
}


def previous_release():
    lines = PREVIOUS_RELEASE_FILE.read_text().splitlines()
    (rev,) = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return rev


def run(root, env, *args, timeout=600):
    """``manage.py`` of the code at ``root``; fails the test with its output if it fails."""
    done = manage(env, *args, check=False, timeout=timeout, root=root)
    assert done.returncode == 0, (
        f"manage.py {' '.join(args)} ({root}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


def sql(db_name, query, params=None):
    with psycopg.connect(f"{PG_BASE}/{db_name}", autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


def counts(db_name):
    return {
        what: sql(db_name, f"SELECT count(*) FROM {table}")[0][0]
        for what, table in COUNTED.items()
    }


def records_by_series(db_name, original):
    """(series key, count, sum of values, flags) per series: the remote's ids at the
    remote, the stored original ids here."""
    key = "t.original_id" if original else "t.id"
    return sorted(
        sql(
            db_name,
            f"SELECT {key}, count(r.*), round(sum(r.value)::numeric, 6), "
            f"string_agg(r.flags, '' ORDER BY r.timestamp) "
            f"FROM hcore_timeseries t LEFT JOIN hcore_record r ON r.timeseries_id = t.id "
            f"GROUP BY {key}",
        )
    )


def local_stations(db_name):
    """Original id at the remote -> (local pk, name) of every replicated station."""
    rows = sql(
        db_name,
        "SELECT g.original_id, g.id, g.name FROM hcore_station s "
        "JOIN hcore_gentity g ON g.id = s.gpoint_ptr_id",
    )
    return {original: (pk, name) for original, pk, name in rows}


@pytest.fixture
def old_code(tmp_path):
    """The previous release's source tree, extracted from this repository's history."""
    rev = previous_release()
    reason = (
        f"the previous release {rev} (tests/upgrade/PREVIOUS_RELEASE) cannot be extracted: "
        "{why}; the upgrade path from it is UNTESTED"
    )
    if shutil.which("git") is None:
        pytest.skip(reason.format(why="git is not installed"))
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if found.returncode != 0:
        why = found.stderr.strip() or "the commit is not in this clone (a shallow clone?)"
        pytest.skip(reason.format(why=why))
    folder = tmp_path / "previous-release"
    folder.mkdir()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", rev], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True, timeout=120)
    archive.stdout.close()
    assert archive.wait(timeout=60) == 0
    return folder


@pytest.fixture
def aggregate():
    """A fresh, empty PostgreSQL database for the local aggregate, dropped afterwards."""
    name = f"dbsync_upgrade_{uuid.uuid4().hex[:8]}"
    var_dir = Path(tempfile.mkdtemp(prefix="dbsync-upgrade-"))
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, var_dir
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(var_dir, ignore_errors=True)


@pytest.fixture
def private_remote(make_instance):
    """A remote (this release's code) that serves only requests with the token, with
    records and a few files."""
    instance = make_instance(hostname="upgrade.example.org", API_AUTH="token", API_TOKENS=TOKEN)
    instance.generate(stations=12, seed=11, files_per_station=0.3, records_per_series=300)
    return instance.start()


def test_a_database_of_the_previous_release_is_migrated_and_syncs_on(
    old_code, aggregate, private_remote
):
    remote = private_remote
    db_name, var_dir = aggregate
    env = instance_env(db_name, var_dir)
    env.pop("DBSYNC_ALLOW_HTTP_CREDENTIALS", None)
    media = var_dir / "media"

    # the remote refuses a request without the token: the token is what gets us in
    anonymous = requests.get(
        f"{remote.url}/api/hcore/station/", headers={"Host": remote.hostname}, timeout=30
    )
    assert anonymous.status_code == 401, anonymous.status_code

    # --- the previous release: build, register, store a token in clear, sync ----------
    where = run(old_code, env, "shell", "-c", "import dbsync; print(dbsync.__file__)")
    assert Path(where.split()[-1]).is_relative_to(old_code), where  # not this tree's
    run(old_code, env, "migrate", "-v0")
    run(
        old_code, env, "dbsync_addremote", "--name", REMOTE_NAME, "--hostname", remote.hostname,
        "--ip", "127.0.0.1", "--port", str(remote.port),
    )  # fmt: skip
    # The previous release has no option for secrets: an operator set the token in the
    # admin or the shell, and it was stored as typed.
    sql(db_name, "UPDATE dbsync_database SET token = %s WHERE name = %s", [TOKEN, REMOTE_NAME])
    run(old_code, env, "hcore_remotesyncdb", "-r", REMOTE_NAME, "-N")
    # The previous release's client, incremental, from this release's server (protocol
    # 2: it reads what it knows of the manifest, and the timestamp cursor still works).
    (first,) = remote.sql("SELECT min(gentity_ptr_id) FROM hcore_gpoint")[0]
    remote.sql(
        "UPDATE hcore_gentity SET name = 'Renamed for the old client', last_modified = now() "
        "WHERE id = %s",
        [first],
    )
    run(old_code, env, "hcore_remotesyncdb", "-r", REMOTE_NAME, "-N")
    assert sql(
        db_name,
        "SELECT count(*) FROM hcore_gentity WHERE name = 'Renamed for the old client'",
    ) == [(1,)]
    assert sql(db_name, 'SELECT "full" FROM dbsync_syncrun ORDER BY id') == [(True,), (False,)]

    assert counts(db_name) == counts(remote.db_name)
    assert counts(db_name)["records"] > 0 and counts(db_name)["files"] > 0
    ((database_id, cursor_before, records_cursor_before),) = sql(
        db_name, "SELECT id, sync_cursor, records_cursor FROM dbsync_database"
    )
    assert cursor_before is not None and records_cursor_before is not None
    stations_before = local_stations(db_name)
    runs_before = sql(db_name, "SELECT count(*) FROM dbsync_syncrun")[0][0]

    # --- this release: migrate ----------------------------------------------------------
    out = run(ROOT, env, "migrate")
    assert "Applying dbsync.0005_encrypted_credentials... OK" in out
    run(ROOT, env, "migrate", "--check")  # exits 1 if any migration is left unapplied
    ((stored,),) = sql(db_name, "SELECT token FROM dbsync_database WHERE id = %s", [database_id])
    assert stored.startswith("fernet:") and TOKEN not in stored
    ((column_type,),) = sql(
        db_name,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'dbsync_database' AND column_name = 'token'",
    )
    assert column_type == "text"
    # what the migration kept: the remote, its cursors, every replicated row
    assert sql(db_name, "SELECT id, sync_cursor, records_cursor FROM dbsync_database") == [
        (database_id, cursor_before, records_cursor_before)
    ]
    assert local_stations(db_name) == stations_before
    # change capture added to the populated tables: every row marked (backfilled), the
    # triggers on, the counters equal to the tables
    assert sql(db_name, "SELECT count(*) FROM hcore_gentity WHERE dbsync_xid IS NULL") == [(0,)]
    assert (
        sql(
            db_name,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'dbsync_capture_%%' "
            "AND tgenabled = 'A'",
        )[0][0]
        >= 26 * 5
    )
    assert sql(
        db_name,
        "SELECT sum(row_count) FROM dbsync_change_counter WHERE table_name = 'hcore_station'",
    ) == [(len(stations_before),)]
    # and each table's running checksum (hcore.checksums) computed after the migrate,
    # equal to its rows' hashes
    for model in (Station, Timeseries, UnitOfMeasurement):
        table = model._meta.db_table
        (kept,), (computed,) = (
            sql(
                db_name,
                "SELECT sum(checksum) FROM dbsync_change_counter WHERE table_name = %s",
                [table],
            )[0],
            sql(db_name, f"SELECT COALESCE(sum({served_hash_sql(model)}), 0) FROM {table} t")[0],
        )
        assert kept == computed and computed != 0, table

    # --- a change at the remote, and this release's incremental sync -------------------
    renamed, *untouched = sorted(
        pk for (pk,) in remote.sql("SELECT gpoint_ptr_id FROM hcore_station")
    )
    remote.shell(
        "from hcore.models import Station\n"
        f"s = Station.objects.get(pk={renamed}); s.name = 'Renamed after the upgrade'; s.save()\n"
    )
    (series,) = remote.sql("SELECT min(id) FROM hcore_timeseries")[0]
    remote.sql(
        'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
        "SELECT %s, timestamptz '2026-01-01 00:00+00' + n * interval '10 minutes', n, 'NEW' "
        "FROM generate_series(0, 47) n",
        [series],
    )
    # The token goes over HTTPS only, or with this setting over plain HTTP to a loopback
    # address: this remote is plain HTTP on 127.0.0.1.
    out = run(
        ROOT, dict(env, DBSYNC_ALLOW_HTTP_CREDENTIALS="1"), "hcore_remotesyncdb", "-r",
        REMOTE_NAME, "-N",
    )  # fmt: skip

    runs = sql(
        db_name,
        'SELECT status, "full" FROM dbsync_syncrun WHERE database_id = %s ORDER BY id',
        [database_id],
    )
    assert len(runs) == runs_before + 1
    assert runs[-1] == ("succeeded", False), out  # incremental: the cursor was kept
    stations_after = local_stations(db_name)
    assert stations_after[renamed][1] == "Renamed after the upgrade"
    # nothing re-created: every station keeps its local row
    assert {k: v[0] for k, v in stations_after.items()} == {
        k: v[0] for k, v in stations_before.items()
    }
    assert {k: stations_after[k] for k in untouched} == {k: stations_before[k] for k in untouched}
    # nothing duplicated, nothing missing: the same counts, records and files as the remote
    assert counts(db_name) == counts(remote.db_name)
    assert records_by_series(db_name, original=True) == records_by_series(
        remote.db_name, original=False
    )
    assert sql(db_name, "SELECT count(*) FROM hcore_record WHERE flags = 'NEW'")[0][0] == 48
    remote_files = dict(remote.sql("SELECT id, content FROM hcore_gentityfile"))
    local_files = dict(sql(db_name, "SELECT original_id, content FROM hcore_gentityfile"))
    assert local_files.keys() == remote_files.keys()
    for original, name in remote_files.items():
        remote_bytes = (remote.var_dir / "media" / name).read_bytes()
        assert (media / local_files[original]).read_bytes() == remote_bytes
    assert sql(db_name, "SELECT count(*) FROM dbsync_database") == [(1,)]

    # That run kept the remote's capture cursor: the next one runs on it.
    ((capture_cursor,),) = sql(db_name, "SELECT capture_cursor FROM dbsync_database")
    assert capture_cursor is not None
    remote.sql("UPDATE hcore_gentity SET name = 'Renamed by SQL' WHERE id = %s", [untouched[0]])
    out = run(
        ROOT, dict(env, DBSYNC_ALLOW_HTTP_CREDENTIALS="1"), "hcore_remotesyncdb", "-r",
        REMOTE_NAME, "-N", "-v", "2",
    )  # fmt: skip
    assert "objects written by transaction" in out, out
    assert local_stations(db_name)[untouched[0]][1] == "Renamed by SQL"


@pytest.mark.django_db(transaction=True)
def test_this_client_syncs_a_remote_of_the_previous_release(old_code, tmp_path):
    """A server of the previous release (no protocol, no capture): this client syncs it
    in full, then incrementally on the remote's clock, as before."""
    from types import SimpleNamespace

    from tests.graph import assert_same_graph, local_graph, remote_graph
    from tests.instance import Instance
    from tests.test_capture import sync
    from tests.test_sync import last_run, register

    template = f"dbsync_oldtpl_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{template}"')
    remote = None
    try:
        run(old_code, instance_env(template, tmp_path), "migrate", "-v0")
        remote = Instance(SimpleNamespace(name=template), hostname="previous.example.org")
        remote.manage(
            "generate_sample_data", "--stations", "10", "--seed", "4", "--files-per-station",
            "1", root=old_code,
        )  # fmt: skip
        remote.start(root=old_code)
        manifest = requests.get(
            f"{remote.url}/api/", headers={"Host": remote.hostname}, timeout=30
        ).json()
        assert "protocol" not in manifest  # truly the previous release's server
        database = register(remote)
        sync(database)
        assert_same_graph(remote_graph(remote), local_graph(database))
        (first,) = remote.sql("SELECT min(gentity_ptr_id) FROM hcore_gpoint")[0]
        remote.sql(
            "UPDATE hcore_gentity SET name = 'Renamed at the old remote', "
            "last_modified = now() WHERE id = %s",
            [first],
        )
        out = sync(database)
        assert "objects changed since" in out  # the clock's cursor
        assert last_run(database).full is False
        assert_same_graph(remote_graph(remote), local_graph(database))
        database.refresh_from_db()
        assert database.capture_cursor is None and database.remote_identity is None
        # Its files listing knows no changed_since: every run lists every file.
        assert database.files_cursor is None
        ((with_file,),) = remote.sql("SELECT count(*) FROM hcore_gentityfile WHERE content <> ''")
        assert with_file > 0
        assert f"Fetched 0 files (0 bytes): 0 new, 0 changed, {with_file} unchanged" in out, out
    finally:
        if remote is not None:
            remote.drop()
        admin_execute(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
