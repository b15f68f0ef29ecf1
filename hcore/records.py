"""An overview of a time series' records for people: count, period and a small plot.

The plot is an inline SVG drawn on the server from a downsampled query: the period
is cut into at most PLOT_BUCKETS equal spans, and the database gives the lowest,
highest and mean value of each, so that a series of millions of records costs one
grouped query and a few kilobytes of markup.
"""

from dataclasses import dataclass, field
from datetime import timedelta, timezone

from django.db import connection
from django.db.models import Count, Max, Min

from .models import Record

PLOT_BUCKETS = 300
WIDTH, HEIGHT, MARGIN = 600, 150, 4


@dataclass
class Overview:
    count: int = 0
    start: object = None
    end: object = None
    utc_offset: int = 0
    low: float | None = None
    high: float | None = None
    bands: list = field(default_factory=list)  # SVG polygon points, min to max
    lines: list = field(default_factory=list)  # SVG polyline points, the means
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def zone(self):
        return timezone(timedelta(minutes=self.utc_offset))

    # Dates in the series' own time zone, as text: the date filter would show them in
    # the site's.
    @property
    def local_start(self):
        return f"{self.start.astimezone(self.zone):%Y-%m-%d %H:%M}" if self.start else ""

    @property
    def local_end(self):
        return f"{self.end.astimezone(self.zone):%Y-%m-%d %H:%M}" if self.end else ""

    @property
    def zone_name(self):
        sign = "+" if self.utc_offset >= 0 else "-"
        hours, minutes = divmod(abs(self.utc_offset), 60)
        return f"UTC{sign}{hours:02d}:{minutes:02d}"


def overview(series, buckets=PLOT_BUCKETS):
    """The Overview of a Timeseries' records."""
    stats = Record.objects.filter(timeseries=series).aggregate(
        count=Count("timestamp"), start=Min("timestamp"), end=Max("timestamp")
    )
    result = Overview(utc_offset=series.time_zone.utc_offset, **stats)
    if not result.count:
        return result
    span = (result.end - result.start).total_seconds()
    step = max(span / buckets, 1.0)
    rows = bucket_rows(series.pk, result.start, step, buckets)
    values = [v for _, low, high, _mean in rows for v in (low, high) if v is not None]
    if not values:
        return result
    result.low, result.high = min(values), max(values)
    draw(result, rows, buckets)
    return result


def bucket_rows(series_pk, start, step, buckets):
    """[(bucket, min, max, mean)] of the values, by bucket, empty buckets left out."""
    if connection.vendor == "postgresql":
        bucket = 'FLOOR(EXTRACT(EPOCH FROM ("timestamp" - %s)) / %s)::integer'
    else:  # SQLite stores datetimes as text that julianday() reads; offsets are >= 0
        bucket = 'CAST((julianday("timestamp") - julianday(%s)) * 86400.0 / %s AS INTEGER)'
    table = Record._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT b, min(value), max(value), avg(value) FROM (SELECT "
            f"CASE WHEN {bucket} >= %s THEN %s - 1 ELSE {bucket} END AS b, value "
            f"FROM {table} WHERE timeseries_id = %s) AS buckets GROUP BY b ORDER BY b",
            [
                *adapt(start, step),
                buckets,
                buckets,
                *adapt(start, step),
                series_pk,
            ],
        )
        return cursor.fetchall()


def adapt(start, step):
    if connection.vendor == "postgresql":
        return [start, step]
    return [connection.ops.adapt_datetimefield_value(start), step]


def draw(result, rows, buckets):
    """Fill ``result.bands`` and ``result.lines``: one run of points a gap-free stretch."""
    width = result.width - 2 * MARGIN
    height = result.height - 2 * MARGIN
    spread = (result.high - result.low) or 1.0

    def x(bucket):
        return MARGIN + width * (bucket + 0.5) / buckets

    def y(value):
        return MARGIN + height * (1 - (value - result.low) / spread)

    runs, run, previous = [], [], None
    for bucket, low, high, mean in rows:
        if mean is None or (previous is not None and bucket != previous + 1):
            if run:
                runs.append(run)
            run = []
        if mean is not None:
            run.append((x(bucket), y(low), y(high), y(mean)))
        previous = bucket
    if run:
        runs.append(run)
    for run in runs:
        if len(run) == 1:  # a lone point: give it some width
            px, ylo, yhi, ym = run[0]
            run = [(px - 1, ylo, yhi, ym), (px + 1, ylo, yhi, ym)]
        upper = [f"{px:.1f},{yhi:.1f}" for px, _ylo, yhi, _ym in run]
        lower = [f"{px:.1f},{ylo:.1f}" for px, ylo, _yhi, _ym in reversed(run)]
        result.bands.append(" ".join(upper + lower))
        result.lines.append(" ".join(f"{px:.1f},{ym:.1f}" for px, _ylo, _yhi, ym in run))
