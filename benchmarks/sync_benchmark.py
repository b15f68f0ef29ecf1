#!/usr/bin/env python
"""Benchmark: a full first sync, an unchanged re-sync and a 1 % re-sync, side by side
with Django's ``loaddata`` and a raw PostgreSQL ``COPY`` of the same rows.

Everything runs on this machine: a remote instance (its own PostgreSQL database,
``generate_sample_data``, gunicorn on loopback) and a local one. Prints a table of
rows, seconds, rows/s and peak memory (MB) per step; each sync's fetch phase (every
dump to disk) and install phase (the objects' transaction) are read from the
command's ``-v 2`` output, and the install phase's rate is compared with the raw COPY.

    .venv/bin/python benchmarks/sync_benchmark.py                 # 200,000 stations
    .venv/bin/python benchmarks/sync_benchmark.py --stations 20000

``--name NAME --keep`` keeps the databases under fixed names (``NAME_remote``,
``NAME_local``…) and the instances' directories in ``/tmp/NAME``; ``--name NAME
--reuse`` then runs only ``--turns`` unchanged re-syncs on them, without generating or
syncing anything first (the local database is migrated first, for a newer code).

``loaddata`` is slow (it saves object by object), so it runs on a share of the data
(``--loaddata-share``, default 10 %) and its rate is what is compared.
"""

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.instance import PG_BASE, Instance, Template, admin_execute, instance_env  # noqa: E402


