"""``manage.py hcore_prunetombstones [--days N] [--dry-run]``: tombstone retention now."""

import argparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from hcore import tombstones


def non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days.") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more.")
    return value


class Command(BaseCommand):
    help = (
        "Prune the change capture's tombstones (the deleted rows' keys served to replicas) "
        "older than --days days, and move the published horizon with them: a replica whose "
        "cursor is older then runs in full. What the daily task does; deletes in batches."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=non_negative_int,
            default=None,
            help="Keep the tombstones of the last N days (default: "
            "DBSYNC_TOMBSTONE_RETENTION_DAYS, whose 0 keeps them all). --days 0 prunes "
            "every ended transaction's.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would be pruned; change nothing."
        )

    def handle(self, *args, days=None, dry_run=False, **options):
        if not tombstones.supported(connection):
            raise CommandError("This database has no change capture (PostgreSQL only).")
        if days is None:
            days = settings.DBSYNC_TOMBSTONE_RETENTION_DAYS
            if days <= 0:
                self.stdout.write(tombstones.RETENTION_OFF)
                return
        self.stdout.write(tombstones.prune(connection, days, dry_run=dry_run).describe())
