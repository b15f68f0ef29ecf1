#!/usr/bin/env python
"""Benchmark: offboarding a remote (dbsync_removeremote --detach, --purge) and
reverting each (dbsync_revert), after a real first sync, with the journal's size.

Everything runs on this machine: a remote instance (its own PostgreSQL database,
``generate_sample_data``, gunicorn on loopback) and a local one, each step a
``manage.py`` process. Prints a table of seconds, peak memory (MB) and, for the
offboardings, the rows and bytes their journal holds.

    .venv/bin/python benchmarks/offboard_benchmark.py                    # 2,000 stations
    .venv/bin/python benchmarks/offboard_benchmark.py --stations 20000 --records-per-series 50
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sync_benchmark import count_rows, manage_args, run_measured  # noqa: E402
from tests.instance import PG_BASE, Instance, Template, admin_execute, instance_env  # noqa: E402


def last_offboard_run(url):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT max(id) FROM dbsync_syncrun "
            "WHERE trigger = 'offboard' AND status = 'succeeded'"
        ).fetchone()[0]


def journal_size(url, run_id):
    with psycopg.connect(url) as conn:
        rows, size = conn.execute(
            "SELECT count(*), coalesce(sum(pg_column_size(image)), 0) FROM dbsync_journal "
            "WHERE run_id = %s",
            [run_id],
        ).fetchone()
    return rows, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=2000, help="Stations (2,000).")
    parser.add_argument(
        "--records-per-series", type=int, default=100, help="Records of each series (100)."
    )
    options = parser.parse_args()
    template = Template()
    remote = Instance(template, hostname="bench-offboard.example.org")
    local_db = f"dbsync_offboard_bench_{os.getpid()}"
    admin_execute(f'CREATE DATABASE "{local_db}" TEMPLATE "{template.name}"')
    var = Path(tempfile.mkdtemp(prefix="dbsync-offboard-bench-"))
    env = instance_env(local_db, var, DBSYNC_WORK_DIR=var / "work")
    env.update(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="benchmark-only")
    url = f"{PG_BASE}/{local_db}"
    results = []
    try:
        print(f"Generating {options.stations} stations at the remote…", flush=True)
        remote.generate(
            stations=options.stations,
            records_per_series=options.records_per_series,
            files_per_station=0.1,
            seed=5,
        )
        remote.start(workers=2)
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
                "http",
            ),
            env,
        )

        def step(name, *args, journaled=False):
            seconds, peak, _out = run_measured(manage_args(*args), env)
            rows = size = None
            if journaled:
                rows, size = journal_size(url, last_offboard_run(url))
            results.append((name, seconds, peak, rows, size))
            print(f"  {name}: {seconds:.1f} s", flush=True)

        step("first sync (-N)", "hcore_remotesyncdb", "-r", "bench", "-N")
        replicated = count_rows(url)
        step(
            "detach, counted only (--dry-run)",
            "dbsync_removeremote",
            "bench",
            "--detach",
            "--dry-run",
        )
        step("detach", "dbsync_removeremote", "bench", "--detach", "--yes", journaled=True)
        step("revert the detach", "dbsync_revert", str(last_offboard_run(url)))
        step(
            "purge, counted only (--dry-run)",
            "dbsync_removeremote",
            "bench",
            "--purge",
            "--dry-run",
        )
        step("purge", "dbsync_removeremote", "bench", "--purge", "--yes", journaled=True)
        step("revert the purge", "dbsync_revert", str(last_offboard_run(url)))
    finally:
        remote.drop()
        admin_execute(f'DROP DATABASE IF EXISTS "{local_db}" WITH (FORCE)')
        template.drop()
    print()
    print(
        f"{options.stations} stations, {options.records_per_series} records a series: "
        f"{replicated} hcore rows replicated"
    )
    print(f"{'step':38} {'seconds':>8} {'peak MB':>8} {'journal rows':>13} {'journal MB':>11}")
    for name, seconds, peak, rows, size in results:
        journal = f"{rows:>13} {size / 2**20:>11.1f}" if rows is not None else f"{'':>13} {'':>11}"
        print(f"{name:38} {seconds:>8.1f} {peak:>8.0f} {journal}")


if __name__ == "__main__":
    main()
