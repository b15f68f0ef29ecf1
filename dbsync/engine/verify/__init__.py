"""``--verify`` and ``--repair``: a replica compared with its remote, and mended.

``verify`` compares, model by model, the replica's rows with the remote's by checksums
over key ranges, bisected where they differ (``objects``), the records series by series
(``records``) and the files by their SHA-256 (``files``); it changes nothing. Every
figure of the replica is computed from its rows as they are (``local``, in SQL on
PostgreSQL), with the row encoding of ``protocol.rowhash``. ``repair`` fetches only the
objects that differ (the re-fetch of ``fetch.make_refetcher``) and installs them with
the deletions of those the remote no longer has through the ``Installer``, in one
transaction, the delete guard in force; then the records and files that differ; and
verifies again.

Nothing here knows of runs, locks or Celery: ``dbsync.runs.verification`` holds the
lock and records the run.
"""

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.db import transaction

from hcore.models import RecordsSyncState

from .. import journal
from ..capture import AllBut
from ..dumps import dump_name
from ..errors import RemoteError, SyncError
from ..fetch import check_manifest, key_chunks, make_refetcher
from ..files import sync_files
from ..keysets import KeySet
from ..legacy import is_legacy
from ..planner import label, root_of
from ..progress import quiet
from ..records import sync_records
from ..remote import check_api_path
from ..result import SyncResult
from ..sync import Fetched, install_fetched
from .files import FilesVerdict, verify_files
from .objects import ModelVerdict, pending_since, verify_model
from .records import RecordsVerdict, verify_records

__all__ = ["VerifyResult", "Unverifiable", "verify", "repair"]

EQUAL, DIFFERS = "equal", "differs"


class Unverifiable(SyncError):
    """The replica could not be compared with its remote (exit status 2)."""


@dataclass
class VerifyResult:
    """What a verification found: a verdict per model, the records' and the files'."""

    remote: str
    verdicts: list = field(default_factory=list)
    bytes: int = 0  # response bodies read from the remote
    requests: int = 0
    repaired: SyncResult | None = None

    @property
    def equal(self):
        return all(v.equal for v in self.verdicts)

    @property
    def state(self):
        return EQUAL if self.equal else DIFFERS

    def differing(self):
        return [v for v in self.verdicts if not v.equal]

    def summary(self):
        """One sentence: what a run keeps as its message and the admin shows."""
        if self.equal:
            return f"Verified equal: {self.remote} and its replica ({self.bytes} bytes read)."
        parts = "; ".join(v.describe() for v in self.differing())
        return f"Differs from {self.remote}: {parts}."

    def as_json(self):
        return {
            "state": self.state,
            "bytes": self.bytes,
            "verdicts": [v.as_json() for v in self.verdicts],
        }


def remote_entries(plan, client, manifest=None):
    """The manifest's entries of the planned models, each with its checksums URLs."""
    if is_legacy(client.database):
        raise Unverifiable(
            f"{client.database} serves the 2010 layout, which has no checksums: it cannot be "
            f"verified (a --full sync compares everything)."
        )
    entries = check_manifest(plan, manifest or client.manifest(), client)
    lacking = [lbl for lbl, entry in entries.items() if not entry.get("checksums_url")]
    if lacking:
        raise Unverifiable(
            f"{client} serves no checksums (an earlier release of the API): cannot verify "
            f"{', '.join(lacking)}; upgrade the remote."
        )
    for entry in entries.values():
        for key in ("checksums_url", "hashes_url"):
            check_api_path(entry.get(key), client)
    return entries


def verify(database, plan, client, *, records=True, log=quiet):
    """Compare ``database``'s replica with the remote (``client``); return a VerifyResult.
    Raises Unverifiable (or another SyncError) if it cannot compare."""
    if database.sync_cursor is None:
        raise Unverifiable(f"{database} was never synced: there is no replica to verify.")
    try:
        manifest = client.manifest()
        entries = remote_entries(plan, client, manifest)
        since = pending_since(database, manifest, client)
        result = VerifyResult(remote=str(database))
        for model in plan.models:
            verdict = verify_model(database, model, client, entries[label(model)], since)
            result.requests += verdict.requests
            result.verdicts.append(verdict)
            log(verdict.describe(), 1)
        if records:
            work = Path(settings.DBSYNC_WORK_DIR)
            work.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=f"verify-{database.pk}-", dir=work) as tmp:
                if "hcore.timeseries" in plan.labels:
                    result.verdicts.append(verify_records(database, client, tmp))
                    log(result.verdicts[-1].describe(), 1)
                if "hcore.gentityfile" in plan.labels:
                    result.verdicts.append(verify_files(database, client, tmp))
                    log(result.verdicts[-1].describe(), 1)
    except RemoteError as exc:
        raise Unverifiable(f"Could not verify {database}: {exc}") from exc
    result.bytes = client.received.bytes
    return result


