"""Syncing time-series records: after the metadata, only what is new.

For every time series replicated from a remote, the remote's summary of its records
(count, period and checksum per series) is compared with what the last sync installed
here (``hcore.RecordsSyncState``), and only what changed is fetched. One job each:

- ``summary``: the remote's summary, downloaded (perhaps while the objects install),
  checked, and kept compactly (most series of a large remote may have no records);
- ``plan``: the summary against the local states: nothing, append, replace or clear
  per series, and the series empty at both ends;
- ``batches``: a batch of series fetched in one request, checked line by line, and
  written out in COPY's text format;
- ``loader``: the batches into the records table, then the new sync states;
- ``guard``: no series loses more than a share of its records (``RecordsGuard``);
- ``sync``: the run of them all (``sync_records``): every batch fetched to disk
  first, then all loaded in one transaction, after the objects' install has
  committed (a record cannot outlive its series: the foreign key sees to it; a
  series the remote deleted loses its records with it).

A malformed CSV (a bad date, a value that is not a number, a body cut short) stops the
run with an error naming the remote, the series (its remote pk) and the line, and
nothing of this run's records is installed. With ``skip``, that series keeps the
records it had and is reported; the others are installed.

A legacy remote (the 2010 layout) has no summary: ``legacy`` reads each series whole
from ``/api/tsdata/<id>/`` and hands it to the same reader and loader.
"""

from .batches import SeriesError
from .legacy import sync_legacy_records
from .loader import RecordsError
from .plan import RecordsPlan, plan_jobs
from .summary import Entry, Summary, SummaryPrefetch, read_summary
from .sync import RecordsSync, sync_records

__all__ = [
    "Entry",
    "RecordsError",
    "RecordsPlan",
    "RecordsSync",
    "SeriesError",
    "Summary",
    "SummaryPrefetch",
    "plan_jobs",
    "read_summary",
    "sync_legacy_records",
    "sync_records",
]
