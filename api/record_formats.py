"""A series' records as files for people and their tools: the openmeteo formats.

``GET hcore/timeseries/<pk>/records/?fmt=<name>`` (``api.records`` writes the syncer's
format, the default); the names are Enhydris' own:

- ``hts``: the HTS file, version 5, as Enhydris serves it and ``htimeseries`` 8 writes
  it: ``Name=Value`` header lines, a blank line, then ``date,value,flags`` lines, every
  line ending in CR LF. The header: ``Unit`` (the unit's symbol), ``Count``, ``Title``
  (the series' name), ``Comment`` (the station's name, a blank line and the series'
  remarks, a line each), ``Timezone`` (``+0200``), ``Time_step`` (``10min``, ``1M``;
  none for a series without a time step), ``Variable``, ``Precision``, and, where the
  station's coordinates and their SRID are known, ``Location`` and ``Altitude``.
- ``hts2``: version 2, the format of the 2010 files: ``Version=2`` first, ``Timezone``
  as ``EET (UTC+0200)``, ``Time_step`` as ``minutes,months`` followed by
  ``Nominal_offset`` and ``Actual_offset`` where set, no ``Location``/``Altitude``.
- ``csv``: the ``date,value,flags`` lines alone, as Enhydris' ``fmt=csv``: no header
  row and no trailer.

The dates are in the series' time zone, all in one form a response (pandas and
``htimeseries`` refuse a mix): ``YYYY-MM-DD HH:MM``, with ``:SS`` if a record in the
response has seconds and ``:SS.ffffff`` if one has microseconds. Values are written
to the series' precision as ``htimeseries`` writes them (six decimals where it has
none), a missing one (or NaN) as nothing.

**The single-line rule.** A header value, and a record's flags, never span lines:
every control character (CR, LF, tab, the C1 controls such as NEL) and the Unicode
line and paragraph separators become a space. The comment, which HTS allows over
several lines, is cut at its line breaks into one ``Comment=`` line each (as
``htimeseries`` writes a multi-line comment), each then made single-line. In
``hts2``'s ``Timezone`` the code loses its parentheses, which delimit the offset.

A stored value that a format cannot express (a time-zone offset of a day or more)
is a 409 with a JSON error, before anything is sent.
"""

import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from django.db import connection

from hcore.models import Gpoint, Record, Timeseries

from .errors import ApiError
from .records import CHUNK_ROWS, SEND_BYTES, snapshot

logger = logging.getLogger(__name__)

HTS_CONTENT_TYPE = "text/vnd.openmeteo.timeseries; charset=utf-8"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
NEWLINE = "\r\n"
# Every character that ends a line for some reader, and the other controls.
NOT_SINGLE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_OFFSET_MINUTES = 24 * 60 - 1  # what a Python time zone (and so a reader) accepts
# Decimals written at most/least, whatever the stored precision says: a float holds
# 17 significant digits, and 10**-p must stay a float.
PRECISION_RANGE = (-300, 30)
FILENAME_STEM_CHARS = 80
TABLE = Record._meta.db_table


@dataclass(frozen=True)
class RecordFormat:
    name: str
    extension: str
    content_type: str
    version: int | None  # the HTS version; None: no header


FORMATS = {
    "hts": RecordFormat("hts", "hts", HTS_CONTENT_TYPE, 5),
    "hts2": RecordFormat("hts2", "hts", HTS_CONTENT_TYPE, 2),
    "csv": RecordFormat("csv", "csv", CSV_CONTENT_TYPE, None),
}


def parse_format(value):
    """The :class:`RecordFormat` that ``fmt`` names, or None (absent: the syncer's)."""
    if value is None:
        return None
    found = FORMATS.get(value.lower())
    if found is None:
        raise ApiError(
            400,
            f"fmt must be one of {', '.join(FORMATS)} (or absent, for the syncer's format), "
            f"not {value[:40]!r}.",
        )
    return found


def check_expressible(series):
    offset = series.time_zone.utc_offset
    if abs(offset) > MAX_OFFSET_MINUTES:
        raise ApiError(
            409,
            f"Time series {series.pk} has a time zone offset of {offset} minutes; the "
            f"formats hts, hts2 and csv can express at most ±23:59.",
        )


# --- the single-line rule and the file name --------------------------------------------------


def single_line(value):
    """``value`` as text on one line (see the module's docstring)."""
    return NOT_SINGLE_LINE.sub(" ", str(value))


def comment_lines(text):
    """A multi-line text as HTS comment lines, each on one line."""
    return [single_line(line) for line in text.splitlines()]


