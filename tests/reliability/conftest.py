"""The reliability suite: faults, hostile input, abuse and load, each a named test.

Every test module is a category (``CATEGORIES``). A scenario starts real parts (the
test's PostgreSQL database, a remote instance over HTTP on loopback, Celery workers,
a misbehaving proxy or server where a real part cannot misbehave on cue), injects its
fault and checks the outcome the operator would check: the local database compared
whole with its state before (``integrity``) or with the remote after recovery, the exit
status or run status, the message.

At the end of the run, one line per category: scenarios run, survived (passed), and
data lost: the scenarios in which ``integrity`` found the local database changed when
it had to be left as it was. The same figures are written as JSON to
``$DBSYNC_RELIABILITY_REPORT`` when that is set (docs/reliability.md's table comes from it).
"""

import json
import os
from collections import defaultdict
from contextlib import nullcontext

import pytest
from django.apps import apps
from django.db import connection

from hcore.capture import MARKER_COLUMN

CATEGORIES = {
    "test_network": "network and remote faults",
    "test_process": "process faults",
    "test_hostile": "hostile remote",
    "test_api_abuse": "API abuse",
    "test_load": "load",
    "test_deletion": "deletions",
    "test_resources": "resources",
}
LOST = pytest.StashKey[bool]()
_tally = defaultdict(lambda: {"run": 0, "survived": 0, "data_lost": 0})


def category_of(item):
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    for prefix, name in CATEGORIES.items():
        if module.startswith(prefix):
            return name
    return "other"


# --- the whole local database, compared ------------------------------------------------------


def local_tables():
    """Every table of the apps a sync may write into, or whose rows it must keep."""
    tables = set()
    for app in ("hcore", "dbsync"):
        for model in apps.get_app_config(app).get_models(include_auto_created=True):
            tables.add(model._meta.db_table)
    return sorted(t for t in tables if t in connection.introspection.table_names())


def snapshot(exclude=("dbsync_syncrun", "dbsync_taskcount"), cursor=None):
    """{table: (row count, md5 of every row)} of the local database, from SQL.

    Runs and the workers' task counts are left out by default (a failed run is
    recorded, which is the point; a task that ran is counted, for the metrics); the
    registered remotes are in (a failed run must not move a remote's cursor). Given a
    ``cursor`` (e.g. psycopg's, on a backup restored elsewhere), the same tables there.
    """
    result = {}
    with nullcontext(cursor) if cursor is not None else connection.cursor() as cursor:
        for table in local_tables():
            if table in exclude:
                continue
            if table == "dbsync_database":
                # last_sync and the cursor are compared; the failure streak may change
                cursor.execute(
                    "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
                    "FROM (SELECT id, name, hostname, sync_cursor, last_sync "
                    "FROM dbsync_database) t"
                )
            else:
                # Every column but change capture's marker (hcore.capture): which
                # transaction last wrote a row is not data, and a revert is a write.
                columns = ", ".join(
                    f'"{c.name}"'
                    for c in connection.introspection.get_table_description(cursor, table)
                    if c.name != MARKER_COLUMN
                )
                cursor.execute(
                    f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
                    f'FROM (SELECT {columns} FROM "{table}") t'
                )
            result[table] = tuple(cursor.fetchone())
    return result


class Integrity:
    """``before = integrity.snapshot()`` ... ``integrity.assert_unchanged(before)``.

    A difference fails the test and counts it as data lost in the summary.
    """

    def __init__(self, item):
        self.item = item

    snapshot = staticmethod(snapshot)

    def assert_unchanged(self, before, exclude=("dbsync_syncrun", "dbsync_taskcount")):
        after = snapshot(exclude)
        changed = sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))
        if changed:
            self.item.stash[LOST] = True
            details = ", ".join(
                f"{t}: {before.get(t, (0,))[0]} -> {after.get(t, (0,))[0]} rows" for t in changed
            )
            raise AssertionError(f"the local database changed: {details}")


@pytest.fixture
def integrity(request):
    return Integrity(request.node)


# --- the summary ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if report.outcome == "skipped":
            return report
        tally = _tally[category_of(item)]
        tally["run"] += 1
        tally["survived"] += report.outcome == "passed"
        tally["data_lost"] += bool(item.stash.get(LOST, False))
    return report


def pytest_terminal_summary(terminalreporter):
    if not _tally:
        return
    terminalreporter.section("reliability")
    order = list(CATEGORIES.values()) + ["other"]
    for name in sorted(_tally, key=order.index):
        t = _tally[name]
        terminalreporter.write_line(
            f"{name:28} scenarios {t['run']:3}  survived {t['survived']:3}  "
            f"data lost {t['data_lost']}"
        )
    path = os.environ.get("DBSYNC_RELIABILITY_REPORT")
    if path:
        report = {name: dict(t) for name, t in _tally.items()}
        if os.environ.get("DBSYNC_RELIABILITY_REPORT_ADD") and os.path.exists(path):
            # A later pytest process of the same suite (bin/test runs the scenarios with
            # Celery workers apart): its figures are added to the earlier ones.
            with open(path) as earlier:
                for name, t in json.load(earlier).items():
                    for key, value in t.items():
                        report.setdefault(name, {}).setdefault(key, 0)
                        report[name][key] += value
        with open(path, "w") as out:
            json.dump(report, out, indent=2, sort_keys=True)
