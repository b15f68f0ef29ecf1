"""Tombstone retention (hcore.tombstones): the clock table that turns a number of days
into a horizon, with its first mark (retention counts from it)."""

from django.db import migrations

SQL = """
CREATE TABLE IF NOT EXISTS dbsync_capture_clock (
    xid bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO dbsync_capture_clock (xid, at)
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, now();
"""


def create_clock(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(SQL)


def drop_clock(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS dbsync_capture_clock")


class Migration(migrations.Migration):
    dependencies = [
        ("hcore", "0004_change_capture"),
    ]

    operations = [migrations.RunPython(create_clock, drop_clock)]
