"""Change capture (hcore.capture): a marker column on every replicated table, its
triggers, tombstones and the change counters. Non-atomic: on a populated database the
column is added without a rewrite and backfilled a batch per transaction (see
docs/operations.md, "Upgrading to change capture")."""

from django.db import migrations

# The served tables as of this migration (table, primary key column), and the
# auto-created many-to-many tables whose links are served as a field of their owner.
TABLES = [
    ("hcore_eventtype", "id"),
    ("hcore_filetype", "id"),
    ("hcore_gentity", "id"),
    ("hcore_garea", "gentity_ptr_id"),
    ("hcore_gline", "gentity_ptr_id"),
    ("hcore_gpoint", "gentity_ptr_id"),
    ("hcore_politicaldivision", "garea_ptr_id"),
    ("hcore_waterbasin", "garea_ptr_id"),
    ("hcore_waterdivision", "garea_ptr_id"),
    ("hcore_station", "gpoint_ptr_id"),
    ("hcore_gentityaltcode", "id"),
    ("hcore_gentityaltcodetype", "id"),
    ("hcore_gentityevent", "id"),
    ("hcore_gentityfile", "id"),
    ("hcore_instrument", "id"),
    ("hcore_instrumenttype", "id"),
    ("hcore_lentity", "id"),
    ("hcore_organization", "lentity_ptr_id"),
    ("hcore_person", "lentity_ptr_id"),
    ("hcore_overseer", "id"),
    ("hcore_stationtype", "id"),
    ("hcore_timeseries", "id"),
    ("hcore_timestep", "id"),
    ("hcore_timezone", "id"),
    ("hcore_unitofmeasurement", "id"),
    ("hcore_variable", "id"),
]
LINKS = [
    (
        "hcore_unitofmeasurement_variables",
        "hcore_unitofmeasurement",
        "id",
        "unitofmeasurement_id",
    ),
]


def install(apps, schema_editor):
    from hcore import capture

    capture.install(schema_editor.connection, TABLES, LINKS)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("hcore", "0003_records_summary_changed"),
    ]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
