"""manage.py hcore_remotesyncdb: sync the local database from a remote instance."""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from dbsync.engine.errors import SyncError
from dbsync.engine.install import validate_max_delete
from dbsync.engine.sync import SyncOptions
from dbsync.engine.verify import Unverifiable
from dbsync.management.progress_bars import CommandProgress
from dbsync.models import Database
from dbsync.runs.service import run_sync
from dbsync.runs.verification import run_verify

# --verify and --repair: equal, differs, could not verify.
EXIT_EQUAL, EXIT_DIFFERS, EXIT_UNVERIFIED = 0, 1, 2


class Command(BaseCommand):
    help = (
        "This command is used to synchronize the local database using data from a remote "
        "instance: it fetches every model of an app from the remote's API and installs the "
        "objects locally in one transaction, re-linking all keys without keeping remote ids."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "-r",
            "--remote",
            required=True,
            help="Remote instance to sync from: the hostname or name of a registered remote "
            "(see `manage.py dbsync_addremote`).",
        )
        parser.add_argument(
            "-p",
            "--port",
            type=int,
            default=None,
            help="Specify custom port. Default: the remote's registered port. The remote's "
            "stored secrets are never sent to another port.",
        )
        parser.add_argument(
            "-a", "--app", default="hcore", help="Application which should be synced (hcore)."
        )
        parser.add_argument(
            "-e",
            "--exclude",
            action="append",
            default=[],
            help="Models of the app to leave out, comma-separated; may be repeated. "
            "UserProfile is never synced anyway.",
        )
        parser.add_argument(
            "-f",
            "--fetch-only",
            action="store_true",
            help="Doesn't actually submit any changes, just fetches remote dumps and saves "
            "them locally (install them later with --resume).",
        )
        parser.add_argument(
            "-w",
            "--work-dir",
            dest="work_dir",
            default=None,
            help="Folder for the fetched dumps (default: DBSYNC_WORK_DIR/<remote>).",
        )
        parser.add_argument(
            "-N",
            "--no-backups",
            action="store_true",
            help="Default behaviour is to take a backup of the local db before doing any "
            "changes (a journal of the run, which `manage.py dbsync_revert RUN` undoes; "
            "and a pg_dump with --pg-dump or DBSYNC_PG_DUMP). This overrides this behaviour.",
        )
        parser.add_argument(
            "--pg-dump",
            action="store_true",
            help="Also dump the whole local database (pg_dump, checked) before the install, "
            "for disaster recovery; default: DBSYNC_PG_DUMP.",
        )
        parser.add_argument(
            "-s",
            "--skip",
            action="store_true",
            help="Skip objects that cannot be installed (and whatever needs them), report "
            "each, and go on. Default behaviour is to halt on all errors, changing nothing.",
        )
        parser.add_argument(
            "-R",
            "--resume",
            action="store_true",
            help="Fetch nothing; install the dumps already in the work dir (from --fetch-only, "
            "or the remote's own `manage.py dumpdata` output).",
        )
        parser.add_argument(
            "-S",
            "--silent",
            action="store_true",
            help="Nothing on stdout (no progress bars either); problems still go to stderr "
            "(for cron).",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            help="Fetch everything, not only what changed since the last run.",
        )
        parser.add_argument(
            "--max-delete",
            default=None,
            help="Most of this remote's replicated objects of a model one run may delete, "
            "cascades included: a count, a percentage (10%%) or 'all'. Default: "
            "DBSYNC_MAX_DELETE.",
        )
        parser.add_argument(
            "--max-records-delete",
            default=None,
            help="Most records of a time series one run may remove (a series cleared or "
            "shortened at the remote): a count, a percentage (10%%) of its records or "
            "'all'. Default: DBSYNC_MAX_RECORDS_DELETE.",
        )
        parser.add_argument(
            "--no-records",
            action="store_true",
            help="Sync the objects only: not the time-series records, nor the files of "
            "GentityFile objects (both are synced after the objects by default).",
        )
        parser.add_argument(
            "--verify",
            action="store_true",
            help="Compare the replica with the remote (checksums over key ranges, no dump "
            "downloaded) and change nothing; print per model whether it is equal. Exit "
            "status: 0 equal, 1 differs, 2 could not verify.",
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="As --verify, then fetch and install only what differs (one transaction, "
            "the delete guard in force: --max-delete), and verify again. Exit status as "
            "--verify's, after the repair.",
        )
        parser.add_argument(
            "--accept-new-identity",
            action="store_true",
            help="The remote's database was rebuilt or replaced (its identity changed, and "
            "runs refuse it): delete this remote's old objects, under the delete guard "
            "(--max-delete), and sync it anew.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Show, per model, what would be created, updated and deleted; change nothing.",
        )

    def handle(self, *args, **options):
        if options["silent"]:
            options["verbosity"] = 0
        self.verbosity = options["verbosity"]
        # Bars on a terminal, plain lines otherwise (progress_bars.py).
        self.progress = CommandProgress(self.stdout, self.verbosity)
        if options["fetch_only"] and options["resume"]:
            raise CommandError("--fetch-only and --resume exclude each other.")
        if options["pg_dump"] and options["no_backups"]:
            raise CommandError("--pg-dump and -N (--no-backups) exclude each other.")
        for name in ("max_delete", "max_records_delete"):
            if options[name] is not None:
                try:
                    validate_max_delete(options[name])
                except ValueError as exc:
                    raise CommandError(f"--{name.replace('_', '-')}: {exc}") from exc
        database = self.find_remote(options["remote"])
        if options["verify"] or options["repair"]:
            return self.verify(database, options)
        # Empty names ("-e ''") are dropped here, so that make_plan sees real ones only.
        sync_options = SyncOptions(
            app_label=options["app"],
            exclude=[
                n.strip() for item in options["exclude"] for n in item.split(",") if n.strip()
            ],
            port=options["port"],
            work_dir=options["work_dir"],
            fetch_only=options["fetch_only"],
            resume=options["resume"],
            backup=not options["no_backups"],
            pg_dump=True if options["pg_dump"] else None,
            skip=options["skip"],
            full=options["full"],
            max_delete=options["max_delete"],
            max_records_delete=options["max_records_delete"],
            dry_run=options["dry_run"],
            accept_new_identity=options["accept_new_identity"],
            records=not options["no_records"],
            trigger="command",
        )
        started = time.monotonic()
        try:
            result = run_sync(database, sync_options, log=self.progress)
        except SyncError as exc:
            message = str(exc)
            if database.name not in message and database.hostname not in message:
                message = f"{database}: {message}"  # the operator is told which remote
            raise CommandError(message) from exc
        self.log(f"Sync took {time.monotonic() - started:.2f} s (the process's start apart)", 2)
        self.report(result, sync_options)

    def verify(self, database, options):
        """--verify / --repair: the verdict per model, and the exit status."""
        if options["verify"] and options["repair"]:
            raise CommandError("--verify and --repair exclude each other (--repair verifies).")
        other = [
            f"--{name.replace('_', '-')}"
            for name in (
                "fetch_only",
                "resume",
                "full",
                "dry_run",
                "skip",
                "work_dir",
                "pg_dump",  # a repair's backup is its journal
                "accept_new_identity",
            )
            if options[name]
        ]
        if other:
            raise CommandError(f"{', '.join(other)} cannot go with --verify or --repair.")
        verify_options = SyncOptions(
            app_label=options["app"],
            exclude=[
                n.strip() for item in options["exclude"] for n in item.split(",") if n.strip()
            ],
            port=options["port"],
            backup=not options["no_backups"],
            max_delete=options["max_delete"],
            max_records_delete=options["max_records_delete"],
            records=not options["no_records"],
            trigger="command",
        )
        try:
            result = run_verify(
                database, verify_options, repair=options["repair"], log=self.progress
            )
        except Unverifiable as exc:
            raise CommandError(str(exc), returncode=EXIT_UNVERIFIED) from exc
        except SyncError as exc:
            message = str(exc)
            if database.name not in message and database.hostname not in message:
                message = f"{database}: {message}"
            if options["repair"]:
                raise CommandError(message) from exc
            raise CommandError(f"Could not verify: {message}", returncode=EXIT_UNVERIFIED) from exc
        if result.repaired is not None and options["repair"]:
            self.log(f"Repair: {result.repaired.summary()}", 1)
        self.log(result.summary(), 1)
        self.log(
            f"Read {result.bytes} bytes from the remote ({result.requests} checksum and hash "
            f"requests).",
            1,
        )
        if not result.equal:
            for verdict in result.differing():
                self.stderr.write(verdict.describe())
            raise CommandError(
                f"The replica of {database} differs from the remote.", returncode=EXIT_DIFFERS
            )

    def log(self, message, level=1):
        self.progress(message, level)

    def find_remote(self, name):
        found = Database.objects.filter(Q(hostname=name) | Q(name=name))
        if len(found) == 1:
            database = found[0]
            if database.is_removed:
                raise CommandError(database.removed_message())
            if not database.is_active:
                raise CommandError(f"The remote {database} is inactive; activate it first.")
            return database
        registered = ", ".join(f"{d.name} ({d.hostname})" for d in Database.objects.all())
        if not found:
            raise CommandError(
                f"No registered remote is named {name!r}. Registered: {registered or 'none'}. "
                f"Add one with `manage.py dbsync_addremote --name NAME --hostname HOST` or "
                f"in the admin (Database replication > Remote databases)."
            )
        raise CommandError(f"{name!r} matches several remotes ({registered}); use its name.")

    def report(self, result, options):
        for problem in result.problems:
            self.stderr.write(f"Skipped: {problem}")
        if result.user_links_dropped:
            self.log(
                f"Dropped the user-account links of {result.user_links_dropped} object(s).", 1
            )
        if options.fetch_only:
            return
        if options.dry_run or self.verbosity >= 2:
            self.log("Model                          fetched created updated unchanged deleted", 1)
            for model_label, c in sorted(result.counts.items()):
                self.log(
                    f"{model_label:30} {c['fetched']:7} {c['created']:7} {c['updated']:7} "
                    f"{c['unchanged']:9} {c['deleted']:7}",
                    1,
                )
        self.log(result.summary(), 1)
        if result.problems:
            self.stderr.write(f"{len(result.problems)} object(s) skipped; see above.")
