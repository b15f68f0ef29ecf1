import importlib

from django.db import migrations, models

# The summary's triggers (migration 0002) also note when a series' summary changed, so
# that the API can list only the series changed after a moment (records-summary's
# changed_after). clock_timestamp(), not now(): the time of the statement, not of its
# transaction's start, so that a long transaction's change is not dated long before it
# can be seen (a syncer's overlap window, DBSYNC_OVERLAP_SECONDS, covers the rest).
# A TRUNCATE now empties each summary instead of deleting it: a summary that vanished
# would not be listed as changed, and a syncer would keep the records it held.
SUMMARIZE = """
CREATE OR REPLACE FUNCTION hcore_record_summarize() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE hcore_recordssummary SET count = 0, start = NULL, "end" = NULL,
            checksum = 0, changed = clock_timestamp();
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO hcore_recordssummary AS s
            (timeseries_id, count, start, "end", checksum, changed)
        SELECT timeseries_id, count(*), min("timestamp"), max("timestamp"),
               sum(hash_record_extended(row("timestamp", value, flags), 1)), clock_timestamp()
        FROM new_records GROUP BY timeseries_id ORDER BY timeseries_id
        ON CONFLICT (timeseries_id) DO UPDATE SET
            count = s.count + EXCLUDED.count,
            start = LEAST(s.start, EXCLUDED.start),
            "end" = GREATEST(s."end", EXCLUDED."end"),
            checksum = s.checksum + EXCLUDED.checksum,
            changed = EXCLUDED.changed;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE hcore_recordssummary s SET
            count = s.count - gone.n,
            checksum = s.checksum - gone.h,
            start = (SELECT min(r."timestamp") FROM hcore_record r
                     WHERE r.timeseries_id = s.timeseries_id),
            "end" = (SELECT max(r."timestamp") FROM hcore_record r
                     WHERE r.timeseries_id = s.timeseries_id),
            changed = clock_timestamp()
        FROM (SELECT timeseries_id, count(*) AS n,
                     sum(hash_record_extended(row("timestamp", value, flags), 1)) AS h
              FROM old_records GROUP BY timeseries_id ORDER BY timeseries_id) AS gone
        WHERE s.timeseries_id = gone.timeseries_id;
    END IF;
    RETURN NULL;
END
$$;
"""


def previous():
    return importlib.import_module("hcore.migrations.0002_records")


def summarize(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(SUMMARIZE)
        # Summaries from before: changed now, as far as a syncer can tell.
        schema_editor.execute("UPDATE hcore_recordssummary SET changed = now()")


def unsummarize(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(previous().UNSUMMARIZE)
        schema_editor.execute(previous().SUMMARIZE)


class Migration(migrations.Migration):

    dependencies = [
        ("hcore", "0002_records"),
    ]

    operations = [
        migrations.AddField(
            model_name="recordssummary",
            name="changed",
            field=models.DateTimeField(
                blank=True,
                help_text="When the records last changed (the server's clock, set by the "
                "triggers); the API's records-summary?changed_after lists the series "
                "changed after a moment.",
                null=True,
                verbose_name="changed",
            ),
        ),
        migrations.RunPython(summarize, unsummarize),
    ]
