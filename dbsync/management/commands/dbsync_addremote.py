"""manage.py dbsync_addremote: register (or update) a remote instance."""

from django.core.management.base import BaseCommand, CommandError

from dbsync.models import Database


class Command(BaseCommand):
    help = "Register a remote Enhydris instance to sync from, or update a registered one."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Local name of the remote.")
        parser.add_argument("--hostname", required=True, help="FQDN of the remote instance.")
        parser.add_argument("--ip", default=None, help="IP address to connect to (optional).")
        parser.add_argument("--port", type=int, default=80, help="TCP port (default 80).")
        parser.add_argument(
            "--scheme",
            choices=["http", "https"],
            default="http",
            help="http or https (default http).",
        )
        parser.add_argument("--descr", default="", help="Description.")
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="Do not verify the remote's TLS certificate (tests only).",
        )

    def handle(self, *args, **options):
        if options["port"] <= 0 or options["port"] > 65535:
            raise CommandError("--port must be between 1 and 65535.")
        database, created = Database.objects.update_or_create(
            name=options["name"],
            defaults={
                "hostname": options["hostname"],
                "ip_address": options["ip"] or None,
                "port": options["port"],
                "scheme": options["scheme"],
                "descr": options["descr"],
                "verify_tls": not options["insecure"],
            },
        )
        verb = "Registered" if created else "Updated"
        self.stdout.write(
            f"{verb} remote {database.name} ({database.scheme}://"
            f"{database.address}:{database.port}, Host: {database.hostname})."
        )
