"""Time-series records over the API: CSV per series, in batches, and a summary.

Records are far too many for the dump machinery (``api.dumps``); they are served
in the historical Enhydris text format, one record a line
(``GET hcore/timeseries/<pk>/records/?start_date=...&end_date=...``, both optional
and inclusive)::

    2025-12-31 23:40,12.5,
    2025-12-31 23:50,,MISS
    # end count=2 checksum=8c1f0a5e33b7d2c4 utc_offset=120

- the date is ``YYYY-MM-DD HH:MM`` in the time series' own time zone (its
  ``TimeZone.utc_offset``, repeated in the last line); seconds (``:SS``) and
  microseconds (``:SS.ffffff``) are added only to a record that has them;
- the value is empty when missing; it is written with as many digits as it takes
  to read the same float back;
- the flags are space-separated words, quoted as CSV quotes them if they hold a
  comma, a quote or a line break;
- the last line, ``# end count=<records> checksum=<16 hex digits> utc_offset=<minutes>``,
  is always written: a body without it was cut short.

``start_date`` and ``end_date`` are ``YYYY-MM-DD HH:MM`` in the series' time zone, a
date alone, or ISO 8601 with an offset.

With ``fmt=hts``, ``hts2`` or ``csv`` the endpoint serves the records as a file for
people's tools instead, without the trailer (``api.record_formats``).

A syncer fetches many series a request (``GET hcore/timeseries/records/?series=...``):
``series`` lists ``<pk>`` (all its records) or ``<pk>:<after>`` (those after
``after``, a UNIX time in microseconds), comma-separated, at most
API_MAX_KEYS_PER_REQUEST. The body has a block a series, by ascending pk, each
the CSV above headed by ``# timeseries <pk> utc_offset=<minutes>``, or the one line
``# timeseries <pk> not found``. All blocks of a response are read in one snapshot,
with two statements on PostgreSQL, however many series it lists.

The checksum of a set of records is the sum, modulo 2**64, of a 64-bit hash of
each record (timestamp, value and flags). Being a sum, the checksum of a whole
series is the checksum of its first part plus that of the rest, so a client that
holds the first part can tell from the summary alone whether the remote's first
part is still what it holds (a rewrite of an old value changes its hash). The
hashes are PostgreSQL's own (``hash_record_extended``); on SQLite another hash is
computed in Python. Compare checksums of one server only. On PostgreSQL the summary
is kept up to date by triggers on the records table (``hcore.RecordsSummary``), so
that serving it costs a read of one row a series, not of every record.

The summary (``records-summary``) is a JSON list, one object a line as the dumps::

    [
    {"pk": 1, "count": 5000, "start": "2025-11-27T06:40:00+00:00",
     "end": "2025-12-31T23:50:00+00:00", "checksum": "9b4812ddd6282372", "utc_offset": 120},
    ...
    ]

(each object on one line; broken here to fit). ``start`` and ``end`` are UTC.

``records-summary?changed_after=<ISO 8601 datetime>`` lists only the series whose
summary changed after that moment (the triggers note when, on the database's clock, in
``RecordsSummary.changed``), so that a syncer's nightly run reads a few lines, not one
a series; a series that never had a record is not listed. Servers on SQLite compute the
summary and keep no such time: they ignore ``changed_after`` and list every series
(listing more is always correct). The manifest names the parameter
(``records.summary_parameters``) where it is honoured, and a syncer sends it only to a
server that names it. Those servers also give, in the manifest, their database's clock
(``records.database_time``, see ``database_time``): the clock of ``changed``, from which
a syncer takes the ``changed_after`` of its next run.
"""

import csv
import datetime as dt
import io
import logging
import re
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction
from django.utils.dateparse import parse_date

from hcore.models import Record, RecordsSummary, Timeseries
from protocol.formats import (
    EPOCH,
    MAX_KEY,
    RECORD_HASH_SQL,
    SERIES_HEADER,
    SERIES_NOT_FOUND,
    SERIES_TRAILER,
    format_checksum,
    python_record_hash,
)

from .errors import ApiError
from .params import in_utc, parse_iso_datetime

logger = logging.getLogger(__name__)

