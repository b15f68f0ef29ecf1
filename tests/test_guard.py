"""The guards' parts that need no remote: the retired setting, the approval's rules."""

import pytest
from django.core import checks

from dbsync.engine.errors import SyncError
from dbsync.engine.guard import Approval
from dbsync.models import Database, SyncRun
from dbsync.runs.service import approve_deletions, pending_approval


def test_the_retired_floor_is_accepted_and_warned_about(settings):
    settings.DBSYNC_MAX_DELETE_MIN = "10"
    warnings = [m for m in checks.run_checks() if m.id == "dbsync.W001"]
    assert len(warnings) == 1 and "retired and ignored" in warnings[0].msg
    settings.DBSYNC_MAX_DELETE_MIN = ""
    assert not [m for m in checks.run_checks() if m.id == "dbsync.W001"]


def test_an_approval_covers_what_was_listed_and_no_more():
    approval = Approval.from_json(
        {"objects": {"hcore.timezone": [1, 2, 3]}, "records": {"17": 10}}
    )
    assert approval.covers_objects("hcore.timezone", [1, 2, 3])
    assert approval.covers_objects("hcore.timezone", [2])
    assert not approval.covers_objects("hcore.timezone", [1, 2, 3, 4])
    assert not approval.covers_objects("hcore.station", [1])
    assert approval.covers_series(17, 10) and approval.covers_series(17, 12)
    assert not approval.covers_series(17, 9) and not approval.covers_series(18, 10)


@pytest.mark.django_db
def test_only_a_refused_run_can_be_approved_and_only_once():
    database = Database.objects.create(name="r", hostname="r.example.org")
    good = SyncRun.objects.create(database=database, status=SyncRun.SUCCEEDED)
    with pytest.raises(SyncError, match="not refused by a deletion guard"):
        approve_deletions(good, "alice")
    refused = SyncRun.objects.create(
        database=database,
        status=SyncRun.FAILED,
        deletions={"objects": {"hcore.timezone": [1]}, "counts": {"hcore.timezone": 1}},
    )
    message = approve_deletions(refused, "alice")
    assert message.startswith(f"Approved once the deletions of run #{refused.pk} of r")
    assert "hcore.timezone: 1" in message
    with pytest.raises(SyncError, match="already approved by alice"):
        approve_deletions(refused, "bob")
    assert pending_approval(database) == refused
