"""The chart of a time series: hcore.chart on its own (points in, SVG out, read back
with xml.etree), fed from the database by hcore.records, and its admin page."""

import datetime as dt
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.urls import reverse
from hypothesis import given, settings
from hypothesis import strategies as st

from hcore import models as m
from hcore import records as hrecords
from hcore.chart import Point, render, runs, time_ticks
from tests import browser as b
from tests.test_records import make_local_series

SVG = "{http://www.w3.org/2000/svg}"
UTC = dt.UTC
START = dt.datetime(2020, 1, 1, tzinfo=UTC).timestamp()


def records(values, step=600, start=START):
    """A Point a value every ``step`` seconds; None stays None (a missing value)."""
    return [
        None if v is None else Point(start + k * step, start + k * step, v, v)
        for k, v in enumerate(values)
    ]


def parse(svg):
    return ET.fromstring(svg)


def texts(root, group):
    return [
        t.text
        for t in root.iter(f"{SVG}text")
        if t.get("class") == "tick" and t in list(root.find(f"{SVG}g[@class='{group}']"))
    ]


def stretches(root):
    return root.findall(f".//{SVG}g[@class='series']/{SVG}path")


def test_a_chart_has_a_time_axis_a_value_axis_with_the_unit_and_one_line():
    points = records([1.0 + k * 0.5 for k in range(145)])  # a day of 10-minute values
    root = parse(
        render(points, start=points[0].first, end=points[-1].last, max_gap=600, label="°C")
    )
    dates = texts(root, "time-axis")
    assert dates[:2] == ["2020-01-01 00:00", "2020-01-01 06:00"]
    values = [float(v) for v in texts(root, "value-axis")]
    assert values == sorted(values) and values[0] <= 1.0 and values[-1] >= 73.0
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-label"]
    assert labels == ["°C", "time (UTC+00:00)"]
    (line,) = stretches(root)
    assert line.get("d").count("L") == 144


def test_missing_values_and_spacing_beyond_the_time_step_break_the_line():
    values = [1.0] * 10 + [None] * 3 + [2.0] * 10
    points = records(values)
    # and a record two hours after the last: beyond the 10-minute step
    points.append(Point(points[-1].last + 7200, points[-1].last + 7200, 3.0, 3.0))
    points.append(Point(points[-1].last + 600, points[-1].last + 600, 3.5, 3.5))
    root = parse(render(points, start=points[0].first, end=points[-1].last, max_gap=600))
    assert len(stretches(root)) == 3


def test_a_lone_value_between_gaps_is_a_dot():
    points = records([1.0, 2.0, None, 5.0, None, 3.0, 4.0])
    root = parse(render(points, start=points[0].first, end=points[-1].last, max_gap=600))
    assert len(stretches(root)) == 2
    assert len(root.findall(f".//{SVG}circle")) == 1


def test_runs_cut_only_where_values_are_missing_when_there_is_no_max_gap():
    points = records([1.0, 2.0], step=10**6) + [None] + records([3.0], start=START + 10**8)
    assert [len(run) for run in runs(points, None)] == [2, 1]
    assert [len(run) for run in runs(points, 10)] == [1, 1, 1]


def test_downsampled_columns_draw_their_range():
    columns = [Point(START + k * 3600, START + k * 3600 + 3000, -k, k) for k in range(50)]
    root = parse(render(columns, start=START, end=columns[-1].last, max_gap=3600))
    (line,) = stretches(root)
    # a column: its low and its high, one above the other
    assert line.get("d").count("L") == 2 * 50 - 1 - 1  # the first column has no spread


def test_text_is_escaped_and_what_xml_cannot_hold_is_replaced():
    label = "<b>\"m³/s\" & 'co'</b>\x01\x1f\r\n\u202eאבג"
    root = parse(
        render(records([1.0, 2.0]), start=START, end=START + 600, label=label, title=label)
    )
    (axis_label,) = [
        t
        for t in root.iter(f"{SVG}text")
        if t.get("class") == "axis-label" and t.text != "time (UTC+00:00)"
    ]
    assert axis_label.text == "<b>\"m³/s\" & 'co'</b>\ufffd\ufffd\n\n\u202eאבג".replace(
        "\n\n", "\n"
    )
    assert root.find(f"{SVG}title").text.startswith("<b>")


