#!/usr/bin/env python
"""Benchmark: what --verify and --repair read from a remote, for a 1 % divergence,
against a full dump of the same objects.

Everything runs on this machine: a remote instance (its own PostgreSQL database,
``generate_sample_data``, gunicorn on loopback) and a local one that syncs it. Then 1 %
of the rows of the four largest tables are edited by hand at the replica (SQL, as a
divergence nothing else would notice), and ``hcore_remotesyncdb --verify``, ``--repair``
and ``--verify`` again run, each printing the bytes it read. The full dump is every
model's dump, downloaded whole. Objects only (``--no-records``): records and files are
compared by the remote's own summary and listing, which a full sync reads too.

    .venv/bin/python benchmarks/verify_benchmark.py                  # 20,000 stations
    .venv/bin/python benchmarks/verify_benchmark.py --stations 2000
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sync_benchmark import manage_args, register_remote  # noqa: E402
from tests.instance import PG_BASE, Instance, Template, admin_execute, instance_env  # noqa: E402

# (table, the edit, the key column): 1 % of each table's rows, by key.
EDITS = [
    ("hcore_gentity", "name = name || ' (edited)'", "id"),
    ("hcore_gpoint", "altitude = COALESCE(altitude, 0) + 1", "gentity_ptr_id"),
    ("hcore_timeseries", "remarks = 'edited'", "id"),
    ("hcore_gentityevent", "report = 'edited'", "id"),
]
BYTES = re.compile(r"Read (?P<bytes>[0-9]+) bytes from the remote \((?P<requests>[0-9]+) ")


def run(args, env):
    """(exit status, seconds, output) of a command."""
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    return done.returncode, time.perf_counter() - started, done.stdout + done.stderr


def full_dump_bytes(remote):
    """The bytes of every model's dump, downloaded whole from the remote."""
    session = requests.Session()
    manifest = session.get(f"{remote.url}/api/", timeout=60).json()
    total = 0
    for entry in manifest["models"]:
        with session.get(f"{remote.url}{entry['url']}", stream=True, timeout=600) as response:
            response.raise_for_status()
            total += sum(len(chunk) for chunk in response.iter_content(1 << 16))
    return total


def diverge(url, share):
    """Edit ``share`` of the rows of each table of EDITS; return how many rows."""
    edited = rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for table, change, key in EDITS:
            (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            rows += n
            every = max(1, round(1 / share))
            cursor = conn.execute(f"UPDATE {table} SET {change} WHERE {key} % {every} = 0")
            edited += cursor.rowcount
    return edited, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=20_000)
    parser.add_argument("--share", type=float, default=0.01, help="Rows edited (0.01: 1 %%).")
    options = parser.parse_args()

    template = Template()
    remote = Instance(template, hostname="bench-verify.example.org")
    local_db = f"dbsync_bench_verify_{os.getpid()}"
    admin_execute(f'CREATE DATABASE "{local_db}" TEMPLATE "{template.name}"')
    var = Path(tempfile.mkdtemp(prefix="dbsync-bench-verify-"))
    env = instance_env(local_db, var / "local", DBSYNC_WORK_DIR=var / "work")
    try:
        print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        print(f"Generating {options.stations} stations at the remote…", flush=True)
        remote.generate(stations=options.stations, events_per_station=0.5, seed=11)
        remote.start(workers=2)
        register_remote(remote, env)
        sync = manage_args("hcore_remotesyncdb", "-r", "bench", "-N", "--no-records")
        status, seconds, out = run(sync, env)
        assert status == 0, out
        print(f"first sync: {seconds:.1f} s", flush=True)
        full = full_dump_bytes(remote)
        edited, rows = diverge(f"{PG_BASE}/{local_db}", options.share)
        print(f"edited {edited} of {rows} rows of {len(EDITS)} tables at the replica", flush=True)
        results = []
        for what, flag, expected in (
            ("--verify", "--verify", 1),
            ("--repair", "--repair", 0),
            ("--verify after", "--verify", 0),
        ):
            status, seconds, out = run([*sync, flag], env)
            found = BYTES.search(out)
            if status != expected or found is None:
                raise SystemExit(f"{what}: exit {status}, expected {expected}:\n{out[-3000:]}")
            results.append((what, int(found["bytes"]), int(found["requests"]), seconds))
    finally:
        remote.stop()
        remote.drop()
        admin_execute(f'DROP DATABASE IF EXISTS "{local_db}" WITH (FORCE)')
        template.drop()

    print()
    print("load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"full dump of every model: {full} bytes")
    print(f"{'step':16} {'bytes':>12} {'% of dump':>10} {'requests':>9} {'seconds':>8}")
    for what, size, requests_, seconds in results:
        print(f"{what:16} {size:12} {100 * size / full:9.2f}% {requests_:9} {seconds:8.1f}")
    worst = max(size for _what, size, _r, _s in results[:2]) / full
    print(f"\nworst of --verify and --repair: {100 * worst:.2f} % of a full dump (goal < 5 %)")


if __name__ == "__main__":
    main()
