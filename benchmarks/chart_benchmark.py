#!/usr/bin/env python
"""Benchmark of the admin's chart of a series: the time to read a large series at the
drawing's resolution (``hcore.records.overview``) and draw its SVG (``hcore.chart``).

A scratch instance (its own PostgreSQL database) gets one series of ``--records``
10-minute values (10 M by default, about 190 years) with a gap, written in SQL; then
the overview and the drawing run ``--repeat`` times in the instance's Django, cold
first (the first read after the insert) and then warm. Prints seconds a step and the
size of the SVG.

    .venv/bin/python benchmarks/chart_benchmark.py
    .venv/bin/python benchmarks/chart_benchmark.py --records 1000000
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.instance import Instance, Template  # noqa: E402

MEASURE = """
import time
from hcore import models as m, records
series = m.Timeseries.objects.select_related(
    "variable", "unit_of_measurement", "time_zone", "time_step").get(pk={pk})
for attempt in range({repeat}):
    t0 = time.perf_counter()
    overview = records.overview(series)
    t1 = time.perf_counter()
    svg = records.render(series, overview)
    t2 = time.perf_counter()
    print(f"{{attempt}}\\t{{overview.count}}\\t{{len(overview.points)}}\\t"
          f"{{t1 - t0:.2f}}\\t{{t2 - t1:.3f}}\\t{{len(svg)}}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    template = Template()
    instance = Instance(template, hostname="chart-benchmark.example.org")
    try:
        instance.generate(stations=1, timeseries_per_station=1, records_per_series=0)
        ((pk,),) = instance.sql("SELECT min(id) FROM hcore_timeseries")
        started = time.perf_counter()
        instance.sql(
            "INSERT INTO hcore_record (timeseries_id, timestamp, value, flags) "
            "SELECT %s, '1900-01-01'::timestamptz + k * interval '10 minutes', "
            "sin(k / 5000.0) + random() / 10, '' FROM generate_series(0, %s - 1) AS k "
            "WHERE k NOT BETWEEN %s AND %s",
            (pk, args.records, args.records // 2, args.records // 2 + args.records // 50),
        )
        instance.sql("VACUUM ANALYZE hcore_record")
        print(f"inserted {args.records:,} records in {time.perf_counter() - started:.0f} s")
        out = instance.manage("shell", "-c", MEASURE.format(pk=pk, repeat=args.repeat)).stdout
        print("attempt\trecords\tpoints\tread s\tdraw s\tSVG bytes")
        print(out, end="")
    finally:
        instance.drop()
        template.drop()


if __name__ == "__main__":
    main()
