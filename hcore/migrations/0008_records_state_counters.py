"""Change counters (hcore.capture.install_counters) on the records sync states, which
are not served: a replica's tallies (dbsync.engine.tally) see every write to them."""

from django.db import migrations


def install(apps, schema_editor):
    from hcore import capture

    capture.install_counters(schema_editor.connection, ["hcore_recordssyncstate"])


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from hcore import capture

    with schema_editor.connection.cursor() as cursor:
        for name in capture.trigger_names("hcore_recordssyncstate")[1:]:
            cursor.execute(f'DROP TRIGGER IF EXISTS {name} ON "hcore_recordssyncstate"')
        cursor.execute(
            f"DELETE FROM {capture.COUNTER_TABLE} WHERE table_name = 'hcore_recordssyncstate'"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("hcore", "0007_summary_changed_index"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
