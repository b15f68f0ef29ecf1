"""The figures of the syncs for Prometheus, computed from the run history when scraped.

Gunicorn and Celery run many processes, none of which sees every run: counting in
memory would need prometheus_client's multiprocess mode (a folder of mmap files
shared by the processes of one host, not across hosts). The history in the database
(``SyncRun``, ``Database``) already holds every figure, whichever process or host
made it, so ``SyncCollector`` reads it at each scrape: a few grouped queries whatever
the number of remotes, and one pass over the succeeded runs' counts.

Per remote (label ``remote``, its name): the last success, the last run's duration
and status, what the runs installed, the runs by final status, the current failure
streak, and whether it is overdue (``freshness``, the judgement ``dbsync_status``
makes). For the workers: the runs in each active state, the length of each Celery
queue when the broker says so cheaply, and each task's executions by outcome with their
runtime (``TaskCount``, which the workers add to: ``runs.task_counts``). The
verification of each replica against its remote (``runs.verification``): its state and
when it was last verified.
"""

import logging
import threading
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import Count, Max, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dbsync.engine.result import FILES_LABEL, RECORDS_LABEL
from dbsync.models import Database, SyncRun, TaskCount

from . import queues
from .freshness import NEVER, OVERDUE, SEVERITY, freshness

logger = logging.getLogger(__name__)

FINAL = (SyncRun.SUCCEEDED, SyncRun.FAILED, SyncRun.REFUSED)
BROKER_TIMEOUT = 3  # seconds: a scrape must answer before its own timeout


def kind_of(label):
    if label == RECORDS_LABEL:
        return "records"
    if label == FILES_LABEL:
        return "files"
    return "objects"


def timestamp(value):
    return value.timestamp() if value is not None else None


