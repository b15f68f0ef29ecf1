"""manage.py dbsync_revert RUN: bring the local database back to its state before a run."""

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from dbsync.engine.errors import SyncError
from dbsync.models import Database, SyncRun
from dbsync.runs.reverts import resume_schedule, revert_run


class Command(BaseCommand):
    help = (
        "Undo a sync run from its journal: every object, link, record, file and the "
        "remote's bookkeeping back as they were before it; then the remote's schedule is "
        "paused until resumed (--resume). Refused when the run was reverted already, has "
        "no journal, or a later run changed the same rows (revert that one first)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "run", nargs="?", type=int, help="The id of the run to revert (see the admin)."
        )
        parser.add_argument(
            "--keep-schedule",
            action="store_true",
            help="Do not pause the remote's schedule (its next run brings the remote's "
            "changes back).",
        )
        parser.add_argument(
            "--resume",
            metavar="REMOTE",
            help="Revert nothing; resume the schedule of REMOTE (its name or hostname), "
            "paused by a revert.",
        )

    def handle(self, *args, **options):
        if options["resume"]:
            if options["run"] is not None:
                raise CommandError("Give a run to revert or --resume REMOTE, not both.")
            database = self.find_remote(options["resume"])
            self.stdout.write(resume_schedule(database))
            return
        if options["run"] is None:
            raise CommandError("Which run? Give its id (the admin's list of sync runs).")
        run = SyncRun.objects.select_related("database").filter(pk=options["run"]).first()
        if run is None:
            raise CommandError(f"There is no run #{options['run']}.")
        try:
            message = revert_run(run, by="command", pause=not options["keep_schedule"])
        except SyncError as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(message)

    def find_remote(self, name):
        found = list(Database.objects.filter(Q(name=name) | Q(hostname=name)))
        if len(found) != 1:
            raise CommandError(
                f"No single registered remote is named {name!r}."
                if not found
                else f"{name!r} matches several remotes; use its name."
            )
        return found[0]
