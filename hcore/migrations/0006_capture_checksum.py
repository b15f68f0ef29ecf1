"""The served content's running checksum (hcore.capture, hcore.checksums): a checksum
column on the change counters, the table of each table's checksum SQL, and the
capture triggers made again to keep it (an UPDATE's old rows, a TRUNCATE's zero).
The checksums are computed after migrate (hcore.checksums.refresh), from the models
as they are then."""

from importlib import import_module

from django.db import migrations

# The tables that 0004 captured: the same, the triggers made again.
CAPTURED = import_module("hcore.migrations.0004_change_capture")


def upgrade(apps, schema_editor):
    from hcore import capture

    capture.upgrade(schema_editor.connection, CAPTURED.TABLES, CAPTURED.LINKS)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("hcore", "0005_capture_clock"),
    ]

    operations = [migrations.RunPython(upgrade, migrations.RunPython.noop)]