def test_dates_are_in_the_series_time_zone_and_round():
    start = dt.datetime(2020, 1, 1, 0, 0, tzinfo=UTC).timestamp()
    ticks = time_ticks(start, start + 86400, utc_offset=120)
    assert [label for _, label in ticks][:2] == ["2020-01-01 06:00", "2020-01-01 12:00"]
    assert ticks[0][0] == start + 4 * 3600  # 06:00 at UTC+2 is 04:00 UTC
    years = time_ticks(start, start + 30 * 365 * 86400, utc_offset=0)
    assert [label for _, label in years][:2] == ["2020", "2025"]
    months = time_ticks(start, start + 200 * 86400, utc_offset=0)
    assert [label for _, label in months][:2] == ["2020-01", "2020-02"]


def test_an_empty_a_flat_and_a_one_record_series_draw():
    for points, end in (([], START), (records([5.0] * 3), START + 1200), (records([5.0]), START)):
        root = parse(render(points, start=START, end=end, max_gap=600))
        assert texts(root, "value-axis") and texts(root, "time-axis")


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), finite), max_size=60),
    step=st.integers(1, 10**8),
    offset=st.integers(-32768, 32767),  # what a SmallIntegerField holds
    label=st.text(),
)
def test_any_values_and_any_label_draw_a_chart_that_parses(values, step, offset, label):
    points = records(values, step=step)
    end = START + step * max(len(values) - 1, 0)
    root = parse(
        render(points, start=START, end=end, utc_offset=offset, max_gap=step, label=label)
    )
    drawn = sum(1 for v in values if v is not None)
    marks = stretches(root) + root.findall(f".//{SVG}circle")
    assert (len(marks) > 0) == (drawn > 0)
    for mark in marks:
        numbers = (mark.get("d") or f"{mark.get('cx')},{mark.get('cy')}").replace("M", "")
        for pair in numbers.split(" L"):
            assert all(math.isfinite(float(n)) for n in pair.split(","))


# --- fed from the database (hcore.records) ------------------------------------------------


