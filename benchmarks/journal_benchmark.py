#!/usr/bin/env python
"""Benchmark of the journal of a run (the default backup) against ``-N`` (none).

Everything runs on this machine: a remote instance (its own PostgreSQL database,
``generate_sample_data``, gunicorn on loopback) and two local instances that sync
from it with ``manage.py hcore_remotesyncdb``, one with ``-N`` and one journaled (the
default). Each measured step is run in turns, ``-N`` then journaled, ``--repeat``
times, and the medians are printed, with the journal's size (its rows and bytes,
``dbsync.engine.journal.size``) next to what the run changed:

- the first sync of the objects (every row inserted: the journal keeps their keys);
- an unchanged re-sync (target: at most 10 % slower journaled);
- a 1 % change of the stations and time series (renamed, remarks changed);
- the records: a nightly run after one more day of 10-minute values (144 records)
  in every series (target: the journal costs at most 10 % of it), and an unchanged
  records re-sync;
- the nightly's INSERT alone, in SQL under ``EXPLAIN ANALYZE``, journaled and not:
  the time of each trigger (``dbsync_journal_insert`` next to the records' summary).

    .venv/bin/python benchmarks/journal_benchmark.py --stations 200000 --series 2000
    .venv/bin/python benchmarks/journal_benchmark.py --stations 20000 --series 2000 \\
        --records-per-series 500

A nightly run's work is the records it appends (144 a series) and the series it
checks, not the records the series already hold: ``--records-per-series`` sets the
history the runs append to (and the first sync's size), ``--series`` the nightly's.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sync_benchmark import age_remote, manage_args, register_remote, run_measured  # noqa: E402

from tests.instance import PG_BASE, Instance, Template, admin_execute, instance_env  # noqa: E402


def last_journal(url):
    """(rows, bytes) of the journal of the newest run of the local database at ``url``."""
    with psycopg.connect(url) as conn:
        (run,) = conn.execute("SELECT max(id) FROM dbsync_syncrun").fetchone()
        rows, size = conn.execute(
            "SELECT count(*), coalesce(sum(pg_column_size(image)), 0) FROM dbsync_journal "
            "WHERE run_id = %s",
            [run],
        ).fetchone()
        (counts,) = conn.execute(
            "SELECT model_counts FROM dbsync_syncrun WHERE id = %s", [run]
        ).fetchone()
    changed = sum(c.get(k, 0) for c in counts.values() for k in ("created", "updated", "deleted"))
    return rows, int(size), changed


TRANSACTION_LINES = (
    re.compile(r"Install phase: ([\d.]+) s in the objects' transaction"),
    re.compile(r"batches installed in ([\d.]+) s"),
)


def transaction_seconds(out):
    """The seconds a run spent in its objects' and records' transactions (-v 2)."""
    return sum(float(m[1]) for p in TRANSACTION_LINES for m in p.finditer(out))


# 144 records in each series that holds records (the records remote's), not in the
# objects remote's series too: those hold none, and a nightly run appends nothing to
# them (at 200,000 stations they are 400,000: 58 M records, not 288,000).
NIGHTLY_INSERT = (
    'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
    "SELECT s.timeseries_id, timestamptz '2040-01-01' + n * interval '10 minutes', n, '' "
    "FROM hcore_recordssummary s, generate_series(0, 143) n WHERE s.count > 0"
)


def trigger_cost(url, turns=5):
    """The records' nightly insert alone, in the database at ``url``: 144 records in
    every series that holds records, one INSERT under ``EXPLAIN ANALYZE``, journaled
    (``dbsync.run_id`` set) and not, in turns, each rolled back. Returns, for not
    journaled and journaled, the medians of the statement's seconds and of each trigger's: the
    triggers' own work, apart from the command, the HTTP and the machine's drift."""
    statement = {False: [], True: []}
    triggers = {False: {}, True: {}}
    with psycopg.connect(url) as conn:
        for turn in range(turns):
            for journaled in (False, True) if turn % 2 == 0 else (True, False):
                with conn.transaction(force_rollback=True):
                    if journaled:
                        conn.execute("SELECT set_config('dbsync.run_id', '999999999', true)")
                    ((plan,),) = conn.execute(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) {NIGHTLY_INSERT}"
                    ).fetchall()
                statement[journaled].append(plan[0]["Execution Time"] / 1000)
                for trigger in plan[0].get("Triggers", ()):
                    seconds = trigger["Time"] / 1000
                    triggers[journaled].setdefault(trigger["Trigger Name"], []).append(seconds)
    return {
        journaled: (
            statistics.median(statement[journaled]),
            {name: statistics.median(t) for name, t in sorted(triggers[journaled].items())},
        )
        for journaled in (False, True)
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=20_000, help="Stations (20,000).")
    parser.add_argument("--series", type=int, default=2000, help="Records: series (2,000).")
    parser.add_argument(
        "--records-per-series", type=int, default=500, help="Records of each (500)."
    )
    parser.add_argument("--repeat", type=int, default=3, help="Turns of each step (3).")
    parser.add_argument(
        "--only", choices=("objects", "records"), help="Measure only the objects or the records."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the databases afterwards.")
    options = parser.parse_args()

    template = Template()
    objects = Instance(template, hostname="bench-objects.example.org")
    records = Instance(
        template,
        hostname="bench-records.example.org",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="benchmark-only",
        DATABASE_CONN_MAX_AGE="60",
    )
    var = Path(tempfile.mkdtemp(prefix="dbsync-journal-bench-"))
    locals_ = {}
    for kind in ("plain", "journal"):
        name = f"dbsync_journal_bench_{kind}_{os.getpid()}"
        admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.name}"')
        env = instance_env(name, var / kind, DBSYNC_WORK_DIR=var / kind / "work")
        env.update(DJANGO_DEBUG="0", DJANGO_SECRET_KEY="benchmark-only")
        locals_[kind] = (name, env)
    results = []  # (step, -N seconds, journaled seconds, journal rows, bytes, changed)

    def sync_args(remote_name, kind, *extra):
        args = ["hcore_remotesyncdb", "-r", remote_name, "-v", "2", *extra]
        return manage_args(*args, *(["-N"] if kind == "plain" else []))

    def step(name, remote_name, before_each=None, *extra):
        """Each turn runs both, in alternating order (the machine's load drifts);
        the wall-clock seconds of the command, and of its transactions (the -v 2
        timing lines: where the journal's triggers work)."""
        times = {"plain": [], "journal": []}
        inside = {"plain": [], "journal": []}
        sizes = []
        for turn in range(options.repeat):
            order = ("plain", "journal") if turn % 2 == 0 else ("journal", "plain")
            if before_each is not None:
                before_each(turn)
            for kind in order:
                db, env = locals_[kind]
                seconds, _peak, out = run_measured(sync_args(remote_name, kind, *extra), env)
                times[kind].append(seconds)
                inside[kind].append(transaction_seconds(out))
                if kind == "journal":
                    sizes.append(last_journal(f"{PG_BASE}/{db}"))
        plain, journaled = (statistics.median(times[k]) for k in ("plain", "journal"))
        in_plain, in_journal = (statistics.median(inside[k]) for k in ("plain", "journal"))
        rows, size, changed = sizes[-1]
        results.append((name, plain, journaled, rows, size, changed, (in_plain, in_journal)))
        print(
            f"  {name}: -N {plain:.2f} s, journaled {journaled:.2f} s "
            f"({(journaled / plain - 1) * 100:+.1f} %); in the transactions -N "
            f"{in_plain:.2f} s, journaled {in_journal:.2f} s; journal {rows} rows, "
            f"{size / 1e6:.2f} MB for {changed} changes; turns {times} {inside}",
            flush=True,
        )

    try:
        print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        print("Generating the stations of the objects' remote…", flush=True)
        objects.generate(
            stations=10 if options.only == "records" else options.stations,
            timeseries_per_station=2,
            events_per_station=0.5,
            seed=11,
        )
        age_remote(objects)
        objects.start(workers=2)
        print(
            f"Generating {options.series} series x {options.records_per_series} records…",
            flush=True,
        )
        records.generate(
            stations=(options.series + 1) // 2,
            timeseries_per_station=2,
            events_per_station=0,
            records_per_series=options.records_per_series,
            seed=11,
        )
        records.sql("VACUUM ANALYZE hcore_record")
        records.start(workers=2)
        for kind in ("plain", "journal"):
            env = locals_[kind][1]
            register_remote(objects, env)  # "bench"
            run_measured(
                manage_args(
                    "dbsync_addremote", "--name", "records", "--hostname", records.hostname,
                    "--ip", "127.0.0.1", "--port", str(records.port), "--scheme", records.scheme,
                ),
                env,
            )  # fmt: skip

        # The objects: a first sync once each (no records: the remote has none).
        first = None
        for kind in () if options.only == "records" else ("plain", "journal"):
            db, env = locals_[kind]
            seconds, _peak, _out = run_measured(sync_args("bench", kind), env)
            rows, size, changed = last_journal(f"{PG_BASE}/{db}")
            print(f"  first sync of the objects, {kind}: {seconds:.1f} s", flush=True)
            if kind == "journal":
                results.append(
                    ("objects: first sync (once)", first, seconds, rows, size, changed, None)
                )
            first = seconds
        if options.only != "records":
            step("objects: unchanged re-sync", "bench")
        changed = max(1, options.stations // 100)

        def change_one_percent(turn):
            objects.sql(
                "UPDATE hcore_gentity SET name = name || ' (renamed)', last_modified = now() "
                "WHERE id IN (SELECT gpoint_ptr_id FROM hcore_station ORDER BY gpoint_ptr_id "
                "LIMIT %s)",
                [changed],
            )
            objects.sql(
                "UPDATE hcore_timeseries SET remarks = %s, last_modified = now() "
                "WHERE id IN (SELECT id FROM hcore_timeseries ORDER BY id LIMIT %s)",
                [f"changed {turn}", changed * 2],
            )

        if options.only != "records":
            step("objects: 1 % changed", "bench", change_one_percent)

        # The records: a first sync once each, then nightly runs.
        for kind in () if options.only == "objects" else ("plain", "journal"):
            db, env = locals_[kind]
            seconds, _peak, out = run_measured(sync_args("records", kind), env)
            inside = transaction_seconds(out)
            print(
                f"  first sync of the records, {kind}: {seconds:.1f} s "
                f"({inside:.1f} s in the transactions)",
                flush=True,
            )
            if kind == "journal":
                rows, size, changed = last_journal(f"{PG_BASE}/{db}")
                results.append(
                    ("records: first sync (once)", first, seconds, rows, size, changed, None)
                )
            first = seconds

        def add_a_day(turn):
            records.sql(
                'INSERT INTO hcore_record (timeseries_id, "timestamp", value, flags) '
                "SELECT s.id, timestamptz '2026-01-01 00:00+00' + (%s * 144 + n) * "
                "interval '10 minutes', n / 10.0, '' FROM hcore_timeseries s, "
                "generate_series(0, 143) n",
                [turn],
            )

        if options.only != "objects":
            step("records: nightly, +144 records a series", "records", add_a_day)
            step("records: unchanged re-sync", "records")
            costs = trigger_cost(f"{PG_BASE}/{locals_['journal'][0]}")
            plain, journaled = costs[False][0], costs[True][0]
            results.append(
                ("records: the nightly INSERT alone (SQL)", plain, journaled, 0, 0, 0, None)
            )
            print(f"  the nightly INSERT alone: {plain:.2f} s, journaled {journaled:.2f} s")
            for journaled, (_statement, triggers) in costs.items():
                kind = "journaled" if journaled else "-N"
                print(f"    its triggers, {kind}: " + ", ".join(
                    f"{name} {seconds * 1000:.0f} ms" for name, seconds in triggers.items()
                ))  # fmt: skip
    finally:
        objects.stop()
        records.stop()
        if not options.keep:
            objects.drop()
            records.drop()
            for name, _env in locals_.values():
                admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            template.drop()

    print()
    print("load average (1, 5, 15 min) at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(
        f"{options.stations} stations; {options.series} series x "
        f"{options.records_per_series} records; medians of {options.repeat} turns"
    )
    print(
        "{:42} {:>7} {:>9} {:>7} {:>9} {:>7} {:>8}".format(
            "step", "-N s", "journal s", "cost", "rows", "MB", "changes"
        )
    )
    for name, plain, journaled, rows, size, changed, inside in results:
        cost = (journaled / plain - 1) * 100
        print(
            f"{name:42} {plain:7.2f} {journaled:9.2f} {cost:+6.1f}% {rows:9} "
            f"{size / 1e6:7.2f} {changed:8}"
        )
        if inside:
            cost = (inside[1] / inside[0] - 1) * 100 if inside[0] else 0.0
            print(f"{'  in its transactions':42} {inside[0]:7.2f} {inside[1]:9.2f} {cost:+6.1f}%")


if __name__ == "__main__":
    main()
