#!/usr/bin/env python
"""Benchmark of the records sync: a first sync, a nightly incremental and an
unchanged re-sync, next to a raw PostgreSQL ``COPY`` of the same rows.

Everything runs on this machine: a remote instance (its own PostgreSQL database,
``generate_sample_data --records-per-series``, gunicorn on loopback) and a local one
that syncs from it with ``manage.py hcore_remotesyncdb`` (the objects first, without
records, outside the measurements). Prints a table of rows, seconds, rows/s and the
peak memory of every process involved: the syncing command, the remote's gunicorn
processes, and the private memory of PostgreSQL's server processes.

    .venv/bin/python benchmarks/records_benchmark.py        # 2,000 series x 5,000 = 10M
    .venv/bin/python benchmarks/records_benchmark.py --series 200 --records-per-series 1000

Steps: the first sync of every record; a nightly run after one day of 10-minute
values (144 records) was added to every series (target: under 10 s for 2,000
series); an unchanged re-sync (target: under 5 s); then a raw COPY of the remote's
records into an empty copy of the same table, with its foreign key checked row by
row as the COPY goes (the faster way: the same check deferred to the commit queues
10M events and runs several times slower), and without (as pg_restore loads,
triggers off).
"""

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sync_benchmark import children, manage_args, register_remote, run_measured  # noqa: E402

from tests.instance import PG_BASE, Instance, Template, admin_execute, instance_env  # noqa: E402

RECORD_COLUMNS = 'timeseries_id, "timestamp", value, flags'
# The records' own timing lines (-v 2) that are printed with each step.
TIMINGS = ("the summary:", "batches fetched", "batches installed")


class PeakWatcher:
    """The largest memory of a set of processes while a block runs (sampled).

    For gunicorn, the resident set (VmRSS); for PostgreSQL's server processes, their
    private memory (RssAnon: the shared buffers they touch are not theirs).
    """

    def __init__(self, remote):
        self.remote = remote
        self.peaks = {"gunicorn": 0.0, "postgres": 0.0}
        self.stop = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def sample(self):
        while not self.stop.wait(0.2):
            gunicorn = [self.remote.process.pid, *children(self.remote.process.pid)]
            for pid in gunicorn:
                self.record("gunicorn", pid, "VmRSS:")
            for pid in postgres_pids():
                self.record("postgres", pid, "RssAnon:")

    def record(self, what, pid, field):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return
        for line in status.splitlines():
            if line.startswith(field):
                self.peaks[what] = max(self.peaks[what], int(line.split()[1]) / 1024)


def postgres_pids():
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return pids


def count(url, sql="SELECT count(*) FROM hcore_record"):
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def raw_copy(remote_url, target_url, checked=True):
    """COPY the remote's records into the same table of an empty database (with the
    remote's series, copied first and not timed); return (rows, seconds)."""
    with psycopg.connect(remote_url) as src, psycopg.connect(target_url) as dst:
        # The series the records point at (their own keys unchecked: not measured).
        dst.execute("SET session_replication_role = replica")
        copy_table(src, dst, "hcore_timeseries")
        dst.execute("RESET session_replication_role")
        dst.commit()
        with tempfile.TemporaryFile() as buffer:
            with src.cursor().copy(f"COPY hcore_record ({RECORD_COLUMNS}) TO STDOUT") as copy:
                for block in copy:
                    buffer.write(block)
            buffer.seek(0)
            if checked:
                # Each row's foreign key checked as the COPY goes (as the sync does):
                # Django's keys are deferred to the commit by default, where 10M
                # queued checks run several times slower.
                dst.execute("SET CONSTRAINTS ALL IMMEDIATE")
            else:
                dst.execute("SET session_replication_role = replica")
            start = time.perf_counter()
            with dst.cursor().copy(f"COPY hcore_record ({RECORD_COLUMNS}) FROM STDIN") as copy:
                while block := buffer.read(1 << 20):
                    copy.write(block)
            dst.commit()
            seconds = time.perf_counter() - start
    return count(target_url), seconds


