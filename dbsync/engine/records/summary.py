"""The remote's records summary: count, period and checksum per series (``api.records``),
downloaded, checked and kept as a ``Summary``.

A run that has a records cursor (``Database.records_cursor``) and is not ``full`` asks
only for the summaries of the series changed since then, less
``DBSYNC_OVERLAP_SECONDS`` (``summary_params``). The summary may be downloaded while the
objects install (``SummaryPrefetch``).
"""

import logging
import re
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from django.conf import settings

from protocol.formats import ZERO_CHECKSUM

from ..dumps import listing_entries
from ..errors import PayloadError
from ..keysets import KeySet
from ..remote import check_api_path

logger = logging.getLogger(__name__)

HEX = re.compile(r"[0-9a-f]{16}")


class Entry(NamedTuple):
    """A series' line of the remote's summary (its pk is the summary's key)."""

    count: int
    start: datetime | None
    end: datetime | None
    checksum: str
    utc_offset: int

    @property
    def empty(self):
        return (
            self.count == 0
            and self.checksum == ZERO_CHECKSUM
            and self.start is None
            and self.end is None
        )


NOT_LISTED = Entry(0, None, None, ZERO_CHECKSUM, 0)


def check_entry(entry):
    """(pk, Entry) of a summary's entry, checked, its dates parsed; raises ValueError."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    for name in ("pk", "count", "utc_offset"):
        value = entry[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} is not an integer")
    checksum = entry["checksum"]
    if entry["count"] < 0 or not isinstance(checksum, str) or not HEX.fullmatch(checksum):
        raise ValueError("bad count or checksum")
    dates = []
    for name in ("start", "end"):
        value = entry[name]
        if value is not None:
            value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise ValueError(f"{name} has no offset")
        dates.append(value)
    if entry["count"] and dates[1] is None:
        raise ValueError("records but no end")
    return entry["pk"], Entry(entry["count"], dates[0], dates[1], checksum, entry["utc_offset"])


class Summary(Mapping):
    """{remote pk: Entry} of a remote's summary. Series without records (most, on some
    remotes) are kept as a compact KeySet per UTC offset, not a dict entry each, so that
    millions of empty series cost little memory (docs/benchmarks.md)."""

    def __init__(self):
        self.entries = {}  # pk -> Entry, of the series with records
        self.empties = {}  # utc offset -> (its empty Entry, KeySet of pks)

    def add(self, pk, entry):
        if pk in self:
            raise ValueError(f"timeseries {pk} is listed twice")
        if not entry.empty:
            self.entries[pk] = entry
            return
        if entry.utc_offset not in self.empties:
            self.empties[entry.utc_offset] = (entry, KeySet())
        self.empties[entry.utc_offset][1].add(pk)

    def __getitem__(self, pk):
        entry = self.entries.get(pk)
        if entry is not None:
            return entry
        for entry, pks in self.empties.values():
            if pk in pks:
                return entry
        raise KeyError(pk)

    def __iter__(self):
        yield from self.entries
        for _entry, pks in self.empties.values():
            yield from pks

    def __len__(self):
        return len(self.entries) + sum(len(pks) for _e, pks in self.empties.values())


def read_summary(database, path):
    """The Summary of a downloaded summary, its entries checked."""
    summary = Summary()
    name = f"{database}: the records summary"
    for pk, entry in listing_entries(path, name, check_entry):
        try:
            summary.add(pk, entry)
        except ValueError as exc:
            raise PayloadError(f"{name}: {exc}") from exc
    return summary


def records_endpoints(client):
    """The manifest's records URLs, or None if the remote serves no records.

    The manifest is read here, just before the summary, every time: its
    ``database_time`` (the remote database's clock, parsed; None from a remote that
    does not send it) is then no later than the summary's read, as the records cursor
    taken from it must be (``records.sync``).
    """
    urls = client.manifest().get("records")
    if not isinstance(urls, dict):
        return None
    for key in ("summary_url", "batch_url"):
        check_api_path(urls.get(key), client)
    return {**urls, "database_time": database_time(urls, client)}


def database_time(urls, client):
    """The manifest's ``records.database_time``, parsed; None if it is not sent (a
    remote of an earlier release, or one on SQLite). Raises PayloadError if malformed."""
    value = urls.get("database_time")
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise PayloadError(
            f"{client}: the API manifest's records.database_time is not an ISO 8601 time "
            f"with an offset: {str(value)[:100]!r}"
        )
    return moment


def summary_params(database, urls, full=False):
    """The summary's query: ``changed_after`` (the records cursor less the overlap) if
    the run is not ``full``, there is a cursor, and the remote knows the parameter."""
    known = urls.get("summary_parameters")
    if full or database.records_cursor is None:
        return {}
    if not isinstance(known, list) or "changed_after" not in known:
        return {}
    since = database.records_cursor - timedelta(seconds=settings.DBSYNC_OVERLAP_SECONDS)
    return {"changed_after": since.isoformat()}


def download_summary(client, urls, params, path):
    client.download(urls["summary_url"], path, params or None)


def fetch_summary(database, client, urls, work, params=None):
    """The remote's summary: {remote pk: Entry}, the entries checked."""
    path = Path(work) / "summary.json"
    download_summary(client, urls, params, path)
    try:
        return read_summary(database, path)
    finally:
        path.unlink()


class SummaryPrefetch:
    """The remote's records summary, downloaded in a thread while the objects install.

    The summary costs the remote a read of a row a series; downloaded alongside the
    objects' install, it adds nothing to a run's time. It is read only when the
    records sync asks for it (``result``), after the install: the two do not hold
    their memory at once. A series created at the remote after it is then not
    listed: it is fetched whole (see ``plan_jobs``).
    """

    def __init__(self, database, client, full=False):
        self.folder = self.path = None
        self.database = database
        self.full = full
        self.params = {}
        pool = ThreadPoolExecutor(1, thread_name_prefix="records-summary")
        self.future = pool.submit(self.fetch, database, client.clone())
        pool.shutdown(wait=False)

    def fetch(self, database, client):
        started = time.monotonic()
        try:
            urls = records_endpoints(client)
            if urls is not None:
                self.params = summary_params(database, urls, self.full)
                work = Path(settings.DBSYNC_WORK_DIR)
                work.mkdir(parents=True, exist_ok=True)
                # Removed by result() or discard(); by its finalizer if neither is called.
                self.folder = tempfile.TemporaryDirectory(
                    prefix=f"summary-{database.pk}-", dir=work
                )
                self.path = Path(self.folder.name) / "summary.json"
                download_summary(client, urls, self.params, self.path)
            return urls
        finally:
            logger.info(
                "%s: records summary downloaded in %.1f s", database, time.monotonic() - started
            )

    @property
    def incremental(self):
        """Whether the summary lists only the series changed since the records cursor."""
        return bool(self.params)

    def result(self):
        """(urls, summary), or (None, None); raises what the download raised."""
        try:
            urls = self.future.result()
            if urls is None:
                return None, None
            return urls, read_summary(self.database, self.path)
        finally:
            self.cleanup()

    def discard(self):
        """Not wanted after all: its file goes once the download ends."""
        self.future.add_done_callback(lambda future: self.cleanup())

    def cleanup(self):
        if self.folder is not None:
            self.folder.cleanup()
