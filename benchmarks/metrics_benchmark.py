#!/usr/bin/env python
"""What a scrape of ``/-/metrics`` costs as the run history grows: the time to compute
and format every figure (``dbsync.runs.metrics.SyncCollector``, without the broker),
over a history of REMOTES remotes with RUNS runs each (each run's counts as a real
run's: every model of hcore, the records and the files; one run in ten failed).

The database of DATABASE_URL must be migrated (use a scratch one); the history is
committed and vacuumed, as a real one would be, and deleted at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dbsync DJANGO_DEBUG=1 \\
        .venv/bin/python benchmarks/metrics_benchmark.py [--remotes 50] [--runs 365,1460]

Prints, per history size, the runs in it, the first scrape of a process (it sums the
whole history) and the median of the next four (they add only the runs that ended
since: ``SettledSums``).
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from dbsync.engine.result import COUNT_KEYS, FILES_LABEL, RECORDS_LABEL  # noqa: E402
from dbsync.models import Database, SyncRun  # noqa: E402
from dbsync.runs import metrics  # noqa: E402

LABELS = [m._meta.label_lower for m in apps.get_app_config("hcore").get_models()]


def counts(i):
    made = {label: dict.fromkeys(COUNT_KEYS, i % 7) for label in LABELS}
    made[RECORDS_LABEL] = dict.fromkeys(COUNT_KEYS, 144 * (i % 50))
    made[FILES_LABEL] = dict.fromkeys(COUNT_KEYS, i % 3)
    return made


def add_history(remotes, runs):
    now = timezone.now()
    for r in range(remotes):
        database = Database.objects.create(
            name=f"bench-{r}", hostname=f"bench{r}.invalid", last_sync=now
        )
        SyncRun.objects.bulk_create(
            [
                SyncRun(
                    database=database,
                    status=SyncRun.FAILED if i % 10 == 9 else SyncRun.SUCCEEDED,
                    started_at=now - timedelta(days=runs - i, minutes=20),
                    finished_at=now - timedelta(days=runs - i),
                    model_counts=counts(i),
                )
                for i in range(runs)
            ],
            batch_size=1000,
        )


def scrape_times(times=5):
    registry = CollectorRegistry(auto_describe=False)
    metrics.settled_sums = metrics.SettledSums()  # as in a new process
    registry.register(metrics.SyncCollector(broker=False))
    taken = []
    for _ in range(times):
        started = time.perf_counter()
        body = generate_latest(registry)
        taken.append(time.perf_counter() - started)
    return taken, len(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remotes", type=int, default=50)
    parser.add_argument("--runs", default="365,1460", help="runs per remote, comma-separated")
    args = parser.parse_args()
    print(f"{'remotes':>8} {'runs':>8} {'first s':>8} {'next s':>8} {'bytes':>8}")
    for runs in (int(n) for n in args.runs.split(",")):
        try:
            add_history(args.remotes, runs)
            if connection.vendor == "postgresql":  # as autovacuum would leave it
                with connection.cursor() as cursor:
                    cursor.execute(f"VACUUM ANALYZE {SyncRun._meta.db_table}")
            total = SyncRun.objects.count()
            taken, size = scrape_times()
            print(
                f"{args.remotes:>8} {total:>8} {taken[0]:>8.3f} "
                f"{statistics.median(taken[1:]):>8.3f} {size:>8}"
            )
        finally:
            Database.objects.filter(name__startswith="bench-").delete()


if __name__ == "__main__":
    main()