def insert_records(series, count, step_minutes=10, start="2020-01-01"):
    """``count`` records a step apart, in SQL (a large series in a second)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO hcore_record (timeseries_id, timestamp, value, flags) "
            "SELECT %s, %s::timestamptz + k * %s * interval '1 minute', sin(k / 500.0), '' "
            "FROM generate_series(0, %s - 1) AS k",
            [series.pk, start, step_minutes, count],
        )


def with_time_step(series, minutes):
    step = m.TimeStep.objects.create(descr=f"{minutes} min", length_minutes=minutes)
    m.Timeseries.objects.filter(pk=series.pk).update(
        time_step=step, actual_offset_minutes=0, actual_offset_months=0
    )
    series.refresh_from_db()
    return series


@pytest.mark.django_db
def test_a_large_series_is_drawn_per_pixel_column_with_its_gaps():
    series = with_time_step(make_local_series(), 10)
    insert_records(series, 20_000)  # 139 days of 10-minute values
    gap_start = dt.datetime(2020, 2, 1, tzinfo=UTC)
    m.Record.objects.filter(
        timeseries=series, timestamp__gte=gap_start, timestamp__lt=gap_start + dt.timedelta(days=5)
    ).delete()
    # Missing, and not finite (PostgreSQL keeps NaN and infinities): none of them drawn.
    later = dt.datetime(2020, 3, 1, tzinfo=UTC)
    for k, value in enumerate((None, float("nan"), float("inf"), float("-inf"))):
        m.Record.objects.filter(
            timeseries=series, timestamp=later + dt.timedelta(minutes=10 * k)
        ).update(value=value)
    result = hrecords.overview(series, columns=200)
    assert 150 < len(result.points) <= 200
    assert [len(run) for run in runs(result.points, result.max_gap)][0] > 20
    assert len(runs(result.points, result.max_gap)) == 2  # the five days; 40 minutes is sub-pixel
    assert -1.0 <= result.low < -0.99 and 0.99 < result.high <= 1.0
    root = parse(hrecords.render(series, result))
    assert len(stretches(root)) == 2


@pytest.mark.django_db
def test_a_small_series_is_drawn_record_by_record_and_breaks_at_a_missing_value():
    series = with_time_step(make_local_series(), 10)
    insert_records(series, 300)
    moment = dt.datetime(2020, 1, 2, tzinfo=UTC)
    m.Record.objects.filter(timeseries=series, timestamp=moment).update(value=float("nan"))
    result = hrecords.overview(series)
    assert len(result.points) == 300 and result.points.count(None) == 1
    root = parse(hrecords.render(series, result))
    assert len(stretches(root)) == 2
    unit = series.unit_of_measurement
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "axis-label"]
    assert labels[0] == f"{series.variable.descr} ({unit.symbol})"


@pytest.mark.django_db
def test_without_a_time_step_a_gap_is_a_clear_multiple_of_the_usual_spacing():
    series = make_local_series()
    m.Timeseries.objects.filter(pk=series.pk).update(
        time_step=None, actual_offset_minutes=None, actual_offset_months=None
    )
    series.refresh_from_db()
    insert_records(series, 100, step_minutes=60)
    insert_records(series, 100, step_minutes=60, start="2020-01-05 06:00")  # 2 h later: no gap
    insert_records(series, 100, step_minutes=60, start="2020-01-10")  # 16 h later: a gap
    result = hrecords.overview(series)
    assert result.max_gap == 3 * 3600
    assert [len(run) for run in runs(result.points, result.max_gap)] == [200, 100]


@pytest.mark.django_db
def test_the_chart_page_shows_the_chart_of_the_series(admin_client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    series = with_time_step(make_local_series(), 10)
    insert_records(series, 500)
    page = admin_client.get(reverse("admin:hcore_timeseries_change", args=(series.pk,)))
    chart_url = reverse("admin:hcore_timeseries_chart", args=(series.pk,))
    assert chart_url in page.content.decode()
    page = admin_client.get(chart_url).content.decode()
    start = page.index('<svg xmlns="http://www.w3.org/2000/svg" class="timeseries-chart"')
    svg = page[start : page.index("</svg>", start) + 6]
    root = parse(svg)
    assert root.get("width") == "1100" and len(stretches(root)) == 1
    assert (
        admin_client.get(reverse("admin:hcore_timeseries_chart", args=(10**9,))).status_code == 404
    )


# --- in a real browser --------------------------------------------------------------------

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "series-chart.png"


@pytest.fixture
def chromium():
    browser = b.browser_or_skip()
    yield browser
    browser.quit()


def temperature_series():
    """Two weeks of 10-minute air temperatures with a day and a half missing."""
    series = with_time_step(make_local_series(), 10)
    m.Variable.objects.filter(pk=series.variable_id).update(descr="Air temperature")
    m.UnitOfMeasurement.objects.filter(pk=series.unit_of_measurement_id).update(symbol="°C")
    m.Timeseries.objects.filter(pk=series.pk).update(name="Athens, air temperature")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO hcore_record (timeseries_id, timestamp, value, flags) "
            "SELECT %s, t, 14 + 6 * sin(2 * pi() * (extract(epoch FROM t) / 86400 - 0.375)) "
            "+ 3 * sin(extract(epoch FROM t) / 400000.0), '' "
            "FROM generate_series('2024-03-01'::timestamptz, '2024-03-14 23:50', "
            "interval '10 minutes') AS t "
            "WHERE NOT t BETWEEN '2024-03-06 08:00' AND '2024-03-07 20:00'",
            [series.pk],
        )
    series.refresh_from_db()
    return series


@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_chart_shows_axes_the_unit_and_the_gap(
    live_server, chromium, settings, tmp_path
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User.objects.create_superuser("charts", password="a-long-test-password")
    series = temperature_series()
    b.login(chromium, live_server.url, "charts", "a-long-test-password")
    chromium.get(live_server.url + reverse("admin:hcore_timeseries_chart", args=(series.pk,)))
    (svg,) = b.by_css(chromium, "svg.timeseries-chart")
    dates = [e.text for e in b.by_css(chromium, "svg .time-axis text.tick")]
    assert len(dates) >= 5 and dates[0].startswith("2024-03-0"), dates
    values = [float(e.text) for e in b.by_css(chromium, "svg .value-axis text.tick")]
    assert values[0] <= 5 and values[-1] >= 20, values
    labels = [e.text for e in b.by_css(chromium, "svg text.axis-label")]
    assert labels == ["Air temperature (°C)", "time (UTC+02:00)"]
    stretches_ = b.by_css(chromium, "svg .series path.stretch")
    assert len(stretches_) == 2  # the day and a half without values
    # drawn side by side, the gap between them
    first, second = sorted(stretches_, key=lambda e: e.rect["x"])
    assert first.rect["width"] > 100 and second.rect["width"] > 100
    assert second.rect["x"] - (first.rect["x"] + first.rect["width"]) > 40
    # docs/img's picture is replaced only when asked (UPDATE_SCREENSHOTS=1)
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "chart.png"
    b.by_css(chromium, "#content")[0].screenshot(str(shot))
    assert shot.stat().st_size > 0
