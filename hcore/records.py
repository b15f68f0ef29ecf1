"""An overview of a time series' records for people: count, period and a chart.

The chart (``hcore.chart`` draws it) is fed from the database at the resolution of
the drawing: a series of up to ``DETAIL_LIMIT`` records is read record by record;
a larger one is cut into one span of time a pixel column, and one grouped query
gives the lowest and highest value of each and the times of its first and last
value, so that a series of ten million records costs one pass over its index and
a few kilobytes of markup. Missing values (empty, or not finite) are left out of
the lines; where consecutive values are further apart than the series' time step
(or, without one, a clear multiple of its usual spacing) the line breaks. A gap
narrower than a pixel column of a downsampled series is not drawn.
"""

import statistics
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Count, Max, Min

from . import chart
from .models import Record, RecordsSummary

DETAIL_LIMIT = 5000
SPACING_SAMPLE = 1000
# Without a time step, values further apart than this many times the usual spacing
# are a gap; with one, any spacing beyond the step (a month counts 31 days).
USUAL_SPACING_FACTOR = 3
MONTH_MINUTES = 31 * 24 * 60
INF = float("inf")


@dataclass
class Overview:
    count: int = 0
    start: object = None
    end: object = None
    utc_offset: int = 0
    points: list = field(default_factory=list)
    max_gap: float | None = None

    # Dates in the series' own time zone, as text: the date filter would show them in
    # the site's. Any stored offset, even one beyond the ±24 h a tzinfo allows.
    @property
    def local_start(self):
        return self.local(self.start)

    @property
    def local_end(self):
        return self.local(self.end)

    def local(self, moment):
        if moment is None:
            return ""
        return f"{chart.local_time(moment.timestamp(), self.utc_offset):%Y-%m-%d %H:%M}"

    @property
    def zone_name(self):
        return chart.zone_name(self.utc_offset)

    @property
    def low(self):
        values = [p.low for p in self.points if p is not None]
        return min(values) if values else None

    @property
    def high(self):
        values = [p.high for p in self.points if p is not None]
        return max(values) if values else None


def overview(series, columns=chart.WIDTH - chart.PLOT_MARGIN):
    """The Overview of a Timeseries' records, with points for ``columns`` pixel columns."""
    result = Overview(utc_offset=series.time_zone.utc_offset, **counts(series))
    if not result.count:
        return result
    if result.count <= DETAIL_LIMIT:
        result.points = detailed_points(series)
        result.max_gap = max_gap(series, [p.first for p in result.points if p is not None])
    else:
        start, end = result.start.timestamp(), result.end.timestamp()
        step = max((end - start) / columns, 1e-6)
        result.points = column_points(series.pk, start, step, columns)
        result.max_gap = max(max_gap(series, sample_times(series)) or 0, step)
    return result


def counts(series):
    """{count, start, end} of the records: kept by PostgreSQL's triggers in the series'
    RecordsSummary (a count of millions of records would cost a pass over them), or
    counted where there is none (SQLite)."""
    if connection.vendor == "postgresql":
        kept = RecordsSummary.objects.filter(timeseries=series).values("count", "start", "end")
        if kept:
            return kept[0]
    return Record.objects.filter(timeseries=series).aggregate(
        count=Count("timestamp"), start=Min("timestamp"), end=Max("timestamp")
    )


def render(series, result, **size):
    """The SVG chart of an Overview of ``series``."""
    unit = series.unit_of_measurement
    label = f"{series.variable.descr} ({unit.symbol})" if series.variable.descr else unit.symbol
    return chart.render(
        result.points,
        start=result.start.timestamp(),
        end=result.end.timestamp(),
        utc_offset=result.utc_offset,
        max_gap=result.max_gap,
        label=label,
        title=f"{series} from {result.local_start} to {result.local_end} ({result.zone_name})",
        **size,
    )


def is_value(value):
    return value is not None and -INF < value < INF


def detailed_points(series):
    """A Point a record, None for a missing value."""
    rows = Record.objects.filter(timeseries=series).order_by("timestamp")
    return [
        chart.Point(t.timestamp(), t.timestamp(), v, v) if is_value(v) else None
        for t, v in rows.values_list("timestamp", "value").iterator(chunk_size=DETAIL_LIMIT)
    ]


def sample_times(series):
    """The times of the first values of the series, to learn its usual spacing."""
    rows = Record.objects.filter(timeseries=series).order_by("timestamp")
    return [t.timestamp() for t in rows.values_list("timestamp", flat=True)[:SPACING_SAMPLE]]


def max_gap(series, times):
    """Seconds between two values beyond which the line breaks; None: never."""
    step = series.time_step
    if step is not None and (step.length_minutes or step.length_months):
        return 60 * (step.length_minutes or step.length_months * MONTH_MINUTES)
    spacings = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    if not spacings:
        return None
    return USUAL_SPACING_FACTOR * statistics.median(spacings)


def column_points(series_pk, start, step, columns):
    """A Point a pixel column that holds values, in order (columns without are skipped:
    the gap between their neighbours breaks the line)."""
    if connection.vendor == "postgresql":
        epoch = "date_part('epoch', \"timestamp\")"  # float8; EXTRACT's numeric is slower
        column = "LEAST(FLOOR((t - %s) / %s), %s)"
    else:  # SQLite stores datetimes as text that julianday() reads
        epoch = '(julianday("timestamp") - 2440587.5) * 86400.0'
        column = "MIN(CAST((t - %s) / %s AS INTEGER), %s)"
    table = Record._meta.db_table
    with connection.cursor() as cursor:
        # Not finite values (PostgreSQL's NaN and infinities) are missing ones.
        cursor.execute(
            f"SELECT {column} AS c, min(t), max(t), min(value), max(value) "
            f"FROM (SELECT {epoch} AS t, value FROM {table} "
            f"WHERE timeseries_id = %s AND value > %s AND value < %s) AS v "
            f"GROUP BY c ORDER BY c",
            [start, step, columns - 1, series_pk, -INF, INF],
        )
        return [chart.Point(first, last, low, high) for _c, first, last, low, high in cursor]