RECORDS_PARAMETERS = ("start_date", "end_date")
SUMMARY_PARAMETERS = ("changed_after",)
BATCH_PARAMETERS = ("series",)
BATCH_ITEM = re.compile(r"(?P<pk>[0-9]{1,19})(:(?P<after>-?[0-9]{1,19}))?")
CHUNK_ROWS = 5_000
SUMMARY_PAGE_ROWS = 50_000  # series read from the database a query
SEND_BYTES = 1 << 16
TEXTS_A_FETCH = 10  # series: the text of one may be large
TABLE = Record._meta.db_table
SPECIAL_FLOATS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def local_time(moment, offset_minutes):
    """The wall-clock time (naive) of ``moment`` at ``offset_minutes`` from UTC: any stored
    offset, even one beyond the ±24 h that a ``datetime.timezone`` takes."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=offset_minutes)


def format_date(moment):
    """``YYYY-MM-DD HH:MM``, with seconds and microseconds only where there are some."""
    if moment.microsecond:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    if moment.second:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def iso(moment):
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


# --- parameters ---------------------------------------------------------------------------


def parse_range(query, utc_offset):
    """(start, end), aware datetimes or None, from ``start_date``/``end_date``.

    Either ``YYYY-MM-DD HH:MM`` (in the series' time zone, as the CSV writes dates),
    a date alone (start: its first moment; end: its last), or ISO 8601 with an offset.
    """
    start = parse_bound("start_date", query.get("start_date"), utc_offset, end=False)
    end = parse_bound("end_date", query.get("end_date"), utc_offset, end=True)
    if start is not None and end is not None and start > end:
        raise ApiError(400, "start_date is after end_date.")
    return start, end


def parse_bound(name, value, utc_offset, end):
    if value is None:
        return None
    parsed = parse_iso_datetime(value)
    if parsed is None:
        day = parse_day(value)
        if day is not None:
            parsed = dt.datetime.combine(day, dt.time.max if end else dt.time.min)
    if parsed is None:
        raise ApiError(
            400,
            f"{name} must be a date and time such as '2025-12-31 23:50' (in the time "
            f"series' time zone) or ISO 8601 with an offset such as "
            f"2025-12-31T21:50:00+00:00 (escape '+' as %2B), not {value!r}.",
        )
    if parsed.tzinfo is None:  # a wall-clock time of the series: any stored offset
        try:
            return parsed.replace(tzinfo=dt.UTC) - dt.timedelta(minutes=utc_offset)
        except OverflowError:  # as in_utc: nothing lies beyond the range's end
            return (dt.datetime.max if parsed.year > 1 else dt.datetime.min).replace(tzinfo=dt.UTC)
    return in_utc(parsed)


def parse_day(value):
    try:
        return parse_date(value)
    except ValueError:
        return None


# --- records as CSV -------------------------------------------------------------------------


def series_or_404(pk):
    if pk > MAX_KEY:
        raise ApiError(404, f"No time series with pk={pk}.")
    series = Timeseries._base_manager.select_related("time_zone").filter(pk=pk).first()
    if series is None:
        raise ApiError(404, f"No time series with pk={pk}.")
    return series


def parse_batch(value):
    """The ``series`` of a batch request: [(pk, after)], ``after`` aware or None.

    Comma-separated items, each ``<pk>`` (all its records) or ``<pk>:<after>`` (its
    records after ``after``, a UNIX time in microseconds), at most
    API_MAX_KEYS_PER_REQUEST of them, each series once.
    """
    if not value:
        raise ApiError(400, "series is required: e.g. series=12,13:1767225000000000")
    items = value.split(",")
    limit = settings.API_MAX_KEYS_PER_REQUEST
    if len(items) > limit:
        raise ApiError(400, f"series lists {len(items)} items; at most {limit} are allowed.")
    batch, seen = [], set()
    for item in items:
        match = BATCH_ITEM.fullmatch(item)
        if match is None or int(match["pk"]) > MAX_KEY:
            raise ApiError(
                400,
                f"series items are <pk> or <pk>:<after> (after: UNIX time in microseconds); "
                f"{item[:40]!r} is neither.",
            )
        pk = int(match["pk"])
        if pk in seen:
            raise ApiError(400, f"series lists time series {pk} more than once.")
        seen.add(pk)
        after = None
        if match["after"] is not None:
            try:
                after = EPOCH + dt.timedelta(microseconds=int(match["after"]))
                after + dt.timedelta(microseconds=1)  # the start of stream_batch's range
            except OverflowError:
                raise ApiError(400, f"series: {item[:40]!r}: the time is out of range.") from None
        batch.append((pk, after))
    return batch


def stream_records(series, start=None, end=None):
    """The CSV body of one series' records (see the module's docstring), as bytes."""
    items = [(series.pk, start, end)]
    offsets = {series.pk: series.time_zone.utc_offset}
    return stream_blocks(items, offsets, headers=False)


def stream_batch(batch):
    """The body of a batch request (see the module's docstring)."""
    # A microsecond after ``after``: the records after it, and only those.
    items = [
        (pk, None if after is None else after + dt.timedelta(microseconds=1), None)
        for pk, after in sorted(batch)
    ]
    return stream_blocks(items, None, headers=True)


def stream_blocks(items, offsets, headers):
    """The blocks of ``items`` ([(pk, start, end)] by ascending pk), read in one
    snapshot; with ``headers``, each headed by ``# timeseries <pk> ...``."""
    try:
        with snapshot() as cursor:
            if offsets is None:
                offsets = utc_offsets([pk for pk, _start, _end in items])
            if connection.vendor == "postgresql":
                yield from postgresql_blocks(cursor, items, offsets, headers)
                return
            buffer = bytearray()
            for pk, start, end in items:
                if pk not in offsets:
                    buffer += SERIES_NOT_FOUND.format(pk=pk).encode()
                    continue
                if headers:
                    buffer += SERIES_HEADER.format(pk=pk, utc_offset=offsets[pk]).encode()
                yield from python_block(pk, offsets[pk], start, end, buffer)
            yield bytes(buffer)
    except Exception:
        # What is sent ends without its trailer: the client sees it was cut short.
        logger.exception("Records of timeseries %s failed", [pk for pk, *_ in items][:20])
        raise


@contextmanager
def snapshot():
    """A cursor whose reads all see one snapshot, so that each trailer describes the
    very rows sent (REPEATABLE READ; inside an outer transaction, that one's)."""
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            if outermost:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SET LOCAL extra_float_digits = 1")
        yield cursor


def utc_offsets(pks):
    rows = Timeseries._base_manager.filter(pk__in=pks).values_list("pk", "time_zone__utc_offset")
    return dict(rows)


# A record as a CSV line, written by PostgreSQL: the date in the series' time zone
# (seconds and microseconds only where there are some), the value as float8out
# writes it (the shortest exact digits), the flags quoted as CSV quotes them.
LOCAL_TIME = 'r."timestamp" AT TIME ZONE make_interval(mins => b.utc_offset)'
CSV_LINE = (
    "CASE "
    'WHEN date_trunc(\'minute\', r."timestamp") = r."timestamp" '
    f"THEN to_char({LOCAL_TIME}, 'YYYY-MM-DD HH24:MI') "
    'WHEN date_trunc(\'second\', r."timestamp") = r."timestamp" '
    f"THEN to_char({LOCAL_TIME}, 'YYYY-MM-DD HH24:MI:SS') "
    f"ELSE to_char({LOCAL_TIME}, 'YYYY-MM-DD HH24:MI:SS.US') END "
    "|| ',' || COALESCE(r.value::text, '') || ',' || "
    "CASE WHEN r.flags ~ E'[\",\\r\\n]' "
    "THEN '\"' || replace(r.flags, '\"', '\"\"') || '\"' ELSE r.flags END || E'\\n'"
)


def postgresql_blocks(cursor, items, offsets, headers):
    """The blocks of ``items`` from one statement, however many series they are:
    PostgreSQL joins each series' lines into one text, with their count and checksum,
    so that no record passes through Python on its own."""
    from psycopg import sql

    found = [(pk, start, end) for pk, start, end in items if pk in offsets]
    texts = {}
    if found:
        values = sql.SQL(", ").join(
            sql.SQL("({}::bigint, {}::timestamptz, {}::timestamptz, {}::integer)").format(
                sql.Literal(pk), sql.Literal(start), sql.Literal(end), sql.Literal(offsets[pk])
            )
            for pk, start, end in found
        )
        statement = sql.SQL(
            f"SELECT b.pk, count(*), sum({RECORD_HASH_SQL}), "
            f"string_agg({CSV_LINE}, '' ORDER BY r.\"timestamp\") "
            f'FROM (VALUES {{}}) AS b(pk, start, "end", utc_offset) JOIN {TABLE} r '
            f"ON r.timeseries_id = b.pk "
            f"AND r.\"timestamp\" >= COALESCE(b.start, '-infinity') "
            f'AND r."timestamp" <= COALESCE(b."end", \'infinity\') '
            f"GROUP BY b.pk"
        ).format(values)
        # psycopg's own cursor: the statement is composed, its values quoted already.
        cursor.cursor.execute(statement)
        while rows := cursor.cursor.fetchmany(TEXTS_A_FETCH):
            for pk, count, total, text in rows:
                texts[pk] = (count, total, text)
    buffer = bytearray()
    for pk, _start, _end in items:
        if pk not in offsets:
            buffer += SERIES_NOT_FOUND.format(pk=pk).encode()
            continue
        if headers:
            buffer += SERIES_HEADER.format(pk=pk, utc_offset=offsets[pk]).encode()
        count, total, text = texts.pop(pk, (0, 0, ""))
        buffer += text.encode()
        buffer += trailer(count, format_checksum(total), offsets[pk])
        if len(buffer) >= SEND_BYTES:
            yield bytes(buffer)
            buffer.clear()
    yield bytes(buffer)


def trailer(count, checksum, utc_offset):
    return SERIES_TRAILER.format(count=count, checksum=checksum, utc_offset=utc_offset).encode()


def format_float(value):
    """A value as PostgreSQL writes it (shortest exact digits, "3" for 3.0), near enough:
    readers parse it as a float anyway."""
    text = repr(float(value))
    text = SPECIAL_FLOATS.get(text, text)
    return text[:-2] if text.endswith(".0") else text


def python_block(pk, utc_offset, start, end, buffer):
    """One series' records and trailer, appended to ``buffer`` record by record in
    Python (SQLite: small instances); yields the buffer whenever it is full."""
    queryset = Record.objects.filter(timeseries_id=pk)
    if start is not None:
        queryset = queryset.filter(timestamp__gte=start)
    if end is not None:
        queryset = queryset.filter(timestamp__lte=end)
    rows = queryset.order_by("timestamp").values_list("timestamp", "value", "flags")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    count = total = 0
    for timestamp, value, flags in rows.iterator(chunk_size=CHUNK_ROWS):
        writer.writerow(
            (
                format_date(local_time(timestamp, utc_offset)),
                "" if value is None else format_float(value),
                flags or None,
            )
        )
        count += 1
        total += python_record_hash(timestamp, value, flags)
        if text.tell() >= SEND_BYTES:
            buffer += text.getvalue().encode()
            text.seek(0)
            text.truncate()
            yield bytes(buffer)
            buffer.clear()
    buffer += text.getvalue().encode()
    buffer += trailer(count, format_checksum(total), utc_offset)


# --- the summary of every series ---------------------------------------------------------------


def stream_summary(changed_after=None):
    """The body of ``records-summary``: a JSON list, one series a line, by pk; with
    ``changed_after`` (PostgreSQL), only the series whose summary changed after it."""
    if connection.vendor == "postgresql":
        rows = summary_rows_postgresql(changed_after)
    else:
        rows = summary_rows()
    yield b"[\n"
    separator = ""
    lines = []
    for pk, utc_offset, count, start, end, total in rows:
        lines.append(f"{separator}{summary_line(pk, utc_offset, count, start, end, total)}")
        separator = ",\n"
        if len(lines) >= CHUNK_ROWS:
            yield "".join(lines).encode()
            lines = []
    yield "".join(lines).encode()
    yield b"\n]\n" if separator else b"]\n"


def summary_parameters():
    """The parameters the summary honours, for the manifest: on SQLite, none (it
    accepts ``changed_after`` but lists every series)."""
    return list(SUMMARY_PARAMETERS) if connection.vendor == "postgresql" else []


def database_time():
    """The database's clock, for the manifest (``records.database_time``): the clock
    that stamps ``RecordsSummary.changed``, so a syncer's records cursor is taken from it,
    not from Django's (which may be on another host, its clock apart); None on SQLite,
    whose summary keeps no such time.

    ``now()``, the start of the transaction it is read in: a syncer reads the summary
    after the manifest, so every summary read begins after it, and a change committed
    after a read was stamped (``clock_timestamp()`` of its statement) after it too, except
    one made by a transaction already open then: ``DBSYNC_OVERLAP_SECONDS`` covers those.
    Were it read in the summary's own snapshot, ``now()`` would still be right (a
    snapshot begins after its transaction), where ``clock_timestamp()`` would be later
    than the snapshot's start, and a change committed between the two would be lost.
    """
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        ((moment,),) = cursor.fetchall()
    return moment


def summary_line(pk, utc_offset, count, start, end, total):
    """One entry of the summary: what ``OBJECT_ENCODER`` writes for it, formatted
    directly (every field is a number, a fixed-format string or null, none needs
    escaping), as a series' summary is served for every series of a remote."""
    if not count and start is None and end is None and not total:
        return ZERO_LINE.format(pk=int(pk), utc_offset=int(utc_offset))
    start = "null" if start is None else f'"{iso(start)}"'
    end = "null" if end is None else f'"{iso(end)}"'
    return (
        f'{{"pk": {int(pk)}, "count": {int(count)}, "start": {start}, "end": {end}, '
        f'"checksum": "{format_checksum(total)}", "utc_offset": {int(utc_offset)}}}'
    )


ZERO_LINE = (
    '{{"pk": {pk}, "count": 0, "start": null, "end": null, '
    '"checksum": "' + format_checksum(0) + '", "utc_offset": {utc_offset}}}'
)


def summary_rows_postgresql(changed_after=None):
    """The summary as PostgreSQL keeps it (hcore.RecordsSummary: kept in step with the
    records by triggers), so that serving it reads no record; with ``changed_after``,
    only the series whose summary changed after it (a row whose time is unknown, from
    before the column, counts as changed)."""
    series = Timeseries._meta.db_table
    zones = Timeseries._meta.get_field("time_zone").related_model._meta.db_table
    summaries = RecordsSummary._meta.db_table
    if changed_after is None:
        source, where, params = f"{series} s LEFT JOIN {summaries} m", "", []
    else:
        source = f"{series} s JOIN {summaries} m"
        where = "AND (m.changed > %s OR m.changed IS NULL) "
        params = [changed_after]
    # A page a query, by pk: psycopg holds a query's whole result in memory, and a
    # remote may have millions of series.
    last = 0  # primary keys are positive
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f'SELECT s.id, z.utc_offset, COALESCE(m.count, 0), m.start, m."end", '
                f"COALESCE(m.checksum, 0) "
                f"FROM {source} ON m.timeseries_id = s.id JOIN {zones} z ON z.id = s.time_zone_id "
                f"WHERE s.id > %s {where}ORDER BY s.id LIMIT {SUMMARY_PAGE_ROWS}",
                [last, *params],
            )
            rows = cursor.fetchall()
            yield from rows
            if len(rows) < SUMMARY_PAGE_ROWS:
                return
            last = rows[-1][0]


