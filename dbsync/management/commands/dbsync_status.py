"""manage.py dbsync_status: is every remote's replica as fresh as promised?

Exit status as a monitoring plugin's: 0 all fresh, 1 a remote's last run failed (its
replica is still within its schedule) or its last verification found it differing from
the remote, 2 a remote is overdue or never synced. A verified remote's line ends
with its last verification: "verified equal at …" or "differs (at …): …".
"""

import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from dbsync.models import Database
from dbsync.runs.freshness import EXIT_OK, EXIT_WARNING, freshness
from dbsync.runs.verification import EQUAL, describe, last_verification


def severity(item):
    """The freshness's, or a warning if the last verification found the replica
    differing from its remote (not for an offboarded or inactive remote: nothing
    syncs or verifies it any more, and an old finding must not alarm for ever)."""
    if item.database.is_removed or not item.database.is_active:
        return item.severity
    run = last_verification(item.database)
    if run is not None and run.verification.get("state") != EQUAL:
        return max(item.severity, EXIT_WARNING)
    return item.severity


class Command(BaseCommand):
    help = (
        "Report how fresh each remote's replica is, and its last verification. Exit status: "
        "0 all fresh, 1 a last run failed or a replica differs from its remote, 2 a remote "
        "overdue or never synced (see dbsync.runs.freshness)."
    )
    requires_system_checks = []  # a monitoring probe: quick, and never refused by a warning

    def add_arguments(self, parser):
        parser.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="Print only the remotes that are not fresh (nothing when all are: for cron).",
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="Print JSON, an object a remote."
        )

    def handle(self, *args, quiet=False, as_json=False, **options):
        now = timezone.now()
        found = [freshness(database, now) for database in Database.objects.all()]
        if as_json:
            self.stdout.write(dumps(found, now))
        else:
            for item in found:
                if quiet and severity(item) == EXIT_OK:
                    continue
                verified = last_verification(item.database)
                line = f"{item.database.name}: {item.describe(now)}"
                if verified is not None:
                    line += f"; {describe(verified)}"
                self.stdout.write(line)
        worst = max((severity(item) for item in found), default=EXIT_OK)
        if worst != EXIT_OK:
            raise SystemExit(worst)


def dumps(found, now):
    return json.dumps(
        [
            {
                "remote": item.database.name,
                "hostname": item.database.hostname,
                "state": item.state,
                "last_success": _iso(item.database.last_sync),
                "due_by": _iso(item.due_by),
                "last_run_status": item.last_run.status if item.last_run else None,
                "message": item.describe(now),
                "verification": describe(last_verification(item.database)),
            }
            for item in found
        ],
        indent=1,
    )


def _iso(value):
    return value.isoformat() if value else None