class SyncCollector:
    """A prometheus_client collector; ``collect`` queries the database each time."""

    def __init__(self, broker=True):
        self.broker = broker

    def collect(self):
        now = timezone.now()
        remotes = list(Database.objects.all())
        yield from self.freshness_families(remotes, now)
        yield from self.verification_families(remotes)
        yield from self.run_families()
        yield from self.installed_families()
        yield from self.active_families()
        yield from self.task_families()
        if self.broker:
            yield from self.queue_families()

    # --- per remote ------------------------------------------------------------------

    def freshness_families(self, remotes, now):
        last_runs = {
            run.database_id: run
            for run in SyncRun.objects.filter(
                pk__in=SyncRun.objects.filter(kind=SyncRun.SYNC)
                .values("database")
                .annotate(last=Max("pk"))
                .values("last")
            )
        }
        success = GaugeMetricFamily(
            "dbsync_last_success_timestamp_seconds",
            "When the last successful sync of the remote finished (unix time).",
            labels=["remote"],
        )
        overdue = GaugeMetricFamily(
            "dbsync_overdue",
            "1 when the remote's last success is older than its schedule allows (or it "
            "never succeeded), as dbsync_status judges; 0 otherwise and when inactive.",
            labels=["remote"],
        )
        state = GaugeMetricFamily(
            "dbsync_freshness_state",
            "The remote's state as dbsync_status reports it: 1 for the current one.",
            labels=["remote", "state"],
        )
        due = GaugeMetricFamily(
            "dbsync_due_by_timestamp_seconds",
            "By when a newer success is due (unix time); absent when nothing is promised.",
            labels=["remote"],
        )
        duration = GaugeMetricFamily(
            "dbsync_last_run_duration_seconds",
            "How long the remote's last finished run took; its status is a label.",
            labels=["remote", "status"],
        )
        finished = GaugeMetricFamily(
            "dbsync_last_run_finished_timestamp_seconds",
            "When the remote's last finished run ended (unix time); its status is a label.",
            labels=["remote", "status"],
        )
        last_finished = self.last_finished_runs()
        for database in remotes:
            name = database.name
            if database.last_sync is not None:
                success.add_metric([name], timestamp(database.last_sync))
            found = freshness(database, now, last_run=last_runs.get(database.pk))
            overdue.add_metric([name], 1 if found.state in (OVERDUE, NEVER) else 0)
            for each in SEVERITY:
                state.add_metric([name, each], 1 if found.state == each else 0)
            if found.due_by is not None:
                due.add_metric([name], timestamp(found.due_by))
            run = last_finished.get(database.pk)
            if run is not None:
                # clamped: started and ended may be two hosts' clocks
                duration.add_metric([name, run.status], max(0.0, run.duration.total_seconds()))
                finished.add_metric([name, run.status], timestamp(run.finished_at))
        yield from (success, overdue, state, due, duration, finished)

    def verification_families(self, remotes):
        """The last verification (or repair) of each remote that compared: equal,
        differs, or never (``hcore_remotesyncdb --verify``)."""
        state = GaugeMetricFamily(
            "dbsync_verification_state",
            "The replica against its remote, as its last verification found it: 1 for the "
            "current state (equal, differs, never).",
            labels=["remote", "state"],
        )
        when = GaugeMetricFamily(
            "dbsync_last_verification_timestamp_seconds",
            "When the last verification of the remote's replica finished (unix time).",
            labels=["remote"],
        )
        verified = SyncRun.objects.filter(
            kind__in=(SyncRun.VERIFY, SyncRun.REPAIR), status=SyncRun.SUCCEEDED
        )
        last = verified.values("database").annotate(last=Max("pk")).values("last")
        runs = {run.database_id: run for run in verified.filter(pk__in=last)}
        for database in remotes:
            if database.is_removed or not database.is_active:
                continue  # nothing verifies it any more: an old finding must not alert
            run = runs.get(database.pk)
            found = "never" if run is None else run.verification.get("state", "never")
            for each in ("equal", "differs", "never"):
                state.add_metric([database.name, each], 1 if found == each else 0)
            if run is not None:
                when.add_metric([database.name], timestamp(run.finished_at))
        yield from (state, when)

    def last_finished_runs(self):
        """Per remote, its last run that ended (succeeded or failed; a refusal is no run)."""
        ended = SyncRun.objects.filter(
            status__in=(SyncRun.SUCCEEDED, SyncRun.FAILED),
            finished_at__isnull=False,
            kind=SyncRun.SYNC,
        )
        last = ended.values("database").annotate(last=Max("pk")).values("last")
        return {run.database_id: run for run in ended.filter(pk__in=last)}

    def run_families(self):
        runs = CounterMetricFamily(
            "dbsync_runs",
            "Runs of the remote that ended, by status (failed, refused, succeeded).",
            labels=["remote", "status"],
        )
        counted = (
            SyncRun.objects.filter(status__in=FINAL, kind=SyncRun.SYNC)
            .values_list("database__name", "status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for name, status, n in counted:
            runs.add_metric([name, status], n)
        streak = GaugeMetricFamily(
            "dbsync_failure_streak",
            "Failed runs of the remote since its last successful one (0: the last ended well).",
            labels=["remote"],
        )
        with connection.cursor() as cursor:
            cursor.execute(
                STREAK_SQL.format(runs=SyncRun._meta.db_table),
                [SyncRun.SUCCEEDED, SyncRun.FAILED],
            )
            failing = dict(cursor.fetchall())
        for database_id, name in Database.objects.values_list("pk", "name"):
            streak.add_metric([name], failing.get(database_id, 0))
        yield from (runs, streak)

    def installed_families(self):
        """What the succeeded runs (not dry runs) installed, from their model_counts."""
        installed = CounterMetricFamily(
            "dbsync_installed",
            "Objects, records and files the remote's succeeded runs created or updated.",
            labels=["remote", "kind"],
        )
        deleted = CounterMetricFamily(
            "dbsync_deleted",
            "Objects, records and files the remote's succeeded runs deleted.",
            labels=["remote", "kind"],
        )
        last = GaugeMetricFamily(
            "dbsync_last_success_installed",
            "Objects, records and files the remote's last succeeded run created or updated.",
            labels=["remote", "kind"],
        )
        now = timezone.now()
        names = dict(Database.objects.values_list("pk", "name"))
        everything = datetime.min.replace(tzinfo=UTC)
        for (remote, kind), (n, removed) in sorted(settled_sums.totals(now).items()):
            if remote in names:  # not a remote deleted since its runs were summed
                installed.add_metric([names[remote], kind], n)
                deleted.add_metric([names[remote], kind], removed)
        lasts = installed_counts(everything, now + SettledSums.SETTLED, last_only=True)
        for (remote, kind), (n, _removed) in sorted(lasts.items()):
            if remote in names:
                last.add_metric([names[remote], kind], n)
        yield from (installed, deleted, last)

    # --- the workers -----------------------------------------------------------------

    def active_families(self):
        active = GaugeMetricFamily(
            "dbsync_active_runs",
            "Runs in progress now, by state: queued, fetching (the Celery fetch), running "
            "(installing, or the command's whole sync).",
            labels=["status"],
        )
        counted = dict(
            SyncRun.objects.filter(status__in=SyncRun.ACTIVE)
            .values_list("status")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for status in SyncRun.ACTIVE:
            active.add_metric([status], counted.get(status, 0))
        heartbeat = GaugeMetricFamily(
            "dbsync_active_run_heartbeat_timestamp_seconds",
            "The last sign of life of the remote's run in progress (unix time).",
            labels=["remote", "status"],
        )
        started = GaugeMetricFamily(
            "dbsync_active_run_started_timestamp_seconds",
            "When the remote's run in progress started (unix time).",
            labels=["remote", "status"],
        )
        runs = SyncRun.objects.filter(status__in=SyncRun.ACTIVE).select_related("database")
        for run in runs.order_by("pk"):
            labels = [run.database.name, run.status]
            started.add_metric(labels, timestamp(run.started_at))
            heartbeat.add_metric(labels, timestamp(run.heartbeat or run.started_at))
        yield from (active, heartbeat, started)

    def task_families(self):
        """Each Celery task's executions by outcome, and their runtime, as the workers
        counted them (``runs.task_counts``)."""
        executions = CounterMetricFamily(
            "dbsync_celery_tasks",
            "Executions of the Celery task that ended, by outcome (succeeded, failed, retried).",
            labels=["task", "outcome"],
        )
        runtime = CounterMetricFamily(
            "dbsync_celery_task_seconds",
            "Time the Celery task's executions took, whatever their outcome (seconds).",
            labels=["task"],
        )
        for task, outcome, n in TaskCount.objects.values_list("task", "outcome", "count"):
            executions.add_metric([task, outcome], n)
        totals = TaskCount.objects.values_list("task").annotate(s=Sum("seconds")).order_by()
        for task, seconds in totals:
            runtime.add_metric([task], seconds)
        yield from (executions, runtime)

    def queue_families(self):
        """The messages waiting in each Celery queue, as the broker counts them (a
        passive declare: nothing is created or consumed); ``dbsync_broker_up`` 0 when
        it cannot be asked."""
        from celery import current_app

        if current_app.conf.task_always_eager:
            return
        up = GaugeMetricFamily(
            "dbsync_broker_up", "Whether the Celery broker answered this scrape.", labels=[]
        )
        waiting = GaugeMetricFamily(
            "dbsync_queue_messages",
            "Messages waiting in the Celery queue (not those a worker has taken).",
            labels=["queue"],
        )
        try:
            with current_app.connection_for_read(connect_timeout=BROKER_TIMEOUT) as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT)
                channel = conn.default_channel
                for queue in queues.ALL:
                    try:
                        count = channel.queue_declare(queue=queue, passive=True).message_count
                    except conn.channel_errors:
                        # Not found: nothing waits there (Redis keeps no empty queue; an
                        # AMQP broker drops what is sent to no queue). The refusal may
                        # have closed the channel.
                        count = 0
                        channel = conn.channel()
                    waiting.add_metric([queue], count)
        except Exception as exc:  # noqa: BLE001 - a broker down is a figure, not a failed scrape
            logger.warning("metrics: the broker could not be asked: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield from (up, waiting)


# Per remote, its failed runs after its last successful one: one pass, one join (a
# subquery per failed run would be planned as one scan each).
STREAK_SQL = """
    SELECT f.database_id, count(*) FROM {runs} f
    LEFT JOIN (SELECT database_id, max(id) AS ok FROM {runs} WHERE status = %s
               AND kind = 'sync' GROUP BY database_id) s ON s.database_id = f.database_id
    WHERE f.status = %s AND f.kind = 'sync' AND f.id > COALESCE(s.ok, 0)
    GROUP BY f.database_id
"""

# The sums of the succeeded runs' counts, per remote and kind, in the database: a
# history of years holds tens of thousands of runs, whose counts Python would decode one
# by one at every scrape. Counts of another shape than {label: {key: number}} add nothing.
INSTALLED_SQL = """
    WITH r AS MATERIALIZED (  -- the runs first: each counts' entries are then read once
        SELECT database_id, model_counts FROM {runs}
        WHERE status = %(succeeded)s AND NOT dry_run
        AND finished_at > %(after)s AND finished_at <= %(until)s
        {last_only}
    )
    SELECT r.database_id,
           CASE e.key WHEN %(records)s THEN 'records' WHEN %(files)s THEN 'files'
                ELSE 'objects' END AS kind,
           sum(CASE WHEN jsonb_typeof(e.value -> 'created') = 'number'
                    THEN (e.value ->> 'created')::numeric ELSE 0 END
               + CASE WHEN jsonb_typeof(e.value -> 'updated') = 'number'
                      THEN (e.value ->> 'updated')::numeric ELSE 0 END),
           sum(CASE WHEN jsonb_typeof(e.value -> 'deleted') = 'number'
                    THEN (e.value ->> 'deleted')::numeric ELSE 0 END)
    FROM r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.model_counts) = 'object'
                                       THEN r.model_counts ELSE '{{}}'::jsonb END) e
    WHERE jsonb_typeof(e.value) = 'object'
    GROUP BY 1, 2
"""
# A remote's last succeeded sync: a verification since (which installs nothing) must not
# blank what the last sync installed.
LAST_ONLY_SQL = """AND id IN (SELECT max(id) FROM {runs} WHERE status = %(succeeded)s
                              AND NOT dry_run AND kind = 'sync' GROUP BY database_id)"""


def installed_counts(after, until, last_only=False):
    """{(remote id, kind): (created + updated, deleted)} summed over the succeeded runs
    that are not dry runs and finished in (``after``, ``until``] (``last_only``: each
    remote's last one)."""
    runs = SyncRun.objects.filter(status=SyncRun.SUCCEEDED, dry_run=False)
    if connection.vendor == "postgresql":
        tables = {"runs": SyncRun._meta.db_table}
        last = LAST_ONLY_SQL.format(**tables) if last_only else ""
        query = INSTALLED_SQL.format(last_only=last, **tables)
        params = {
            "records": RECORDS_LABEL,
            "files": FILES_LABEL,
            "succeeded": SyncRun.SUCCEEDED,
            "after": after,
            "until": until,
        }
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return {(remote, kind): (int(n), int(d)) for remote, kind, n, d in cursor.fetchall()}
    # SQLite (the embedded default, with a short history): the same sums in Python.
    if last_only:
        syncs = runs.filter(kind=SyncRun.SYNC)
        runs = runs.filter(pk__in=syncs.values("database").annotate(last=Max("pk")).values("last"))
    runs = runs.filter(finished_at__gt=after, finished_at__lte=until)
    sums = {}
    for remote, counts in runs.values_list("database_id", "model_counts").iterator():
        for label, c in counts.items() if isinstance(counts, dict) else ():
            if isinstance(c, dict):
                n, d = sums.get((remote, kind_of(label)), (0, 0))
                n += _number(c.get("created")) + _number(c.get("updated"))
                sums[(remote, kind_of(label))] = (n, d + _number(c.get("deleted")))
    return sums


def add_sums(total, more):
    for key, (n, d) in more.items():
        was_n, was_d = total.get(key, (0, 0))
        total[key] = (was_n + n, was_d + d)
    return total


class SettledSums:
    """The sums of ``installed_counts`` over the whole history, kept in the process: the
    runs that finished more than SETTLED ago are added once (an ended run's counts do
    not change, and runs are deleted only with their remote), the later ones are
    summed at each scrape. The first scrape of a process reads the whole history."""

    SETTLED = timedelta(minutes=10)  # longer than any run's end takes to commit

    def __init__(self):
        self.lock = threading.Lock()
        self.until = datetime.min.replace(tzinfo=UTC)
        self.sums = {}

    def totals(self, now):
        settle = now - self.SETTLED
        with self.lock:
            if settle > self.until:
                add_sums(self.sums, installed_counts(self.until, settle))
                self.until = settle
            total = dict(self.sums)
            until = self.until
        return add_sums(total, installed_counts(until, now + self.SETTLED))


settled_sums = SettledSums()


def _number(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