def computed_summary_rows_postgresql():
    """The summary computed from the records (what the triggers must agree with)."""
    series = Timeseries._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT s.id, COALESCE(a.n, 0), a.first, a.last, COALESCE(a.h, 0) "
            f"FROM {series} s LEFT JOIN ("
            f'SELECT timeseries_id, count(*) AS n, min("timestamp") AS first, '
            f'max("timestamp") AS last, sum({RECORD_HASH_SQL}) AS h '
            f"FROM {TABLE} GROUP BY timeseries_id) a ON a.timeseries_id = s.id "
            f"ORDER BY s.id"
        )
        return cursor.fetchall()


def summary_rows():
    """The summary computed in Python, record by record (SQLite: small instances)."""
    series = Timeseries._base_manager.order_by("pk").values_list("pk", "time_zone__utc_offset")
    stats = {}
    records = Record.objects.order_by("timeseries", "timestamp").values_list(
        "timeseries_id", "timestamp", "value", "flags"
    )
    for pk, timestamp, value, flags in records.iterator(chunk_size=CHUNK_ROWS):
        entry = stats.get(pk)
        if entry is None:
            entry = stats[pk] = [0, timestamp, timestamp, 0]
        entry[0] += 1
        entry[2] = timestamp
        entry[3] += python_record_hash(timestamp, value, flags)
    for pk, utc_offset in series:
        count, start, end, total = stats.get(pk, (0, None, None, 0))
        yield pk, utc_offset, count, start, end, total
