"""A run's disk budget (dbsync.engine.diskbudget, and dbsync.runs.diskbudget for the
fetch tasks of a Celery run) and how its size is given."""

import threading

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from dbsync.engine.diskbudget import DiskBudget
from dbsync.engine.errors import DiskBudgetError
from dbsync.models import Database, SyncRun
from dbsync.runs.diskbudget import MIN_BLOCK, RunDiskBudget
from project.settings import env_bytes


@pytest.mark.parametrize(
    "text, size",
    [
        ("123", 123),
        ("4K", 4096),
        ("500M", 500 * 1024**2),
        ("20G", 20 * 1024**3),
        ("1.5T", int(1.5 * 1024**4)),
        ("2 GiB", 2 * 1024**3),
        ("64mb", 64 * 1024**2),
        ("0", 0),
        ("", 7),
    ],
)
def test_sizes_are_bytes_or_a_number_with_a_binary_unit(monkeypatch, text, size):
    monkeypatch.setenv("DBSYNC_TEST_SIZE", text)
    assert env_bytes("DBSYNC_TEST_SIZE", 7) == size


@pytest.mark.parametrize("text", ["lots", "12X", "G", "1,5G"])
def test_a_size_that_is_not_one_is_refused_naming_the_setting(monkeypatch, text):
    monkeypatch.setenv("DBSYNC_TEST_SIZE", text)
    with pytest.raises(ImproperlyConfigured, match="DBSYNC_TEST_SIZE=.* is not a size"):
        env_bytes("DBSYNC_TEST_SIZE", 7)


def test_the_budget_is_counted_across_threads_and_stops_past_its_limit():
    budget = DiskBudget(limit=1000 * 64)
    errors = []

    def write():
        for _ in range(100):
            try:
                budget.spend(64, "GET /api/hcore/station/")
            except DiskBudgetError as exc:
                errors.append(str(exc))
                return

    threads = [threading.Thread(target=write) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 2,000 writes of 64 bytes were tried; the budget is 1,000 of them: every thread
    # that wrote past it was stopped, and the count saw every write.
    assert errors and budget.spent == 1000 * 64 + 64 * len(errors)
    assert "GET /api/hcore/station/: the run has written" in errors[0]
    assert "over its disk budget of 64000 bytes (DBSYNC_RUN_DISK_BUDGET)" in errors[0]


def test_no_budget_counts_but_never_stops():
    budget = DiskBudget(limit=0, spent=10**15)
    budget.spend(10**6, "x")
    assert budget.spent == 10**15 + 10**6


@pytest.mark.django_db(transaction=True)
def test_the_fetch_tasks_of_one_run_draw_on_its_row_and_stop_together_at_its_limit():
    """Four tasks of one run (threads here, each with its own database connection, as
    a worker process has) each try to write 1 MiB against a run budget of 1 MiB: they
    stop once the run's row has no more to give, and, each having given back what it
    reserved and did not write, the row holds what they wrote: no more than the budget,
    and at most a few blocks less. (tests/test_tasks.py runs it with real workers.)"""
    database = Database.objects.create(name="budget", hostname="budget.example.org")
    run = SyncRun.objects.create(database=database, status=SyncRun.FETCHING, trigger="admin")
    limit, read = 1 << 20, 1 << 14
    budgets, errors = [], []

    def task():
        try:
            with RunDiskBudget(run.pk, limit=limit) as budget:
                budgets.append(budget)
                for _ in range(limit // read):
                    budget.spend(read, "GET /api/hcore/station/")
        except DiskBudgetError as exc:
            errors.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=task) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.refresh_from_db()
    written = sum(budget.spent for budget in budgets)
    assert len(errors) >= 3
    assert "GET /api/hcore/station/: this write would bring the run's fetch tasks to" in errors[0]
    assert f"over its disk budget of {limit} bytes (DBSYNC_RUN_DISK_BUDGET)" in errors[0]
    assert run.disk_spent == written <= limit
    assert written > limit - 4 * MIN_BLOCK
