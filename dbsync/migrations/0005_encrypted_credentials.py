# Remote credentials encrypted at rest (dbsync.secrets): the columns become text
# (a Fernet token is longer than its clear text), then every stored password and
# token is encrypted under the newest key. Backwards: decrypted, then varchar(256).
#
# Raw SQL on purpose: the field decrypts what it reads, and these values are not
# encrypted yet (forwards) or must be read as stored (backwards).

from django.db import migrations

import dbsync.secrets

COLUMNS = ("password", "token")


def _rows(cursor):
    cursor.execute("SELECT id, name, password, token FROM dbsync_database ORDER BY id")
    return cursor.fetchall()


def encrypt_stored(apps, schema_editor):
    from dbsync.secrets import encrypt, is_encrypted

    with schema_editor.connection.cursor() as cursor:
        for pk, _name, *values in _rows(cursor):
            new = [encrypt(v) if v and not is_encrypted(v) else v for v in values]
            if new != values:
                cursor.execute(
                    "UPDATE dbsync_database SET password = %s, token = %s WHERE id = %s",
                    [*new, pk],
                )


def decrypt_stored(apps, schema_editor):
    from dbsync.secrets import decrypt, is_encrypted

    with schema_editor.connection.cursor() as cursor:
        for pk, name, *values in _rows(cursor):
            clear = []
            for column, value in zip(COLUMNS, values, strict=True):
                if value and is_encrypted(value):
                    try:
                        value = decrypt(value)
                    except ValueError as exc:
                        raise RuntimeError(
                            f"Cannot unapply: the {column} of remote {name!r}: {exc}. Put the "
                            f"key back in DBSYNC_SECRET_KEYS, or clear that {column} first."
                        ) from exc
                if len(value or "") > 256:
                    raise RuntimeError(
                        f"Cannot unapply: the {column} of remote {name!r} is longer than the "
                        f"256 characters the old column holds; clear it first."
                    )
                clear.append(value)
            if clear != values:
                cursor.execute(
                    "UPDATE dbsync_database SET password = %s, token = %s WHERE id = %s",
                    [*clear, pk],
                )


class Migration(migrations.Migration):

    dependencies = [
        ('dbsync', '0004_records_cursor'),
    ]

    operations = [
        migrations.AlterField(
            model_name='database',
            name='password',
            field=dbsync.secrets.EncryptedTextField(blank=True, help_text='Password for HTTP basic authentication. Stored encrypted, sent over HTTPS only, never logged.', max_length=1024, verbose_name='password'),
        ),
        migrations.AlterField(
            model_name='database',
            name='token',
            field=dbsync.secrets.EncryptedTextField(blank=True, help_text='For a private remote that uses token authentication. Stored encrypted, sent over HTTPS only, never logged.', max_length=1024, verbose_name='API token'),
        ),
        migrations.RunPython(encrypt_stored, decrypt_stored),
    ]
