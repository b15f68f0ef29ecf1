"""manage.py dbsync_removeremote: offboard a remote, purging or detaching its objects."""

import sys

from django.core.management.base import BaseCommand, CommandError

from dbsync.engine.errors import SyncError
from dbsync.engine.offboard import refusal
from dbsync.runs.offboarding import (
    DETACH,
    PURGE,
    find_remote,
    offboard_remote,
    survey_remote,
)


class Command(BaseCommand):
    help = (
        "Offboard a remote: --purge deletes every object replicated from it (with their "
        "records and files), --detach keeps them all as local objects. Either is shown "
        "first and confirmed (type the remote's name) unless --yes; it runs as a run of "
        "the remote, under its lock, in one journaled transaction (dbsync_revert RUN "
        "undoes it). The remote is kept, marked offboarded, and never synced again."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The remote's name (or hostname).")
        how = parser.add_mutually_exclusive_group(required=True)
        how.add_argument(
            "--purge",
            dest="mode",
            action="store_const",
            const=PURGE,
            help="Delete every object replicated from the remote, with what cascades from "
            "them, their records and files. Refused (changing nothing) if a local object or "
            "another remote's refers or links to one of them: they are listed.",
        )
        how.add_argument(
            "--detach",
            dest="mode",
            action="store_const",
            const=DETACH,
            help="Keep every object replicated from the remote as a local object (its "
            "original_db and original_id cleared); records and files stay.",
        )
        parser.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask: needed when there is no terminal to ask on (cron, scripts).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show what would happen, per model; change nothing.",
        )

    def handle(self, *args, name, mode, yes, dry_run, **options):
        self.verbosity = options["verbosity"]
        try:
            database = find_remote(name)
            found = survey_remote(database, mode)
        except SyncError as exc:
            raise CommandError(str(exc)) from exc
        self.show(database, found)
        problem = refusal(database, found)
        if problem:  # the run's own words, before anything is asked or recorded
            raise CommandError(problem)
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
            return
        if not yes:
            self.confirm(database)
        try:
            run, _done = offboard_remote(
                database, mode, started_by=self.user(), via="command", expected=found.counts()
            )
        except SyncError as exc:
            raise CommandError(str(exc)) from exc
        if self.verbosity >= 1:
            self.stdout.write(run.message)

    def show(self, database, found):
        if self.verbosity < 1:
            return
        verb = "Purging" if found.mode == PURGE else "Detaching"
        self.stdout.write(f"{verb} the remote {database.name} ({database.hostname}):")
        for line in found.lines():
            self.stdout.write(f"  {line}")

    def confirm(self, database):
        if not sys.stdin.isatty():
            raise CommandError(
                "Refused: there is no terminal to confirm on. Look at what would happen "
                "with --dry-run, then run again with --yes."
            )
        answer = input(f"Type the remote's name ({database.name}) to confirm: ")
        if answer.strip() != database.name:
            raise CommandError("Not confirmed: nothing was changed.")

    @staticmethod
    def user():
        import getpass

        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return ""
