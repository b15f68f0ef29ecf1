"""Indexes of the incremental listings: records-summary?changed_after reads the series
whose summary changed by ``RecordsSummary.changed``, and the files listing's
changed_since the files written since by their change marker (PostgreSQL), rather than
every series and every file."""

from django.db import migrations, models

FILES_MARKER_INDEX = "hcore_gentityfile_dbsync_xid"


def index_files_marker(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {FILES_MARKER_INDEX} ON hcore_gentityfile (dbsync_xid)"
        )


def drop_files_marker_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {FILES_MARKER_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("hcore", "0006_capture_checksum"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="recordssummary",
            index=models.Index(fields=["changed"], name="hcore_summary_changed"),
        ),
        migrations.RunPython(index_files_marker, drop_files_marker_index),
    ]
