"""Freshness of each remote's replica: ``manage.py dbsync_status`` and the admin's list."""

import json
import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from dbsync.models import Database, SyncRun
from dbsync.runs.freshness import FAILING, NEVER, OK, OVERDUE, freshness, next_start

pytestmark = pytest.mark.django_db


def remote(name, last_sync=None, **fields):
    database = Database.objects.create(name=name, hostname=f"{name}.example.org", **fields)
    Database.objects.filter(pk=database.pk).update(last_sync=last_sync)
    database.refresh_from_db()
    return database


def ago(**delta):
    return timezone.now() - timedelta(**delta)


def status(*args):
    """(exit status, stdout) of ``manage.py dbsync_status``."""
    out = StringIO()
    try:
        call_command("dbsync_status", *args, stdout=out)
    except SystemExit as exc:
        return exc.code, out.getvalue()
    return 0, out.getvalue()


def test_a_schedule_gives_the_next_start_after_a_success():
    nightly = Database(schedule_kind="crontab", crontab="30 3 * * *")
    after = datetime(2026, 11, 20, 3, 45, tzinfo=UTC)
    assert next_start(nightly, after) == datetime(2026, 11, 21, 3, 30, tzinfo=UTC)
    hourly = Database(schedule_kind="interval", interval_minutes=60)
    assert next_start(hourly, after) == after + timedelta(hours=1)
    assert next_start(Database(schedule_kind="none"), after) is None


@pytest.mark.parametrize(
    "fields, last_sync, state",
    [
        ({"schedule_kind": "interval", "interval_minutes": 60}, {"minutes": 30}, OK),
        # 60 minutes to the next start, 120 of grace for the run: 3 h in all
        ({"schedule_kind": "interval", "interval_minutes": 60}, {"minutes": 170}, OK),
        ({"schedule_kind": "interval", "interval_minutes": 60}, {"minutes": 190}, OVERDUE),
        ({"schedule_kind": "crontab", "crontab": "30 3 * * *"}, {"hours": 1}, OK),
        ({"schedule_kind": "crontab", "crontab": "30 3 * * *"}, {"days": 2}, OVERDUE),
        # no schedule (cron runs the command): DBSYNC_UNSCHEDULED_MAX_AGE_HOURS, 26
        ({}, {"hours": 25}, OK),
        ({}, {"hours": 27}, OVERDUE),
        ({}, None, NEVER),
    ],
)
def test_a_remote_is_overdue_when_its_schedule_promised_a_newer_success(fields, last_sync, state):
    database = remote("r", ago(**last_sync) if last_sync else None, **fields)
    assert freshness(database).state == state


def test_a_failed_last_run_of_a_fresh_remote_is_a_warning():
    database = remote("r", ago(hours=1))
    SyncRun.objects.create(database=database, status=SyncRun.FAILED, message="cannot\n reach it")
    assert freshness(database).state == FAILING
    code, out = status()
    assert code == 1
    assert "r: last run failed (cannot reach it); last success 1 h 00 min ago" in out


def test_status_names_each_remote_and_exits_as_a_monitoring_plugin():
    remote("fresh", ago(minutes=5))
    remote("late", ago(hours=30))
    remote("new")
    remote("off", is_active=False)
    code, out = status()
    assert code == 2
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["fresh"] == "last success 5 min ago"
    assert lines["late"].startswith(
        "OVERDUE: last success 30 h 00 min ago; a newer one was due by"
    )
    assert lines["new"] == "never synced successfully: run its first sync"
    assert lines["off"].startswith("inactive")
    # --quiet: only what is wrong, so that cron mails only then
    code, out = status("--quiet")
    assert code == 2 and sorted(line.split(":")[0] for line in out.splitlines()) == ["late", "new"]
    found = {item["remote"]: item for item in json.loads(status("--json")[1])}
    assert found["late"]["state"] == OVERDUE and found["late"]["due_by"]
    assert found["fresh"]["state"] == OK and found["new"]["last_success"] is None


def test_status_of_fresh_remotes_is_silent_with_quiet_and_exits_0():
    remote("fresh", ago(minutes=5))
    assert status("--quiet") == (0, "")
    assert status() == (0, "fresh: last success 5 min ago\n")


def test_the_admin_list_shows_each_remotes_freshness(admin_client):
    remote("fresh", ago(minutes=5))
    remote("late", ago(hours=30))
    response = admin_client.get(reverse("admin:dbsync_database_changelist"))
    assert response.status_code == 200
    rows = {
        name: row
        for row in response.text.split("<tr")[2:]
        for name in re.findall(r">(fresh|late)</a>", row)
    }
    assert ">overdue</strong>" in rows["late"] and ">ok<" in rows["fresh"]
