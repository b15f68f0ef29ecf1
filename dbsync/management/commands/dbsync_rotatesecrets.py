"""manage.py dbsync_rotatesecrets: re-encrypt every stored remote secret under the newest key.

Run it after putting a new key first in DBSYNC_SECRET_KEYS (or changing
DJANGO_SECRET_KEY, the old one moved to DJANGO_SECRET_KEY_FALLBACKS); then the
old key can be dropped. The stored values are read and written as ciphertext
(raw SQL: the model field would decrypt them), in one transaction.
"""

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from dbsync.models import Database
from dbsync.secrets import rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every remote's stored password and token under the newest key "
        "(the first of DBSYNC_SECRET_KEYS, or the one derived from DJANGO_SECRET_KEY), "
        "so that older keys can be retired."
    )

    def handle(self, *args, **options):
        table = connection.ops.quote_name(Database._meta.db_table)
        columns = Database.SECRET_FIELDS
        rotated, problems = 0, []
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, name, {', '.join(columns)} FROM {table} ORDER BY name FOR UPDATE"
            )
            for pk, name, *values in cursor.fetchall():
                for column, value in zip(columns, values, strict=True):
                    if not value:
                        continue
                    try:
                        new = rotate(value)
                    except ValueError as exc:
                        problems.append(
                            f"The {column} of remote {name!r} cannot be decrypted: {exc}. "
                            f"Put its key back in DBSYNC_SECRET_KEYS and run this again, or "
                            f"enter the {column} again (admin, or dbsync_addremote --name "
                            f"{name} --{column}-file)."
                        )
                        continue
                    cursor.execute(
                        f"UPDATE {table} SET {column} = %s WHERE id = %s",  # noqa: S608 - names
                        [new, pk],
                    )
                    rotated += 1
        self.stdout.write(f"Re-encrypted {rotated} stored secrets under the newest key.")
        if problems:
            raise CommandError(
                "\n".join(problems) + f"\n{len(problems)} could not be re-encrypted (left as "
                "they were); until they are, keep the old keys."
            )