def content_disposition(series, record_format):
    """``inline`` with the file's name: ``<pk>-<the series' name>.<extension>``, its
    words only, as ASCII (``filename``) and in full (``filename*``, RFC 6266)."""
    name = unicodedata.normalize("NFC", series.name)
    words = "-".join(re.findall(r"\w+", name))[:FILENAME_STEM_CHARS]
    ascii_words = "-".join(re.findall(r"[A-Za-z0-9]+", unicodedata.normalize("NFKD", name)))[
        :FILENAME_STEM_CHARS
    ]
    ext = record_format.extension
    ascii_name = f"{series.pk}-{ascii_words}.{ext}" if ascii_words else f"{series.pk}.{ext}"
    full_name = f"{series.pk}-{words}.{ext}" if words else f"{series.pk}.{ext}"
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(full_name, safe='')}"


# --- the header -----------------------------------------------------------------------------


def series_for_file(pk):
    """The series with what its header shows, in one query."""
    return Timeseries._base_manager.select_related(
        "time_zone", "time_step", "variable", "unit_of_measurement", "gentity"
    ).get(pk=pk)


def header_lines(series, count, version):
    """The HTS header of ``series`` (its records: ``count``), a line a string."""
    fields = [("Version", 2)] if version == 2 else []
    fields += [
        ("Unit", series.unit_of_measurement.symbol),
        ("Count", count),
        ("Title", series.name),
    ]
    fields += [("Comment", line) for line in comment_lines(comment_of(series))]
    fields.append(("Timezone", timezone_2010(series) if version == 2 else timezone_5(series)))
    fields += time_step_fields(series, version)
    fields.append(("Variable", series.variable.descr))
    if series.precision is not None:
        fields.append(("Precision", series.precision))
    if version != 2:
        fields += location_fields(series)
    return [f"{name}={single_line(value)}" for name, value in fields]


def comment_of(series):
    # As Enhydris: the station's name, a blank line, the remarks.
    return f"{series.gentity.name}\n\n{series.remarks}"


def signed_hhmm(minutes):
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{rest:02d}"


def timezone_5(series):
    return signed_hhmm(series.time_zone.utc_offset)


def timezone_2010(series):
    code = single_line(series.time_zone.code).replace("(", "").replace(")", "").strip()
    return f"{code} (UTC{signed_hhmm(series.time_zone.utc_offset)})".strip()


def time_step_fields(series, version):
    """``Time_step`` where the series has one, exactly one of minutes and months; in
    version 2 also the offsets, as the 2010 files had them."""
    step = series.time_step
    if step is None or bool(step.length_minutes) == bool(step.length_months):
        return []
    if version != 2:
        if step.length_minutes:
            return [("Time_step", f"{step.length_minutes}min")]
        return [("Time_step", f"{step.length_months}M")]
    fields = [("Time_step", f"{step.length_minutes},{step.length_months}")]
    nominal = (series.nominal_offset_minutes, series.nominal_offset_months)
    actual = (series.actual_offset_minutes, series.actual_offset_months)
    if None not in nominal:
        fields.append(("Nominal_offset", "{},{}".format(*nominal)))
    if None not in actual:
        fields.append(("Actual_offset", "{},{}".format(*actual)))
    return fields


def location_fields(series):
    """``Location`` (and ``Altitude``) where the station's point and its SRID are known,
    in htimeseries' form."""
    point = (
        Gpoint._base_manager.filter(pk=series.gentity_id)
        .values("abscissa", "ordinate", "srid", "altitude", "asrid")
        .first()
    )
    if point is None or None in (point["abscissa"], point["ordinate"], point["srid"]):
        return []
    fields = [("Location", f"{point['abscissa']:.6f} {point['ordinate']:.6f} {point['srid']}")]
    if point["altitude"] is not None:
        altitude = f"{point['altitude']:.2f}"
        fields.append(("Altitude", f"{altitude} {point['asrid']}" if point["asrid"] else altitude))
    return fields


# --- the records ----------------------------------------------------------------------------


def value_writer(precision):
    """A function writing a value as htimeseries does at ``precision``."""
    if precision is None:
        return lambda value: format(value, "f")  # "%f": six decimals
    precision = min(max(precision, PRECISION_RANGE[0]), PRECISION_RANGE[1])
    if precision >= 0:
        spec = f".{precision}f"
        return lambda value: format(value, spec)
    unit = 10.0**-precision

    def rounded(value):
        if not math.isfinite(value):
            return format(value, ".0f")
        return format(round(value / unit) * unit, ".0f")

    return rounded


