"""The progress of a sync: bars on a terminal, plain lines elsewhere, and a running
run's phase and counts on its record, seen by other sessions while it works.

The command runs as a real process (``manage.py``) against a real remote over HTTP,
its stdout a pipe or a pseudo-terminal (``pty``).
"""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from django.db import transaction
from django.utils import timezone

from dbsync.engine.progress import RECORDS, quiet
from dbsync.models import Database, SyncRun
from dbsync.runs.progress import recording
from hcore.models import Station
from tests.faultproxy import FaultProxy
from tests.instance import ROOT, Instance
from tests.test_sync import _local_env, register

pytestmark = pytest.mark.django_db(transaction=True)

BAR = re.compile(r"\|[^|\n]*\| *(\d+)/(\d+) ")


@pytest.fixture(scope="module")
def remote(instance_template):
    instance = Instance(instance_template, hostname="progress.example.org")
    instance.generate(stations=8, seed=11, records_per_series=100, files_per_station=0.5)
    instance.start()
    yield instance
    instance.drop()


def command(database, *args):
    return [
        sys.executable,
        str(ROOT / "manage.py"),
        "hcore_remotesyncdb",
        "-r",
        database.name,
        "-N",
        *args,
    ]


def test_without_a_terminal_the_output_has_plain_lines_and_no_bar(remote):
    database = register(remote)
    done = subprocess.run(
        command(database, "-v", "2"),
        env=_local_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stdout.splitlines()
    fetched = [line for line in lines if line.startswith("fetching: ")]
    assert len(fetched) == 1 and re.match(r"fetching: (\d+) of \1 dumps, [\d.]+ kB$", fetched[0])
    records = [line for line in lines if line.startswith("installing records: ")]
    series = remote.sql("SELECT count(*) FROM hcore_timeseries")[0][0]
    total = remote.sql("SELECT count(*) FROM hcore_record")[0][0]
    assert records == [f"installing records: {series} of {series} series, {total:,} records"]
    assert Station.objects.filter(original_db=database).count() == 8


def test_silent_writes_nothing_on_stdout(remote):
    """As the seed's --silent (its stdout sent to /dev/null, for cron): neither lines nor,
    on a terminal, bars (docs/commands.md says why)."""
    database = register(remote)
    done = subprocess.run(
        command(database, "--silent"), env=_local_env(), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    master, slave = pty.openpty()
    process = subprocess.Popen(
        command(database, "--silent", "--full"),
        env=_local_env(),
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    try:
        output = read_all(master, process)
    finally:
        os.close(master)
    assert (process.returncode, output, process.stderr.read()) == (0, "", b"")


def read_all(fd, process, timeout=300):
    """What a process writes to its pseudo-terminal until it exits."""
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    return b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_the_fetch_and_the_records_have_bars(remote):
    database = register(remote)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        command(database), env=_local_env(), stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    try:
        output = read_all(master, process)
    finally:
        os.close(master)
    assert process.returncode == 0, process.stderr.read()
    assert "\r" in output
    finals = {}
    for line in re.split(r"[\r\n]+", output):
        match = BAR.search(line)
        if match:
            finals[line.split(":")[0].strip()] = (int(match[1]), int(match[2]))
    series = remote.sql("SELECT count(*) FROM hcore_timeseries")[0][0]
    assert finals.get("installing records") == (series, series), output
    done, total = finals["fetching"]
    assert done == total > 0
    assert "installing objects" in finals
    # the messages are still there, above the bars
    assert "Installing fixtures from file hcore.station.json" in output
    assert Station.objects.filter(original_db=database).count() == 8
    assert SyncRun.objects.get(database=database).status == SyncRun.SUCCEEDED


# --- a running run's page, in a browser ----------------------------------------------------

PASSWORD = "a-long-test-password"
SCREENSHOT = ROOT / "docs" / "img" / "running-run.png"


@pytest.fixture(scope="module")
def many_series(instance_template):
    """Over BATCH_SERIES (100) time series: the records come in two batches."""
    instance = Instance(instance_template, hostname="manyseries.example.org")
    instance.generate(stations=60, seed=4, records_per_series=5, files_per_station=0)
    instance.start()
    yield instance
    instance.drop()


def slowed(remote, dump_delay, batch_delay):
    """A front that answers each dump ``dump_delay`` s late and each records batch
    ``batch_delay`` s late: what a slow remote does to a run."""
    front = FaultProxy(remote.url)

    def late(seconds):
        def action(path, status, headers, body):
            time.sleep(seconds)
            return status, headers, body

        return action

    front.on(lambda path: path.startswith("/api/hcore/timeseries/records/"), late(batch_delay))
    front.on(lambda path: re.match(r"/api/hcore/[a-z]+/(\?|$)", path), late(dump_delay))
    return front


def test_in_a_browser_a_running_runs_counts_grow_on_its_page(
    live_server, many_series, tmp_path, settings
):
    """The command runs as its own process against a slowed front of a real remote;
    a staff user watches the run's page in headless Chromium while it works: the fetch's
    count grows, then the install's line shows, then the records' fetch."""
    import psycopg
    from django.contrib.auth.models import Permission, User

    from tests import browser as b

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    series = many_series.sql("SELECT count(*) FROM hcore_timeseries")[0][0]
    assert series > 100
    front = slowed(many_series, dump_delay=0.4, batch_delay=6)
    database = register(many_series, port=front.port)
    user = User.objects.create_user("watcher", password=PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_syncrun"))
    chromium = b.browser_or_skip()
    env = dict(
        _local_env(),
        DBSYNC_FETCH_THREADS="1",
        DBSYNC_RECORDS_WORKERS="1",
        DBSYNC_PROGRESS_SECONDS="0.2",
    )
    # The objects install in a fraction of a second, less than a reload of the page:
    # another session's transaction holds a write lock on the stations' table (reads
    # pass), so the install waits there, its line written, until the page has shown it.
    db = settings.DATABASES["default"]
    holder = psycopg.connect(f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    holder.execute("LOCK TABLE hcore_station IN EXCLUSIVE MODE")
    process = subprocess.Popen(
        command(database), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        b.login(chromium, live_server.url, "watcher", PASSWORD)
        run = b.wait_for(lambda: SyncRun.objects.filter(database=database).first(), 60)
        page = f"{live_server.url}/admin/dbsync/syncrun/{run.pk}/change/"
        seen = []

        def shown(line):
            def on_the_page():
                chromium.get(page)
                status = b.by_css(chromium, ".field-status .readonly")[0].text
                progress = b.by_css(chromium, ".field-progress .readonly")[0].text
                if status == SyncRun.RUNNING and progress not in seen:
                    seen.append(progress)
                return status == SyncRun.RUNNING and progress.startswith(line)

            return on_the_page

        b.wait_for(shown("installing objects: "), timeout=240, every=0.5, what="the install")
        holder.rollback()  # the install goes on
        b.wait_for(
            shown("fetching records: 100 of "),
            timeout=240,
            every=0.5,
            what="the records' first batch on the page",
        )
        assert b.by_css(chromium, ".field-run_duration .readonly")[0].text.endswith(" so far")
        chromium.save_screenshot(
            str(SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "run.png")
        )
        assert process.wait(timeout=240) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        holder.close()
        chromium.quit()
        front.close()
    fetching = [int(m[1]) for p in seen if (m := re.match(r"fetching: (\d+) of (\d+) dumps", p))]
    assert len(fetching) >= 3 and fetching == sorted(fetching), seen
    phases = [p.split(":")[0] for p in seen]
    assert phases.index("installing objects") > phases.index("fetching"), seen
    assert phases.index("fetching records") > phases.index("installing objects"), seen
    records = [p for p in seen if p.startswith("fetching records: ")]
    assert records[-1].startswith(f"fetching records: 100 of {series} series, 500 records")
    run.refresh_from_db()
    assert (run.status, run.progress) == (SyncRun.SUCCEEDED, "")
    assert Station.objects.filter(original_db=database).count() == 60


def test_a_runs_line_and_heartbeat_are_written_by_their_own_connection(settings):
    """In the caller's open transaction, as during the install: another session sees
    the line as it changes, and the heartbeat while nothing is counted."""
    settings.DBSYNC_HEARTBEAT_SECONDS = 0.2
    database = Database.objects.create(name="beats", hostname="beats.example.org")
    run = SyncRun.objects.create(
        database=database, status=SyncRun.RUNNING, progress="installing", heartbeat=None
    )

    def from_another_session():
        import psycopg

        db = settings.DATABASES["default"]
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(
                "SELECT progress, heartbeat FROM dbsync_syncrun WHERE id = %s", [run.pk]
            ).fetchone()

    with transaction.atomic(), recording(run.pk, quiet, every=0.05) as progress:
        # as the install does: the remote's row is locked until the COMMIT
        Database.objects.filter(pk=database.pk).update(last_sync=timezone.now())
        first = b_wait(lambda: from_another_session()[1])
        assert from_another_session()[0] == "installing"
        b_wait(lambda: from_another_session()[1] > first)
        progress.begin(RECORDS, 3)
        progress.advance(RECORDS, records=5)
        b_wait(lambda: from_another_session()[0] == "installing records: 1 of 3 series, 5 records")
    ended = from_another_session()[1]
    time.sleep(0.5)
    assert from_another_session()[1] == ended  # the writer stopped with the block


def b_wait(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("waited 30 s")