def run_measured(args, env):
    """Run a command; return (seconds, peak RSS in MB, stdout)."""
    out = tempfile.TemporaryFile(mode="w+")
    start = time.perf_counter()
    process = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out.seek(0)
    text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{text[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, text


def manage_args(*args):
    return [sys.executable, str(ROOT / "manage.py"), *args]


def register_remote(remote, env):
    """Register ``remote`` as "bench" in the local instance of ``env``."""
    run_measured(
        manage_args(
            "dbsync_addremote",
            "--name",
            "bench",
            "--hostname",
            remote.hostname,
            "--ip",
            "127.0.0.1",
            "--port",
            str(remote.port),
            "--scheme",
            remote.scheme,
        ),
        env,
    )


def server_peak_mb(instance):
    """Peak RSS of the remote's gunicorn processes (the largest one)."""
    peak = 0
    for pid in [instance.process.pid, *children(instance.process.pid)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def hcore_tables(conn):
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'hcore_%' "
        "AND tablename <> 'hcore_userprofile' AND tablename NOT LIKE '%maintainers'"
    ).fetchall()
    return [r[0] for r in rows]


def count_rows(url):
    with psycopg.connect(url) as conn:
        return sum(
            conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in hcore_tables(conn)
        )


def raw_copy(remote_url, target_url, checked=True):
    """COPY every hcore table from the remote into an empty database; time the load.

    ``checked``: with the tables' foreign-key constraints checked at commit, as they
    are for any writer of these tables (the fair baseline); without, as pg_restore
    loads data (triggers off), the bound no transactional writer can reach.
    """
    dumps = {}
    with psycopg.connect(remote_url) as src:
        for table in ["auth_user", *hcore_tables(src)]:
            buf = io.BytesIO()
            with src.cursor().copy(f'COPY "{table}" TO STDOUT') as copy:
                for block in copy:
                    buf.write(block)
            dumps[table] = buf.getvalue()
    rows = 0
    with psycopg.connect(target_url) as dst:
        if not checked:
            dst.execute("SET session_replication_role = replica")
        start = time.perf_counter()
        for table, data in dumps.items():
            with dst.cursor().copy(f'COPY "{table}" FROM STDIN') as copy:
                copy.write(data)
            if table != "auth_user":
                rows += data.count(b"\n")
        dst.commit()
        seconds = time.perf_counter() - start
    return rows, seconds


def age_remote(instance):
    """Make the remote's data a day old, as it is at a nightly run."""
    with psycopg.connect(f"{PG_BASE}/{instance.db_name}") as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE column_name = "
            "'last_modified' AND table_name LIKE 'hcore_%'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f"UPDATE \"{table}\" SET last_modified = now() - interval '1 day'")
        # The records' summaries too: their change times are what an incremental
        # records summary compares with the last run's cursor.
        conn.execute("UPDATE hcore_recordssummary SET changed = changed - interval '1 day'")


FETCH_PHASE = re.compile(r"^Fetch phase: \d+ dumps, (\d+) bytes in ([\d.]+) s$", re.M)
INSTALL_PHASE = re.compile(
    r"^Install phase: ([\d.]+) s in the objects' transaction, ([\d.]+) s analyzing$", re.M
)


RECEIVED = re.compile(r"^Received (\d+) bytes from the remote in all$", re.M)
SYNC_TOOK = re.compile(r"^Sync took ([\d.]+) s", re.M)

FETCHED = {}  # sync name -> (bytes, seconds) of its fetch phase
RECEIVED_BYTES = {}  # sync name -> every response body's bytes (manifest, records, files)


def phases(name, rows, out):
    """The fetch and install phases of a sync, from the command's ``-v 2`` lines: rows
    of the table (none from a version that does not log them)."""
    fetch, install = FETCH_PHASE.search(out), INSTALL_PHASE.search(out)
    if received := RECEIVED.search(out):
        RECEIVED_BYTES[name] = int(received[1])
        print(f"  {name}: {int(received[1])} bytes received from the remote", flush=True)
    if took := SYNC_TOOK.search(out):
        # The sync itself, without Python's and Django's start (seconds on a busy machine).
        print(f"  {name}: the sync itself took {took[1]} s (the process's start apart)")
    found = []
    if fetch:
        FETCHED[name] = (int(fetch[1]), float(fetch[2]))
        found.append((f"  {name}: fetch phase", rows, float(fetch[2]), None))
    if install:
        found.append((f"  {name}: install phase (transaction)", rows, float(install[1]), None))
        found.append((f"  {name}: ANALYZE after the COMMIT", rows, float(install[2]), None))
    return found


def report(name, n, seconds, peak):
    rate = f"{n / seconds:9.0f}" if seconds else f"{'':9}"
    secs = f"{seconds:8.1f}" if seconds is not None else f"{'':8}"
    mb = f"{peak:8.0f}" if peak else f"{'':8}"
    print(f"{name:42} {n:9} {secs} {rate} {mb}", flush=True)


class Results(list):
    """Rows of the table, each printed as soon as it is measured."""

    def append(self, row):
        report(*row)
        super().append(row)

    def extend(self, rows):
        for row in rows:
            self.append(row)


def resync_kept(options):
    """``--turns`` unchanged re-syncs of the databases that ``--name NAME --keep`` kept."""
    var = Path(f"/tmp/{options.name}")
    remote = Instance(
        None,
        hostname="bench-remote.example.org",
        name=f"{options.name}_remote",
        var_dir=var / "remote",
    )
    local_env = instance_env(f"{options.name}_local", var / "local", DBSYNC_WORK_DIR=var / "work")
    run_measured(manage_args("migrate", "-v0"), local_env)
    remote.manage("migrate", "-v0")
    results = Results()
    try:
        print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        remote.start(workers=2)
        rows = count_rows(f"{PG_BASE}/{remote.db_name}")
        print(f"  {rows} rows in hcore tables", flush=True)
        register_remote(remote, local_env)
        sync = manage_args("hcore_remotesyncdb", "-r", "bench", "-N", "-v", "2")
        for turn in range(1, options.turns + 1):
            seconds, peak, out = run_measured(sync, local_env)
            results.append((f"dbsync: re-sync, nothing changed ({turn})", rows, seconds, peak))
            results.extend(phases(f"unchanged {turn}", rows, out))
            if options.print_output:
                print(out, flush=True)
    finally:
        remote.stop()
    print("load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=200_000)
    parser.add_argument("--timeseries-per-station", type=float, default=2)
    parser.add_argument("--loaddata-share", type=float, default=0.1)
    parser.add_argument(
        "--files-per-station",
        type=float,
        default=0,
        help="GentityFile objects with a file, per station (the files listing's cost).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the databases afterwards.")
    parser.add_argument(
        "--syncs-only",
        action="store_true",
        help="The three syncs only: no raw COPY nor loaddata to compare with.",
    )
    parser.add_argument(
        "--name",
        help="Name the databases NAME_remote, NAME_local… and keep the instances' "
        "directories in /tmp/NAME (default: names of this process).",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="Only re-sync, unchanged, the databases that --name NAME --keep kept.",
    )
    parser.add_argument(
        "--turns", type=int, default=3, help="Unchanged re-syncs with --reuse (default 3)."
    )
    parser.add_argument(
        "--print-output", action="store_true", help="With --reuse: print each sync's -v 2 log."
    )
    options = parser.parse_args()
    if options.reuse:
        if not options.name:
            parser.error("--reuse needs --name")
        return resync_kept(options)

    prefix = options.name or f"dbsync_bench_{os.getpid()}"
    var = Path(
        f"/tmp/{options.name}" if options.name else tempfile.mkdtemp(prefix="dbsync-bench-")
    )
    template = Template(name=f"{options.name}_tpl" if options.name else None)
    remote = Instance(
        template,
        hostname="bench-remote.example.org",
        name=f"{prefix}_remote",
        var_dir=var / "remote",
    )
    local_db = f"{prefix}_local"
    copy_db = f"{prefix}_copy"
    load_db = f"{prefix}_load"
    for name in (local_db, copy_db, load_db):
        admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"')
    local_env = instance_env(local_db, var / "local", DBSYNC_WORK_DIR=var / "work")
    results = Results()
    try:
        print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        print(f"Generating {options.stations} stations at the remote…", flush=True)
        t0 = time.perf_counter()
        remote.generate(
            stations=options.stations,
            timeseries_per_station=options.timeseries_per_station,
            events_per_station=0.5,
            files_per_station=options.files_per_station,
            seed=11,
            timeout=None,
        )
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
        age_remote(remote)
        remote.start(workers=2)
        remote_url = f"{PG_BASE}/{remote.db_name}"
        rows = count_rows(remote_url)
        print(f"  {rows} rows in hcore tables", flush=True)
        register_remote(remote, local_env)
        # -v 2: the command logs its fetch and install phases.
        sync = manage_args("hcore_remotesyncdb", "-r", "bench", "-N", "-v", "2")

        seconds, peak, out = run_measured(sync, local_env)
        results.append(("dbsync: first full sync", rows, seconds, peak))
        results.extend(phases("first sync", rows, out))
        print(out.strip().splitlines()[-1], flush=True)

        seconds, peak, out = run_measured(sync, local_env)
        results.append(("dbsync: re-sync, nothing changed", rows, seconds, peak))
        results.extend(phases("unchanged", rows, out))

        changed = max(1, options.stations // 100)
        remote.sql(
            "UPDATE hcore_gentity SET name = name || ' (renamed)', last_modified = now() "
            "WHERE id IN (SELECT gpoint_ptr_id FROM hcore_station ORDER BY gpoint_ptr_id "
            "LIMIT %s)",
            [changed],
        )
        remote.sql(
            "UPDATE hcore_timeseries SET remarks = 'changed', last_modified = now() "
            "WHERE id IN (SELECT id FROM hcore_timeseries ORDER BY id LIMIT %s)",
            [changed * int(options.timeseries_per_station or 1)],
        )
        seconds, peak, out = run_measured(sync, local_env)
        results.append(("dbsync: re-sync, 1 % changed", rows, seconds, peak))
        results.extend(phases("1 % changed", rows, out))
        results.append(("remote API server (gunicorn worker)", rows, None, server_peak_mb(remote)))
        if options.syncs_only:
            return

        copy_rows, seconds = raw_copy(remote_url, f"{PG_BASE}/{copy_db}")
        results.append(("raw COPY of the same rows", copy_rows, seconds, None))
        admin_execute(f'DROP DATABASE "{copy_db}" WITH (FORCE)')
        admin_execute(f'CREATE DATABASE "{copy_db}" TEMPLATE "{template.name}"')
        copy_rows, seconds = raw_copy(remote_url, f"{PG_BASE}/{copy_db}", checked=False)
        results.append(("raw COPY, foreign keys not checked", copy_rows, seconds, None))

        # loaddata saves object by object: it is measured on a smaller remote of the
        # same shape (a share of the stations), and its rate is what is compared.
        small = Instance(template, hostname="bench-small.example.org")
        try:
            small.generate(
                stations=max(100, int(options.stations * options.loaddata_share)),
                timeseries_per_station=options.timeseries_per_station,
                events_per_station=0.5,
                seed=11,
            )
            fixture = var / "share.json"
            dumped = small.manage(
                "dumpdata",
                "hcore",
                "auth.user",
                "--exclude",
                "hcore.userprofile",
                timeout=3600,
            ).stdout
            fixture.write_text(dumped)
            count = len(json.loads(dumped))
            del dumped
        finally:
            small.drop()
        seconds, peak, _ = run_measured(
            manage_args("loaddata", str(fixture)), instance_env(load_db, var / "load")
        )
        results.append(
            (f"Django loaddata ({options.loaddata_share * 100:g} % size)", count, seconds, peak)
        )
    finally:
        remote.stop()
        if not options.keep:
            remote.drop()
            for name in (local_db, copy_db, load_db):
                admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            template.drop()

    print()
    # Figures taken on a busy machine must say so (docs/benchmarks.md).
    print("load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"{'step':42} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'peak MB':>8}")
    for row in results:
        report(*row)
    ours = results[0][1] / results[0][2]
    copy = next(r for r in results if r[0].startswith("raw COPY of"))
    unchecked = next(r for r in results if r[0].startswith("raw COPY, foreign"))
    load = next(r for r in results if r[0].startswith("Django loaddata"))
    print()
    print(f"first sync / raw COPY rate: {ours / (copy[1] / copy[2]):.2f}")
    print(f"first sync / raw COPY without key checks: {ours / (unchecked[1] / unchecked[2]):.2f}")
    print(f"first sync / loaddata rate: {ours / (load[1] / load[2]):.1f}x")
    install = next(
        (r for r in results if r[0] == "  first sync: install phase (transaction)"), None
    )
    if "first sync" in FETCHED:
        size, seconds = FETCHED["first sync"]
        print(
            f"first sync's fetch phase: {results[0][1] / seconds:.0f} rows/s, "
            f"{size / seconds / 1e6:.1f} MB/s ({size / 1e6:.1f} MB in {seconds:.1f} s)"
        )
    for name, size in RECEIVED_BYTES.items():
        print(f"{name}: {size} bytes received from the remote (every request)")
    if install:
        rate = install[1] / install[2]
        print(
            f"first sync's install phase: {rate:.0f} rows/s; raw COPY {copy[1] / copy[2]:.0f} "
            f"rows/s; install phase / raw COPY rate: {rate / (copy[1] / copy[2]):.2f}"
        )


if __name__ == "__main__":
    main()
