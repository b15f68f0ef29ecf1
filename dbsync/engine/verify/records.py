"""The records of a replica against its remote's, series by series: the remote's
records summary (count and checksum per series, ``api.records``) against the same
figures computed here from the records as they are (never from the state the last sync
stored, so that a hand edit shows).

A checksum is comparable only if both sides hash a record alike: PostgreSQL's
``hash_record_extended`` on both, or the Python hash on both (SQLite). A remote on
PostgreSQL names ``changed_after`` among its summary's parameters; one on SQLite names
none. Series changed at the remote since the replica's records cursor are the next
sync's work, not a divergence (their summary is asked for with ``changed_after``).
"""

from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Q

from hcore.models import Record, Timeseries
from protocol.formats import RECORD_HASH_SQL, format_checksum, python_record_hash

from ..records.summary import fetch_summary, records_endpoints, summary_params

LABEL = "hcore.record"


@dataclass
class RecordsVerdict:
    model: str = LABEL
    series: int = 0  # series compared
    differ: list = field(default_factory=list)  # remote pks of series whose records differ
    pending: int = 0
    note: str = ""  # why nothing was compared, if so

    @property
    def differing(self):
        return len(self.differ)

    @property
    def equal(self):
        return not self.differ

    def describe(self):
        if self.note:
            return f"{self.model}: not verified ({self.note})"
        if self.equal:
            text = f"{self.model}: equal ({self.series} series)"
        else:
            text = f"{self.model}: the records of {len(self.differ)} series differ"
        if self.pending:
            text += f"; {self.pending} series changed at the remote since the last sync"
        return text

    def as_json(self, listed=100):
        return {
            "model": self.model,
            "equal": self.equal,
            "differing": self.differing,
            "series": self.differ[:listed],
            "pending": self.pending,
            "note": self.note,
        }


def verify_records(database, client, work):
    verdict = RecordsVerdict()
    urls = records_endpoints(client)
    if urls is None:
        verdict.note = "the remote serves no records"
        return verdict
    remote_postgresql = "changed_after" in (urls.get("summary_parameters") or [])
    if remote_postgresql != (connection.vendor == "postgresql"):
        verdict.note = "the remote and this instance hash records differently"
        return verdict
    summary = fetch_summary(database, client, urls, work)
    changed = set()
    params = summary_params(database, urls)
    if params:
        changed = set(fetch_summary(database, client, urls, work, params))
    ours = local_summaries(database)
    for remote_pk, (count, checksum) in sorted(ours.items()):
        entry = summary.get(remote_pk)
        if entry is None:  # the series itself differs: the objects' verification says so
            continue
        verdict.series += 1
        if (entry.count, entry.checksum) == (count, checksum):
            continue
        if remote_pk in changed:
            verdict.pending += 1
        else:
            verdict.differ.append(remote_pk)
    return verdict


def local_summaries(database):
    """{remote pk of a series: (count, checksum)} of the records here, as they are."""
    if connection.vendor == "postgresql":
        series, records = Timeseries._meta.db_table, Record._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT s.original_id, count(r.timeseries_id), "
                f"COALESCE(sum({RECORD_HASH_SQL}) FILTER (WHERE r.timeseries_id IS NOT NULL), 0) "
                f"FROM {series} s LEFT JOIN {records} r ON r.timeseries_id = s.id "
                f"WHERE s.original_db_id = %s GROUP BY s.original_id",
                [database.pk],
            )
            return {pk: (n, format_checksum(total)) for pk, n, total in cursor.fetchall()}
    totals = {
        pk: [0, 0]
        for pk in Timeseries._base_manager.filter(original_db=database).values_list(
            "original_id", flat=True
        )
    }
    rows = Record.objects.filter(Q(timeseries__original_db=database)).values_list(
        "timeseries__original_id", "timestamp", "value", "flags"
    )
    for pk, timestamp, value, flags in rows.iterator(chunk_size=5_000):
        totals[pk][0] += 1
        totals[pk][1] += python_record_hash(timestamp, value, flags)
    return {pk: (n, format_checksum(total)) for pk, (n, total) in totals.items()}