def repair(database, plan, client, options, *, log=quiet):
    """Verify, fetch and install what differs, then verify again; return the
    VerifyResult of the second verification, its ``repaired`` the install's result.
    ``options``: the run's SyncOptions (``backup``, ``max_delete``, ``records``)."""
    found = verify(database, plan, client, records=options.records, log=log)
    repaired = SyncResult(remote=str(database))
    if found.equal:
        found.repaired = repaired
        return found
    work = Path(settings.DBSYNC_WORK_DIR)
    work.mkdir(parents=True, exist_ok=True)
    entries = remote_entries(plan, client)
    with tempfile.TemporaryDirectory(prefix=f"repair-{database.pk}-", dir=work) as tmp:
        refetch = make_refetcher(client, entries, plan, tmp)
        files, remote_keys = objects_to_install(
            database, plan, found, client, entries, tmp, refetch
        )
        if files or remote_keys:
            log(f"Repairing {sum(v.differing for v in found.differing())} object(s)", 1)
            install_fetched(
                database,
                plan,
                replace(options, records=False, dry_run=False, full=False),
                repaired,
                # No cursor, and no sync: the cursor and the last sync's time stay.
                Fetched(files, remote_keys, None, is_sync=False),
                refetch,
                log,
            )
        if options.records:
            repair_data(database, client, found, options, repaired, log)
    again = verify(database, plan, client, records=options.records, log=log)
    again.repaired = repaired
    return again


def objects_to_install(database, plan, found, client, entries, work, refetch):
    """({model label: [dump paths]}, {model label: the remote pks the remote has})
    of what differs: each model's objects changed or missing here, fetched by key (that
    model's dump only: their other rows are known); and, for the roots some of whose
    objects the remote no longer has, the listing the deletion goes by: ours, less
    those. A child row the remote lacks under a root it keeps: the whole row family
    fetched again (``refetch``), and the child model's listing is every key but those,
    so that the row goes (its object's type changed: ``install.deletions``)."""
    files, gone, families, fetched, children = {}, {}, {}, {}, {}
    for verdict in found.verdicts:
        if not isinstance(verdict, ModelVerdict) or verdict.equal:
            continue
        model = next(m for m in plan.models if label(m) == verdict.model)
        root_label = label(root_of(model))
        wanted = sorted({*verdict.changed, *verdict.missing})
        if wanted:
            files[verdict.model] = fetch_keys(client, entries[verdict.model], wanted, work)
            fetched.setdefault(root_label, set()).update(wanted)
        if root_of(model) is model:
            gone.setdefault(root_label, set()).update(verdict.extra)
        else:
            families.setdefault(root_label, set()).update(verdict.extra)
            if verdict.extra:
                children[verdict.model] = AllBut(KeySet.from_sorted(sorted(verdict.extra)))
    for root_label, pks in families.items():
        pks -= gone.get(root_label, set())  # gone with their root
        if pks:
            for member, paths in refetch(root_label, sorted(pks)).items():
                files.setdefault(member, []).extend(paths)
    remote_keys = {}
    for root_label, pks in gone.items():
        if not pks:
            continue
        root = next(m for m in plan.models if label(m) == root_label)
        ours = root._base_manager.filter(original_db=database).values_list(
            "original_id", flat=True
        )
        # Objects installed by this repair are the remote's too: not to be deleted.
        listed = (
            (set(ours) - pks) | fetched.get(root_label, set()) | families.get(root_label, set())
        )
        remote_keys[root_label] = KeySet.from_sorted(sorted(listed))
    return files, {**remote_keys, **children}


def fetch_keys(client, entry, pks, work):
    """The dumps of the objects ``pks`` of one model, into ``work``; their paths."""
    paths = []
    for number, chunk in enumerate(key_chunks(pks)):
        path = Path(work) / dump_name(entry["model"].lower(), f".repair{number}")
        client.download(entry["url"], path, {"pks": ",".join(map(str, chunk))})
        paths.append(str(path))
    return paths


def repair_data(database, client, found, options, result, log):
    """The records and files that differ, fetched again whole (after the objects)."""
    for verdict in found.differing():
        if isinstance(verdict, RecordsVerdict):
            # Without its state, a series is fetched whole and replaces ours. Journaled
            # with the run's other changes: its revert puts the state back too.
            with transaction.atomic(), journal.recording(options.journal_run):
                RecordsSyncState.objects.filter(
                    timeseries__original_db=database,
                    timeseries__original_id__in=verdict.differ,
                ).delete()
            sync_records(
                database,
                client,
                log=log,
                full=True,
                max_delete=options.max_records_delete or settings.DBSYNC_MAX_RECORDS_DELETE,
                journal_run=options.journal_run,
            ).add_to(result)
        elif isinstance(verdict, FilesVerdict):
            # Fetched again; each stored file is replaced (journaled) only once its
            # new copy has arrived: a failed fetch leaves it in place.
            sync_files(
                database,
                client,
                log=log,
                journal_run=options.journal_run,
                refetch=verdict.differ,
            ).add_to(result)
