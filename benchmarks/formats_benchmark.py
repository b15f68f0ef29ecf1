#!/usr/bin/env python
"""Benchmark of the records endpoint's formats: one series of many records, fetched
whole as the syncer's format (the default) and as ``fmt=hts``, ``hts2`` and ``csv``.

A remote instance on this machine (its own PostgreSQL database,
``generate_sample_data``, gunicorn on loopback, one worker) serves one series of
``--records`` 10-minute records; each format is fetched three times and read to the
end. Prints the best time of each, records/s, the body's size and the peak memory of
the gunicorn worker (VmRSS).

    .venv/bin/python benchmarks/formats_benchmark.py                    # 1,000,000 records
    .venv/bin/python benchmarks/formats_benchmark.py --records 100000
"""

import argparse
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sync_benchmark import children  # noqa: E402

from tests.instance import Instance, Template  # noqa: E402

FORMATS = [None, "hts", "hts2", "csv"]
ROUNDS = 3


class PeakRss:
    """The largest resident set of the remote's gunicorn processes while a block runs."""

    def __init__(self, remote):
        self.remote = remote
        self.peak = 0.0
        self.stop = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def sample(self):
        while not self.stop.wait(0.1):
            for pid in [self.remote.process.pid, *children(self.remote.process.pid)]:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024)


def fetch(url, fmt):
    params = {"fmt": fmt} if fmt else {}
    start = time.perf_counter()
    size = 0
    with requests.get(url, params=params, stream=True, timeout=600) as response:
        response.raise_for_status()
        for block in response.iter_content(1 << 16):
            size += len(block)
    return time.perf_counter() - start, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records of the series")
    args = parser.parse_args()
    template = Template()
    remote = Instance(template, hostname="formats-benchmark.example.org")
    try:
        remote.generate(stations=1, timeseries_per_station=1, records_per_series=args.records)
        (pk,) = remote.sql("SELECT id FROM hcore_timeseries ORDER BY id LIMIT 1")[0]
        remote.start(workers=1)
        url = f"{remote.url}/api/hcore/timeseries/{pk}/records/"
        print(f"one series of {args.records:,} records; best of {ROUNDS}")
        print("| fmt | seconds | records/s | MB | peak MB (gunicorn) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for fmt in FORMATS:
            with PeakRss(remote) as rss:
                seconds, size = min(fetch(url, fmt) for _ in range(ROUNDS))
            print(
                f"| {fmt or '(default)'} | {seconds:.2f} | {args.records / seconds:,.0f} "
                f"| {size / 1e6:.1f} | {rss.peak:.0f} |"
            )
    finally:
        remote.drop()
        template.drop()


if __name__ == "__main__":
    main()