def records_shape(pk, start, end):
    """(count, timespec) of these records: how many, and how their dates are written:
    "minutes", "seconds" or "microseconds", the finest that any of them needs."""
    if connection.vendor == "postgresql":
        where, params = range_sql(pk, start, end)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT count(*), "
                f'bool_or(date_trunc(\'second\', "timestamp") <> "timestamp"), '
                f'bool_or(date_trunc(\'minute\', "timestamp") <> "timestamp") '
                f"FROM {TABLE} WHERE {where}",
                params,
            )
            count, micro, second = cursor.fetchone()
    else:
        count, micro, second = 0, False, False
        moments = records_of(pk, start, end).values_list("timestamp", flat=True)
        for moment in moments.iterator(CHUNK_ROWS):
            count += 1
            micro = micro or bool(moment.microsecond)
            second = second or bool(moment.second)
    if micro:
        return count, "microseconds"
    return count, "seconds" if second else "minutes"


def range_sql(pk, start, end):
    where, params = "timeseries_id = %s", [pk]
    if start is not None:
        where += ' AND "timestamp" >= %s'
        params.append(start)
    if end is not None:
        where += ' AND "timestamp" <= %s'
        params.append(end)
    return where, params


def records_of(pk, start, end):
    queryset = Record.objects.filter(timeseries_id=pk)
    if start is not None:
        queryset = queryset.filter(timestamp__gte=start)
    if end is not None:
        queryset = queryset.filter(timestamp__lte=end)
    return queryset


# The dates' forms, as PostgreSQL's to_char and Python's isoformat write them.
PG_DATE_FORMATS = {
    "minutes": "YYYY-MM-DD HH24:MI",
    "seconds": "YYYY-MM-DD HH24:MI:SS",
    "microseconds": "YYYY-MM-DD HH24:MI:SS.US",
}


def local_rows(pk, start, end, utc_offset, timespec):
    """(date as text in the series' time zone, value, flags) of the records, oldest
    first: on PostgreSQL written by the database from a server-side cursor (the dates
    cost most in Python), elsewhere in Python."""
    if connection.vendor == "postgresql":
        where, params = range_sql(pk, start, end)
        with connection.chunked_cursor() as cursor:
            cursor.execute(
                f'SELECT to_char("timestamp" AT TIME ZONE make_interval(mins => %s), %s), '
                f'value, flags FROM {TABLE} WHERE {where} ORDER BY "timestamp"',
                [utc_offset, PG_DATE_FORMATS[timespec], *params],
            )
            while rows := cursor.fetchmany(CHUNK_ROWS):
                yield from rows
        return
    shift = timedelta(minutes=utc_offset)
    rows = (
        records_of(pk, start, end).order_by("timestamp").values_list("timestamp", "value", "flags")
    )
    for timestamp, value, flags in rows.iterator(chunk_size=CHUNK_ROWS):
        yield (timestamp + shift).replace(tzinfo=None).isoformat(" ", timespec), value, flags


def record_lines(rows, write_value):
    """``date,value,flags`` lines of ``rows`` ((date as text, value, flags))."""
    for date, value, flags in rows:
        text = "" if value is None or math.isnan(value) else write_value(value)
        if flags:
            flags = single_line(flags)
            if "," in flags or '"' in flags:
                flags = '"' + flags.replace('"', '""') + '"'
        yield f"{date},{text},{flags}{NEWLINE}"


def stream_file(series, start, end, record_format):
    """The body of ``series``' records from ``start`` to ``end`` in ``record_format``,
    as bytes: the header (with the records' count) and the records read in one
    snapshot."""
    try:
        yield from file_body(series.pk, start, end, record_format)
    except Exception:
        # What is sent is cut short: an HTS reader sees fewer records than Count.
        logger.exception("Records of timeseries %s as %s failed", series.pk, record_format.name)
        raise


def file_body(pk, start, end, record_format):
    with snapshot():
        series = series_for_file(pk)
        count, timespec = records_shape(series.pk, start, end)
        buffer = []
        if record_format.version is not None:
            lines = header_lines(series, count, record_format.version)
            buffer += [line + NEWLINE for line in lines]
            buffer.append(NEWLINE)
        rows = local_rows(series.pk, start, end, series.time_zone.utc_offset, timespec)
        lines = record_lines(rows, value_writer(series.precision))
        size = 0
        for line in lines:
            buffer.append(line)
            size += len(line)
            if size >= SEND_BYTES:
                yield "".join(buffer).encode()
                buffer.clear()
                size = 0
        yield "".join(buffer).encode()
