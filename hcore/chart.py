"""A chart of a time series as SVG, drawn on the server: points in, markup out.

Pure functions, no database: ``hcore.records`` gives the points (a record each, or
the lowest and highest value of each pixel column of a large series, computed in
SQL), this module draws them: a time axis with dates in the series' time zone, a
value axis with its label (the unit of measurement), and a line a stretch of
values, broken where values are missing or the records are further apart than
``max_gap``.

A point is a ``Point(first, last, low, high)``: the times (seconds since the
epoch, UTC) of the first and last value it stands for, and their lowest and
highest value; a single record has ``first == last`` and ``low == high``.
``None`` in the sequence of points marks missing values: the line breaks there.
"""

import datetime as dt
import math
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 800, 320
# Room for the value labels on the left, the dates below, the unit's label.
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 12, 44
PLOT_MARGIN = LEFT + RIGHT  # the width not given to the plot itself
TIME_TICKS, VALUE_TICKS = 7, 6
LINE_COLOUR, AXIS_COLOUR, GRID_COLOUR = "#417690", "#666", "#e4e4e4"
FONT = 'font-family="sans-serif" font-size="11"'
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

MINUTE, HOUR, DAY = 60, 3600, 86400
# Tick spacings of the time axis: seconds, or months (negative, counted in months).
TIME_STEPS = (
    MINUTE,
    5 * MINUTE,
    10 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    7 * DAY,
    -1,
    -2,
    -3,
    -6,
    -12,
    -24,
    -60,
    -120,
    -240,
    -600,
    -1200,
    -2400,
    -6000,
    -12000,
)
MONTH_SECONDS = 30.44 * DAY
EPOCH = dt.datetime(1970, 1, 1)
VALUE_LIMIT = 1e300


@dataclass(frozen=True)
class Point:
    first: float
    last: float
    low: float
    high: float


def text(value):
    """``value`` as XML character data: escaped, and without the characters that XML
    cannot hold at all (control characters, lone surrogates), which become U+FFFD."""
    return escape(NOT_XML.sub("\ufffd", str(value)))


def attribute(value):
    return quoteattr(NOT_XML.sub("\ufffd", str(value)))


def clamp(value):
    """Values beyond ±VALUE_LIMIT are drawn at it (their differences would overflow)."""
    return min(max(value, -VALUE_LIMIT), VALUE_LIMIT)


def runs(points, max_gap):
    """The points cut into stretches without a gap: lists of consecutive points, cut
    at every ``None`` and wherever the next point begins more than ``max_gap``
    seconds after the previous one ends (``max_gap`` None: only at ``None``)."""
    result, run = [], []
    for point in points:
        gap = point is None or run and max_gap is not None and point.first - run[-1].last > max_gap
        if gap and run:
            result.append(run)
            run = []
        if point is not None:
            run.append(point)
    if run:
        result.append(run)
    return result


def nice_step(span, count):
    """A step of 1, 2 or 5 times a power of ten giving about ``count`` ticks in ``span``."""
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power  # pragma: no cover (the loop ends at 10)


def value_ticks(low, high, count=VALUE_TICKS):
    """Round values from at most ``low`` to at least ``high``, and their step."""
    step = nice_step(high - low, count)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [k * step for k in range(first, last + 1)], step


def format_value(value, step):
    """A tick's value with as many digits as its step needs."""
    if abs(value) < step * 1e-6:
        return "0"
    if step >= 1e-6 and abs(value) < 1e9:
        return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"
    digits = math.floor(math.log10(abs(value))) - math.floor(math.log10(step)) + 1
    return f"{value:.{min(max(digits, 1), 17)}g}"


def time_step(span, count=TIME_TICKS):
    for step in TIME_STEPS:
        seconds = step if step > 0 else -step * MONTH_SECONDS
        if span / seconds <= count:
            return step
    return TIME_STEPS[-1]


