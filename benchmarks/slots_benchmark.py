#!/usr/bin/env python
"""What a request slot (dbsync.engine.request_slots) costs a request: the time to take and
give back one, over 1,000 of them, on the database of DATABASE_URL (PostgreSQL: an
advisory lock and unlock, a round trip each) and counted in the process alone (what
SQLite gets). No table is touched: any existing PostgreSQL database will do.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres DJANGO_DEBUG=1 \\
        .venv/bin/python benchmarks/slots_benchmark.py [--count 1000]

Prints, per case, the mean and the 50th/99th percentiles of one take + give back;
with several threads, how long the slots stayed busy (a thread with no slot waits
for one: the contended figures include that wait, by design).
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connections  # noqa: E402

from dbsync.engine import request_slots  # noqa: E402
from dbsync.models import Database  # noqa: E402

REMOTE = Database(pk=2_000_000_000, name="benchmark", hostname="benchmark.invalid")


def timed(count):
    """Seconds of each of ``count`` takes and give-backs in this thread."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with request_slots.request_slot(REMOTE):
            pass
        times.append(time.perf_counter() - started)
    return times


def report(name, times, wall=None):
    times = sorted(times)
    mean = statistics.fmean(times) * 1e6
    p50 = times[len(times) // 2] * 1e6
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6
    line = f"{name:<46} {len(times):>6} {mean:>9.0f} {p50:>9.0f} {p99:>9.0f}"
    if wall is not None:
        line += f"   {len(times) / wall:,.0f}/s"
    print(line)


def threaded(threads, count):
    results = []
    lock = threading.Lock()

    def work():
        own = timed(count)
        with lock:
            results.extend(own)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results, time.perf_counter() - started


def run(backend, count):
    request_slots.close()
    request_slots._state["backend"] = (
        request_slots._LocalSlots() if backend == "local" else request_slots._PostgresSlots()
    )
    timed(10)  # connect first: the connection is made once per process
    report(f"{backend}: 1 thread, limit 4", timed(count))
    for threads, limit in ((4, 4), (8, 4), (8, 1)):
        settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = limit
        times, wall = threaded(threads, count // threads)
        report(f"{backend}: {threads} threads, limit {limit}", times, wall)
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 4
    request_slots.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="Takes per case (1,000).")
    args = parser.parse_args()
    settings.DBSYNC_MAX_REQUESTS_PER_REMOTE = 4
    settings.DBSYNC_REQUEST_SLOT_WAIT_SECONDS = 60
    vendor = connections["default"].vendor
    print(
        f"{'take + give back a slot':<46} {'count':>6} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9}"
    )
    if vendor == "postgresql":
        run("postgresql", args.count)
    else:
        print(f"(DATABASE_URL is {vendor}: the PostgreSQL cases are skipped)")
    run("local", args.count)


if __name__ == "__main__":
    main()
