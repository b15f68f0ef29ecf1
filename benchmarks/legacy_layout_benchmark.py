#!/usr/bin/env python
"""Benchmark of a legacy remote's listings: the rewrite of a listing written as a server
of 2010 wrote it (Django's serializer, all on one line) into the dumps' line layout
(``dbsync.engine.legacy.to_line_layout``), next to the install's own read of the
result (``dbsync.engine.dumps.iter_objects``). A legacy remote is fetched whole every
run, so this is paid on every object of every run.

    .venv/bin/python benchmarks/legacy_layout_benchmark.py               # 200,000 objects
    .venv/bin/python benchmarks/legacy_layout_benchmark.py --objects 20000

Prints objects, megabytes, seconds and objects/s per step. No database is used.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")

import django  # noqa: E402

django.setup()

from dbsync.engine.dumps import iter_objects  # noqa: E402
from dbsync.engine.legacy import to_line_layout  # noqa: E402


def gentity(pk):
    """An object the size and shape of a served hcore.gentity."""
    return {
        "model": "hcore.gentity",
        "pk": pk,
        "fields": {
            "name": f"Station Ψ {pk}",
            "short_name": f"S{pk}",
            "remarks": "Automatic station, installed by the regional authority.",
            "name_alt": "",
            "short_name_alt": "",
            "remarks_alt": "",
            "water_basin": pk % 97 + 1,
            "water_division": pk % 13 + 1,
            "political_division": pk % 51 + 1,
            "last_modified": "2010-05-10T14:21:31.123Z",
        },
    }


def measure(label, func, objects, size):
    started = time.perf_counter()
    func()
    seconds = time.perf_counter() - started
    print(
        f"{label:<40} {objects:>9,} objects {size / 1e6:>7.1f} MB {seconds:>7.2f} s "
        f"{objects / seconds:>10,.0f} objects/s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hcore.gentity.json"
        path.write_text(json.dumps([gentity(pk) for pk in range(1, args.objects + 1)]))
        size = path.stat().st_size
        measure("rewrite one line -> a line an object", lambda: to_line_layout(path),
                args.objects, size)  # fmt: skip
        measure("the install's read of the result", lambda: sum(1 for _ in iter_objects(path)),
                args.objects, path.stat().st_size)  # fmt: skip


if __name__ == "__main__":
    main()