def copy_table(src, dst, table):
    with src.cursor().copy(f"COPY {table} TO STDOUT") as out:
        data = b"".join(bytes(block) for block in out)
    with dst.cursor().copy(f"COPY {table} FROM STDIN") as into:
        into.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2000, help="Time series (2,000).")
    parser.add_argument(
        "--records-per-series", type=int, default=5000, help="Records of each (5,000)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the databases afterwards.")
    options = parser.parse_args()
    total = options.series * options.records_per_series

    template = Template()
    # A production-like remote: no debug mode, persistent database connections.
    remote = Instance(
        template,
        hostname="bench-records.example.org",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="benchmark-only",
        DATABASE_CONN_MAX_AGE="60",
    )
    local_db = f"dbsync_records_bench_local_{os.getpid()}"
    copy_db = f"dbsync_records_bench_copy_{os.getpid()}"
    for name in (local_db, copy_db):
        admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"')
    var = Path(tempfile.mkdtemp(prefix="dbsync-records-bench-"))
    local_env = instance_env(local_db, var / "local", DBSYNC_WORK_DIR=var / "work")
    local_env.update(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="benchmark-only")
    remote_url = f"{PG_BASE}/{remote.db_name}"
    results = []
    try:
        print(
            f"Generating {options.series} series x {options.records_per_series} records at "
            f"the remote…",
            flush=True,
        )
        t0 = time.perf_counter()
        remote.generate(
            stations=(options.series + 1) // 2,
            timeseries_per_station=2,
            events_per_station=0,
            records_per_series=options.records_per_series,
            seed=11,
        )
        remote.sql("VACUUM ANALYZE hcore_record")
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
        remote.start(workers=2)
        series = count(remote_url, "SELECT count(*) FROM hcore_timeseries")
        total = count(remote_url)
        register_remote(remote, local_env)
        sync = manage_args("hcore_remotesyncdb", "-r", "bench", "-N", "-v", "2")
        seconds, peak, _ = run_measured([*sync, "--no-records"], local_env)
        print(f"  objects synced in {seconds:.1f} s ({series} series)", flush=True)

        def step(name, rows, *options):
            with PeakWatcher(remote) as watch:
                seconds, peak, out = run_measured([*sync, *options], local_env)
            summary = [line for line in out.splitlines() if "Successfully" in line]
            print(f"  {name}: {seconds:.1f} s; {summary[-1] if summary else out[-300:]}")
            for line in out.splitlines():  # the records' own timings (-v 2)
                if any(part in line for part in TIMINGS):
                    print(f"    {line.strip()}")
            results.append((name, rows, seconds, peak, watch.peaks))

        step("first sync of the records", total)
        # What a run costs without any record (the objects' own incremental sync and
        # the command's start), to tell the records' share of the runs below.
        step("for reference: objects only (--no-records)", 0, "--no-records")
        remote.sql(
            'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
            "SELECT s.id, timestamptz '2026-01-01 00:00+00' + n * interval '10 minutes', "
            "n / 10.0, '' FROM hcore_timeseries s, generate_series(0, 143) n"
        )
        step("nightly: +1 day of 10-minute values", 144 * series)
        step("unchanged re-sync", 0)
        local_url = f"{PG_BASE}/{local_db}"
        assert count(local_url) == count(remote_url), "the local copy differs"

        rows, seconds = raw_copy(remote_url, f"{PG_BASE}/{copy_db}")
        results.append(("raw COPY into the same table", rows, seconds, None, None))
        admin_execute(f'DROP DATABASE "{copy_db}" WITH (FORCE)')
        admin_execute(f'CREATE DATABASE "{copy_db}" TEMPLATE "{template.name}"')
        rows, seconds = raw_copy(remote_url, f"{PG_BASE}/{copy_db}", checked=False)
        results.append(("raw COPY, foreign key not checked", rows, seconds, None, None))
    finally:
        remote.stop()
        if not options.keep:
            remote.drop()
            for name in (local_db, copy_db):
                admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            template.drop()

    print()
    print(
        f"{options.series} series x {options.records_per_series} records; peak MB: the "
        f"syncing command / the remote's gunicorn (largest process) / PostgreSQL (private)"
    )
    print(f"{'step':44} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'peak MB':>17}")
    for name, n, seconds, peak, others in results:
        rate = f"{n / seconds:9.0f}" if n else f"{'':9}"
        memory = ""
        if peak:
            memory = f"{peak:5.0f}/{others['gunicorn']:4.0f}/{others['postgres']:4.0f}"
        print(f"{name:44} {n:10} {seconds:8.1f} {rate} {memory:>17}")
    first = results[0]
    copy = next(r for r in results if r[0].startswith("raw COPY into"))
    print()
    print(f"first sync / raw COPY rate: {(first[1] / first[2]) / (copy[1] / copy[2]):.2f}")


if __name__ == "__main__":
    main()
