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

from dbsync.models import SyncRun
from hcore.models import Station
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
    database = register(remote)
    done = subprocess.run(
        command(database, "--silent"), env=_local_env(), capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


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