def time_ticks(start, end, utc_offset, count=TIME_TICKS):
    """[(seconds since the epoch, label)]: round local times between start and end."""
    step = time_step(end - start, count)
    first = local_time(start, utc_offset)
    ticks = []
    if step > 0:
        local_start = start + utc_offset * 60
        moment = math.ceil(local_start / step) * step - utc_offset * 60
        if step >= 7 * DAY:  # weeks begin on Mondays: 1970-01-01 was a Thursday
            moment = math.ceil((local_start - 4 * DAY) / step) * step + 4 * DAY
            moment -= utc_offset * 60
        while moment <= end:
            ticks.append(moment)
            moment += step
    else:
        months = -step
        index = first.year * 12 + first.month - 1
        index = math.ceil(index / months) * months
        while index // 12 <= dt.MAXYEAR:
            local = dt.datetime(index // 12, index % 12 + 1, 1)
            moment = (local - EPOCH).total_seconds() - utc_offset * 60
            if moment > end:
                break
            if moment >= start:
                ticks.append(moment)
            index += months
    return [(moment, time_label(local_time(moment, utc_offset), step)) for moment in ticks]


def local_time(moment, utc_offset):
    """The wall-clock time (naive) of ``moment`` at ``utc_offset`` minutes from UTC: any
    offset, as a stored one may be beyond the ±24 h that a ``datetime.timezone`` takes."""
    return EPOCH + dt.timedelta(seconds=moment, minutes=utc_offset)


def time_label(local, step):
    if step < 0:
        return f"{local:%Y}" if -step % 12 == 0 else f"{local:%Y-%m}"
    if step >= DAY:
        return f"{local:%Y-%m-%d}"
    return f"{local:%Y-%m-%d %H:%M}"


def zone_name(utc_offset):
    sign = "+" if utc_offset >= 0 else "-"
    hours, minutes = divmod(abs(utc_offset), 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"


def render(
    points,
    *,
    start,
    end,
    utc_offset=0,
    max_gap=None,
    label="",
    title="",
    width=WIDTH,
    height=HEIGHT,
):
    """The SVG of ``points`` (see the module's docstring) between ``start`` and ``end``
    (seconds since the epoch), with dates in UTC plus ``utc_offset`` minutes, and
    ``label`` (the unit of measurement) on the value axis."""
    values = [clamp(v) for p in points if p is not None for v in (p.low, p.high)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9 * max(abs(low), abs(high), 1.0):  # flat: give it some height
        pad = max(1.0, abs(low) * 1e-3)
        low, high = low - pad, high + pad
    if end <= start:
        start, end = start - HOUR, end + HOUR
    ticks, step = value_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def x(seconds):
        return LEFT + plot_w * (seconds - start) / (end - start)

    def y(value):
        return TOP + plot_h * (high - clamp(value)) / (high - low)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeseries-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'style="max-width: 100%; height: auto">',
        f"<title>{text(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        f'stroke="{AXIS_COLOUR}" stroke-width="1"/>',
    ]
    # The value axis: grid lines, tick labels, the unit.
    out.append(f'<g class="value-axis" {FONT} text-anchor="end" fill="#333">')
    for tick in ticks:
        ty = y(tick)
        out.append(
            f'<line x1="{LEFT}" y1="{ty:.1f}" x2="{LEFT + plot_w}" y2="{ty:.1f}" '
            f'stroke="{GRID_COLOUR}"/>'
            f'<line x1="{LEFT - 4}" y1="{ty:.1f}" x2="{LEFT}" y2="{ty:.1f}" '
            f'stroke="{AXIS_COLOUR}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{ty + 4:.1f}">{format_value(tick, step)}</text>'
        )
    middle = TOP + plot_h / 2
    out.append(
        f'<text class="axis-label" x="14" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {middle:.1f})">{text(label)}</text>'
    )
    out.append("</g>")
    # The time axis: ticks and dates in the series' time zone.
    out.append(f'<g class="time-axis" {FONT} text-anchor="middle" fill="#333">')
    for moment, tick_label in time_ticks(start, end, utc_offset):
        tx = x(moment)
        out.append(
            f'<line x1="{tx:.1f}" y1="{TOP}" x2="{tx:.1f}" y2="{TOP + plot_h}" '
            f'stroke="{GRID_COLOUR}"/>'
            f'<line x1="{tx:.1f}" y1="{TOP + plot_h}" x2="{tx:.1f}" y2="{TOP + plot_h + 4}" '
            f'stroke="{AXIS_COLOUR}"/>'
            f'<text class="tick" x="{tx:.1f}" y="{TOP + plot_h + 16}">{tick_label}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{height - 6}">'
        f"time ({zone_name(utc_offset)})</text>"
    )
    out.append("</g>")
    # The values: a path a stretch without gaps; a lone point is a dot.
    out.append(f'<g class="series" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.2">')
    for run in runs(points, max_gap):
        coords = []
        for p in run:
            px = x((p.first + p.last) / 2)
            coords.append(f"{px:.1f},{y(p.low):.1f}")
            if p.high != p.low:
                coords.append(f"{px:.1f},{y(p.high):.1f}")
        if len(coords) == 1:
            cx, cy = coords[0].split(",")
            out.append(f'<circle class="lone" cx="{cx}" cy="{cy}" r="1.8" fill="{LINE_COLOUR}"/>')
        else:
            out.append(f'<path class="stretch" d="M{" L".join(coords)}"/>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
