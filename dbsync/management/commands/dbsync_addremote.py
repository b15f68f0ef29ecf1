"""manage.py dbsync_addremote: register (or update) a remote instance.

A password or token is read from a file (``-``: stdin) or the environment, never
from the arguments, which other users see in ``ps`` and shells keep in their
history. Updating a remote changes only what is given; changing its endpoint
(scheme, hostname, IP address, port) clears its stored password and token unless
new ones are given too (``Database.save``). Credentials for a plain-HTTP remote
are refused (``Database.credentials_refusal``).
"""

import os
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from dbsync.models import Database

DEFAULT_PORTS = {"http": 80, "https": 443}
SECRET_ENV = {"token": "DBSYNC_REMOTE_TOKEN", "password": "DBSYNC_REMOTE_PASSWORD"}


class Command(BaseCommand):
    help = (
        "Register a remote Enhydris instance to sync from, or update a registered one (only "
        "what is given changes). A token or password is read from a file (--token-file, "
        "--password-file; '-' is stdin) or from DBSYNC_REMOTE_TOKEN / DBSYNC_REMOTE_PASSWORD, "
        "never from the command line."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # No abbreviations: "--token SECRET" must be an error, not --token-file SECRET.
        parser.allow_abbrev = False
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Local name of the remote.")
        parser.add_argument(
            "--hostname", help="FQDN of the remote instance (required for a new remote)."
        )
        parser.add_argument("--ip", help="IP address to connect to ('' to connect to the name).")
        parser.add_argument(
            "--port", type=int, help="TCP port (default: 443 for https, 80 for http)."
        )
        parser.add_argument("--scheme", choices=["http", "https"], help="https (default) or http.")
        parser.add_argument("--descr", help="Description.")
        tls = parser.add_mutually_exclusive_group()
        tls.add_argument(
            "--insecure",
            action="store_true",
            help="Do not verify the remote's TLS certificate (tests only).",
        )
        tls.add_argument(
            "--verify-tls", action="store_true", help="Verify it again (the default)."
        )
        layout = parser.add_mutually_exclusive_group()
        layout.add_argument(
            "--legacy",
            action="store_true",
            help="The remote serves only the 2010 layout (/api/<ModelName>/, "
            "/api/tsdata/<id>/; no manifest): every sync fetches everything.",
        )
        layout.add_argument(
            "--current",
            action="store_true",
            help="The remote serves today's API, with its manifest (the default).",
        )
        parser.add_argument(
            "--username", help="Username for HTTP basic authentication ('' to clear it)."
        )
        for name in ("token", "password"):
            secret = parser.add_mutually_exclusive_group()
            secret.add_argument(
                f"--{name}-file",
                metavar="PATH",
                help=f"Read the {name} from this file ('-': stdin); default: the environment "
                f"variable {SECRET_ENV[name]}, if set.",
            )
            secret.add_argument(
                f"--clear-{name}", action="store_true", help=f"Forget the stored {name}."
            )

    def handle(self, *args, **options):
        secrets = self.read_secrets(options)
        with transaction.atomic():
            database = Database.objects.select_for_update().filter(name=options["name"]).first()
            created = database is None
            if created:
                if not options["hostname"]:
                    raise CommandError(f"No remote named {options['name']!r}: give --hostname.")
                database = Database(name=options["name"])
            self.apply(database, options, created)
            for name, (value, _source) in secrets.items():
                database.give_secret(name, value)
            for name in Database.SECRET_FIELDS:
                if options[f"clear_{name}"]:
                    database.give_secret(name, "")
            if database.password and not database.username:
                raise CommandError("A password needs a username: give --username.")
            try:
                database.full_clean()
            except ValidationError as exc:
                raise CommandError(describe(exc)) from None
            database.save()
        verb = "Registered" if created else "Updated"
        legacy = database.api_layout == Database.LAYOUT_LEGACY
        self.stdout.write(
            f"{verb} {'legacy (2010 layout) ' if legacy else ''}remote {database.name} "
            f"({database.scheme}://{database.address}:{database.port}, Host: "
            f"{database.hostname})."
        )
        for name, (_value, source) in secrets.items():
            self.stdout.write(f"Stored its {name} (encrypted), read from {source}.")
        if database.cleared_secrets:
            what = " and ".join(database.cleared_secrets)
            self.stderr.write(
                f"Its endpoint changed, so its stored {what} (given for the old endpoint) "
                f"{'were' if len(database.cleared_secrets) > 1 else 'was'} cleared. Give "
                f"{what} again (--token-file, --password-file) if the new endpoint needs it."
            )
        problem = database.unreadable_secrets_message()
        if problem:
            self.stderr.write(problem)

    def apply(self, database, options, created):
        """Set what the options give; a new remote gets the defaults for the rest."""
        old_scheme, old_port = database.scheme, database.port
        scheme = options["scheme"] or ("https" if created else database.scheme)
        port = options["port"]
        if port is None:
            # The port follows the scheme unless it was set to something else.
            if created or old_port == DEFAULT_PORTS.get(old_scheme):
                port = DEFAULT_PORTS[scheme]
            else:
                port = old_port
        if not 0 < port <= 65535:
            raise CommandError("--port must be between 1 and 65535.")
        database.scheme, database.port = scheme, port
        if options["hostname"]:
            database.hostname = options["hostname"]
        if options["ip"] is not None:
            database.ip_address = options["ip"] or None
        if options["descr"] is not None:
            database.descr = options["descr"]
        if options["insecure"]:
            database.verify_tls = False
        elif options["verify_tls"]:
            database.verify_tls = True
        if options["username"] is not None:
            database.username = options["username"]
        if options["legacy"]:
            database.api_layout = Database.LAYOUT_LEGACY
        elif options["current"]:
            database.api_layout = Database.LAYOUT_CURRENT

    def read_secrets(self, options):
        """{name: (value, where it came from)} of the secrets given, read before any change."""
        files = {n: options[f"{n}_file"] for n in SECRET_ENV if options[f"{n}_file"]}
        if list(files.values()).count("-") > 1:
            raise CommandError("Only one of --token-file and --password-file can read stdin.")
        secrets = {}
        for name, env in SECRET_ENV.items():
            if name in files:
                value, source = read_secret_file(name, files[name]), f"--{name}-file"
                if files[name] == "-":
                    source = "stdin"
            elif os.environ.get(env) and not options[f"clear_{name}"]:
                value, source = os.environ[env].strip("\r\n"), f"${env}"
            else:
                continue
            if not value:
                raise CommandError(f"The {name} read from {source} is empty.")
            if len(value) > 1024:
                raise CommandError(
                    f"The {name} read from {source} is longer than 1024 characters."
                )
            secrets[name] = (value, source)
        return secrets


def read_secret_file(name, path):
    """The first line of ``path`` (or stdin), without its line end."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        # The reason only: if a secret was passed where the path goes, it is not echoed.
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise CommandError(f"Cannot read the --{name}-file given: {reason}.") from None
    lines = text.splitlines()
    if len(lines) > 1 and any(line.strip() for line in lines[1:]):
        raise CommandError(
            f"The --{name}-file given has more than one line; give the {name} alone."
        )
    return lines[0] if lines else ""


def describe(error):
    """A ValidationError as one line per problem, named by its field."""
    if hasattr(error, "error_dict"):
        return "\n".join(
            (message if field == "__all__" else f"{field}: {message}")
            for field, messages in error.message_dict.items()
            for message in messages
        )
    return "\n".join(error.messages)
