"""Whether each remote's replica is as fresh as its schedule promises.

A failed scheduled run is mailed (see ``notify``), but a run that never happens is
not: beat stopped, no worker on the queue, the cron line lost. So each active remote
is judged by its last successful sync instead. A scheduled remote is *overdue* when
the first start its schedule gave after that success, plus ``DBSYNC_OVERDUE_GRACE_MINUTES``
for the run itself, has passed; an unscheduled one (synced by cron with
``hcore_remotesyncdb``) when that success is older than ``DBSYNC_UNSCHEDULED_MAX_AGE_HOURS``.
``manage.py dbsync_status`` reports it with a monitoring plugin's exit status, and the
admin's list of remotes shows it.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from dbsync.models import Database, SyncRun

OK, FAILING, OVERDUE, NEVER, INACTIVE = "ok", "failing", "overdue", "never synced", "inactive"
REMOVED = "offboarded"  # dbsync_removeremote: never synced again, nothing promised
# Exit statuses of a monitoring plugin (Nagios and its descendants).
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 1, 2
SEVERITY = {
    OK: EXIT_OK,
    INACTIVE: EXIT_OK,
    REMOVED: EXIT_OK,
    FAILING: EXIT_WARNING,
    OVERDUE: EXIT_CRITICAL,
    NEVER: EXIT_CRITICAL,
}


@dataclass(frozen=True)
class Freshness:
    database: Database
    state: str
    due_by: datetime | None  # a newer success was expected by then (None: no promise)
    last_run: SyncRun | None

    @property
    def severity(self):
        return SEVERITY[self.state]

    def describe(self, now):
        last = self.database.last_sync
        if self.state == REMOVED:
            when = f"{self.database.removed_at:%Y-%m-%d %H:%M %Z}"
            return f"offboarded ({self.database.get_removal_display()}) on {when}"
        if self.state == INACTIVE:
            return "inactive: never synced by itself"
        if self.state == NEVER:
            return "never synced successfully: run its first sync"
        since = f"last success {age(now - last)} ago"
        if self.state == OVERDUE:
            return f"OVERDUE: {since}; a newer one was due by {self.due_by:%Y-%m-%d %H:%M %Z}"
        if self.state == FAILING:
            message = " ".join(self.last_run.message.split())[:200]  # one line a remote
            return f"last run failed ({message}); {since}"
        return since


def next_start(database, after):
    """The first start ``database``'s schedule gives after ``after``, or None."""
    if database.schedule_kind == Database.SCHEDULE_INTERVAL and database.interval_minutes:
        return after + timedelta(minutes=database.interval_minutes)
    if database.schedule_kind == Database.SCHEDULE_CRONTAB and database.crontab:
        from django_celery_beat.tzcrontab import TzAwareCrontab

        minute, hour, day_of_month, month_of_year, day_of_week = database.crontab.split()
        crontab = TzAwareCrontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
            tz=ZoneInfo(settings.TIME_ZONE),
        )
        last, delta, _now = crontab.remaining_delta(after)
        return last + delta
    return None


LOOK_UP = object()


def freshness(database, now=None, last_run=LOOK_UP):
    """The Freshness of ``database`` at ``now``; ``last_run``: its latest sync run (or
    None: no run), looked up unless given (verifications and repairs are not syncs)."""
    now = now or timezone.now()
    if last_run is LOOK_UP:
        last_run = database.runs.filter(kind=SyncRun.SYNC).order_by("-pk").first()
    if database.is_removed:
        return Freshness(database, REMOVED, None, last_run)
    if not database.is_active:
        return Freshness(database, INACTIVE, None, last_run)
    if database.last_sync is None:
        return Freshness(database, NEVER, None, last_run)
    start = next_start(database, database.last_sync)
    if start is not None:
        due_by = start + timedelta(minutes=settings.DBSYNC_OVERDUE_GRACE_MINUTES)
    else:
        due_by = database.last_sync + timedelta(hours=settings.DBSYNC_UNSCHEDULED_MAX_AGE_HOURS)
    if now > due_by:
        return Freshness(database, OVERDUE, due_by, last_run)
    if last_run is not None and last_run.status == SyncRun.FAILED:
        return Freshness(database, FAILING, due_by, last_run)
    return Freshness(database, OK, due_by, last_run)


def age(delta):
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} days {hours % 24} h"
