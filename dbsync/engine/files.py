"""Syncing the files of ``GentityFile`` objects (photos, documents) after the metadata.

The remote lists its files with their size and SHA-256 (``api.files``). The local
copy of a remote's file is stored as

    gentityfile/<remote id>/<remote pk>/<first 12 hex digits of its SHA-256>/<basename>

so that remotes and objects cannot collide, nothing a remote sends can name a path
outside that folder (the basename is made safe: no folders, no ``..``), and a
changed file is told from the name alone, without reading ours. A file is fetched
only when the name it would get here differs from the object's ``content`` (or is
missing from the storage); it is checked against the listed size and checksum
before it is stored. A file over DBSYNC_MAX_FILE_BYTES is refused and reported; the
object keeps what it had. Whatever is in a remote's folder that no object points at
any more (objects deleted at the remote, earlier versions) is removed.

A detached remote's objects (``dbsync.engine.offboard``) are local: their files move
to ``gentityfile/local/<local pk>/<checksum>/<basename>`` (``detached_name``).

An incremental run (the remote captures changes, and the last files sync finished with
nothing skipped: ``Database.files_cursor``) asks for the listing of the objects written
since that cursor only (``changed_since``), and reads only those objects here: an
unchanged re-sync hashes no file at the remote and reads no object here. Objects
deleted at the remote are deleted here by the objects' sync; their folders are pruned
when the folders of this remote outnumber its objects with a file (one count each).
The cursor is the objects' change cursor of the run (``Database.capture_cursor``): every
object written before it was installed, and its file synced, by this run. ``--full``,
a repair, and a remote without capture, list every object.

Files are not in the database's transaction: each is stored first and its object
updated after, so a run that stops half-way leaves objects that point at whole
files, and the next run finishes the work. A journaled run (``journal_run``) notes
every file it stores and moves aside, rather than deletes, every file it replaces or
removes (``journal.FileJournal``); each object's update is journaled too.
"""

import hashlib
import logging
import posixpath
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.db import transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from hcore.models import GentityFile

from .dumps import listing_entries
from .errors import DeadlineExceeded, PayloadError, RemoteError
from .journal import FileJournal, recording
from .progress import FILES, quiet, steps
from .remote import check_api_path
from .result import FILES_LABEL, SyncResult

logger = logging.getLogger(__name__)

MODEL_LABEL = "hcore.gentityfile"
ROOT = "gentityfile"
LOCAL_FOLDER = "local"  # the files of a detached remote's objects (not a remote's pk)
DEFAULT_MAX_FILE_BYTES = 100 * 2**20
HEX64 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 16
# FileField's default max_length: the whole name must fit.
MAX_NAME = GentityFile._meta.get_field("content").max_length
# An incremental listing of at most this many objects: only those are read here.
LISTED_FILTER_MAX = 10_000


def describe(result):
    """The files sync's closing line, of its ``result``."""
    counts = result.counts[FILES_LABEL]
    verb = "Would fetch" if result.dry_run else "Fetched"
    return (
        f"{verb} {counts['fetched']} files ({result.bytes} bytes): {counts['created']} new, "
        f"{counts['updated']} changed, {counts['unchanged']} unchanged, "
        f"{counts['deleted']} removed, {counts['skipped']} skipped."
    )


def safe_basename(name, room):
    """The last part of a remote's file name, safe as one path component, at most
    ``room`` characters (the extension kept)."""
    base = posixpath.basename(name.replace("\\", "/")).strip().lstrip(".")
    try:
        base = get_valid_filename(base).lstrip(".")
    except SuspiciousFileOperation:  # nothing usable is left of it
        base = ""
    base = base or "file"
    if len(base) > room:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) < room - 1:
            base = stem[: room - len(ext) - 1] + "." + ext
        else:
            base = base[:room]
    return base


def folder(database, remote_pk=None):
    path = f"{ROOT}/{int(database.pk)}"
    return path if remote_pk is None else f"{path}/{int(remote_pk)}"


def detached_name(database, local_pk, name):
    """Where the file ``name`` (in ``database``'s folder) of the object ``local_pk`` goes
    when the remote is detached: ``gentityfile/local/<local pk>/`` and the rest of its
    path (checksum folder, basename), out of the folder a sync of the remote prunes."""
    prefix = folder(database) + "/"
    if not name.startswith(prefix):
        raise ValueError(f"{name!r} is not in the folder of {database}")
    rest = name[len(prefix) :].split("/", 1)[-1]  # past the remote pk
    return f"{ROOT}/{LOCAL_FOLDER}/{int(local_pk)}/{rest}"


def local_name(database, remote_pk, entry):
    """Where the file of a remote's object is stored here (see the module's docstring)."""
    prefix = f"{folder(database, remote_pk)}/{entry['sha256'][:12]}/"
    return prefix + safe_basename(entry["name"], max(8, MAX_NAME - len(prefix)))


def check_entry(entry):
    if not isinstance(entry, dict) or not isinstance(entry.get("pk"), int):
        raise ValueError("not an object with a pk")
    if not isinstance(entry.get("name"), str):
        raise ValueError("no name")
    if entry["name"] and not entry.get("missing"):
        if not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise ValueError("no size")
        if not isinstance(entry.get("sha256"), str) or not HEX64.fullmatch(entry["sha256"]):
            raise ValueError("no SHA-256")
    return entry


class FilesSync:
    def __init__(
        self,
        database,
        client,
        *,
        dry_run=False,
        log=quiet,
        journal_run=None,
        refetch=(),
        full=False,
    ):
        self.database = database
        self.full = full
        # The objects' change cursor, read after their install committed: the next
        # files cursor (see the module's docstring).
        self.cursor = database.capture_cursor
        self.incremental = False
        self.journal_run = journal_run
        self.refetch = set(refetch)
        self.client = client
        self.dry_run = dry_run
        self.log = log
        self.result = SyncResult.of_part(FILES_LABEL, str(database), dry_run)
        self.storage = GentityFile._meta.get_field("content").storage
        self.journal = FileJournal(journal_run, self.storage)
        self.max_bytes = int(getattr(settings, "DBSYNC_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES))
        self.workers = max(1, int(getattr(settings, "DBSYNC_RECORDS_WORKERS", 4)))
        self.now = timezone.now()
        self.local = threading.local()

    def count(self, key):
        self.result.add(FILES_LABEL, key)

    def skip(self, remote_pk, message):
        """An object whose file is not fetched: it keeps its own; counted and reported."""
        self.count("skipped")
        self.result.problem(MODEL_LABEL, remote_pk, message)
        logger.warning("%s: gentityfile %s: %s", self.result.remote, remote_pk, message)

    def run(self):
        urls = self.endpoints()
        if urls is None:
            return self.result
        work = Path(settings.DBSYNC_WORK_DIR)
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"files-{self.database.pk}-", dir=work) as tmp:
            self.work = Path(tmp)
            listing = self.fetch_listing(urls["listing_url"], self.listing_params(urls))
            self.url_template = urls["url"]
            self.listed = set(listing)
            todo = self.plan(listing)
            progress = steps(self.log)
            progress.begin(FILES, len(todo))
            try:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="files") as pool:
                    for job, outcome in zip(todo, pool.map(self.fetch, todo), strict=True):
                        self.install(job, outcome)
                        progress.advance(FILES, bytes=job[2]["size"] if outcome[1] is None else 0)
            finally:
                progress.end(FILES)
        if not self.dry_run:
            self.remove_orphans()
            self.move_cursor()
        self.log(describe(self.result), 1)
        return self.result

    def listing_params(self, urls):
        """``changed_since`` if the run may be incremental (see the module's docstring)."""
        since = self.database.files_cursor
        known = urls.get("listing_parameters")
        if self.full or self.refetch or since is None or self.cursor is None:
            return {}
        if not isinstance(known, list) or "changed_since" not in known:
            return {}
        self.incremental = True
        return {"changed_since": str(int(since))}

    def move_cursor(self):
        """The objects' change cursor as the files cursor, after a sync with nothing
        skipped (a skipped file must be listed again)."""
        if self.cursor is None or self.result.counts[FILES_LABEL]["skipped"]:
            return
        if self.cursor == self.database.files_cursor:
            return
        with transaction.atomic(), recording(self.journal_run):  # a revert puts it back
            type(self.database).objects.filter(pk=self.database.pk).update(
                files_cursor=self.cursor
            )
        self.database.files_cursor = self.cursor

    def endpoints(self):
        urls = self.client.manifest().get("files")
        if not isinstance(urls, dict):
            self.log(f"{self.database} serves no files (an older version?); none synced", 1)
            return None
        for key in ("listing_url", "url"):
            check_api_path(urls.get(key), self.client)
        return urls

    def fetch_listing(self, url, params=None):
        path = self.work / "listing.json"
        self.client.download(url, path, params or None)
        what = f"{self.database}: the file listing"
        listing = {entry["pk"]: entry for entry in listing_entries(path, what, check_entry)}
        return listing

    def plan(self, listing):
        """(local pk, remote pk, entry, wanted name, current name) of files to fetch;
        objects that need no download are dealt with here."""
        todo = []
        objects = GentityFile._base_manager.filter(original_db=self.database).values_list(
            "pk", "original_id", "content"
        )
        if self.incremental and len(listing) <= LISTED_FILTER_MAX:
            objects = objects.filter(original_id__in=list(listing))  # those written only
        for local_pk, remote_pk, current in objects.order_by("pk"):
            entry = listing.get(remote_pk)
            if entry is None:  # deleted at the remote since the metadata fetch
                continue
            if entry.get("missing"):
                self.skip(
                    remote_pk, "the remote lists a file it cannot read; the object kept its own"
                )
                continue
            if not entry["name"]:
                if current:
                    self.count("updated")
                    self.set_content(local_pk, "", current)
                else:
                    self.count("unchanged")
                continue
            wanted = local_name(self.database, remote_pk, entry)
            if current == wanted and self.storage.exists(wanted) and remote_pk not in self.refetch:
                self.count("unchanged")
                continue
            if entry["size"] > self.max_bytes:
                self.skip(
                    remote_pk,
                    f"its file {entry['name'][:100]!r} is {entry['size']} bytes, over the "
                    f"limit of {self.max_bytes} (DBSYNC_MAX_FILE_BYTES); not fetched, the "
                    f"object kept its own",
                )
                continue
            todo.append((local_pk, remote_pk, entry, wanted, current))
        return todo

    def fetch(self, job):
        """In a worker thread: download and check one file; (path, None) or (None, error)."""
        _local_pk, remote_pk, entry, _wanted, _current = job
        if self.dry_run:
            return None, None
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = self.client.clone(max_bytes=self.max_bytes)
        path = self.work / f"{remote_pk}.bin"
        url = self.url_template.replace("{pk}", str(int(remote_pk)))
        try:
            client.download(url, path, is_complete=lambda p: True)
        except DeadlineExceeded:
            raise  # the run's time is up: it fails, not this file alone
        except (RemoteError, PayloadError) as exc:
            return None, str(exc)
        size, digest = checksum(path)
        if size != entry["size"] or digest != entry["sha256"]:
            path.unlink(missing_ok=True)
            return None, (
                f"the file came with {size} bytes and SHA-256 {digest[:12]}..., the listing "
                f"says {entry['size']} and {entry['sha256'][:12]}... (changed during the sync?)"
            )
        return path, None

    def install(self, job, outcome):
        local_pk, remote_pk, entry, wanted, current = job
        path, error = outcome
        if error is not None:
            self.skip(remote_pk, f"{error}; the object kept its own file")
            return
        self.count("fetched")
        self.result.bytes += entry["size"]
        if current:
            self.count("updated")
        else:
            self.count("created")
        if self.dry_run:
            return
        if self.storage.exists(wanted):  # a leftover of a run that stopped half-way
            self.journal.delete(wanted)
        with open(path, "rb") as fh:
            saved = self.storage.save(wanted, File(fh, name=posixpath.basename(wanted)))
        self.journal.stored(saved)
        path.unlink(missing_ok=True)
        self.set_content(local_pk, saved, current)
        self.log(f"\t- gentityfile {remote_pk}: {saved} ({entry['size']} bytes)", 3)

    def set_content(self, local_pk, name, old):
        if self.dry_run:
            return
        with transaction.atomic(), recording(self.journal_run):
            GentityFile._base_manager.filter(pk=local_pk).update(
                content=name, last_modified=self.now
            )
        if old and old != name and old.startswith(folder(self.database) + "/"):
            self.delete_file(old)

    def delete_file(self, name):
        try:
            self.journal.delete(name)  # journaled: kept for the revert
        except OSError as exc:
            logger.warning("Could not delete %s: %s", name, exc)
            return
        self.count("deleted")

    def remove_orphans(self):
        """Files in this remote's folder that no object of ours points at."""
        root = folder(self.database)
        try:
            object_dirs, _files = self.storage.listdir(root)
        except (FileNotFoundError, NotImplementedError):
            return
        ours = GentityFile._base_manager.filter(
            original_db=self.database, content__startswith=root + "/"
        )
        if self.incremental and len(object_dirs) <= ours.count():
            # Every object with a file here has its folder: no folder of a deleted
            # object is left. The listed objects' folders may hold an earlier version's
            # (emptied) folder: those alone are pruned.
            listed = self.listed if len(self.listed) <= LISTED_FILTER_MAX else None
            if listed is not None:
                ours = ours.filter(original_id__in=list(listed))
                object_dirs = [d for d in object_dirs if d.isdigit() and int(d) in listed]
        kept = set(ours.values_list("content", flat=True))
        for object_dir in object_dirs:
            self.prune(f"{root}/{object_dir}", kept)

    def prune(self, path, kept):
        """Remove what under ``path`` is not in ``kept``; return whether it is now empty."""
        dirs, files = self.storage.listdir(path)
        empty = True
        for name in files:
            full = f"{path}/{name}"
            if full in kept:
                empty = False
            else:
                self.delete_file(full)
        for name in dirs:
            empty = self.prune(f"{path}/{name}", kept) and empty
        if empty:
            try:
                self.storage.delete(path)  # the folder itself (FileSystemStorage)
            except OSError as exc:
                logger.warning("Could not remove the folder %s: %s", path, exc)
        return empty


def checksum(path):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sync_files(
    database, client, *, dry_run=False, log=quiet, journal_run=None, refetch=(), full=False
):
    """Sync the files of the GentityFile objects replicated from ``database`` into the
    local default storage; return a SyncResult (its counts under FILES_LABEL). A file
    that cannot be fetched is a reported problem, not an error; a remote that cannot be
    reached raises. ``journal_run``: the run whose journal keeps the files it replaces
    or removes (None: they are deleted). ``refetch``: remote pks whose files are fetched
    again even if stored under the wanted name (a repair); the stored file is replaced
    only once the new one has arrived and checked. ``full``: list every object's file,
    not only those of the objects written since the files cursor."""
    return FilesSync(
        database,
        client,
        dry_run=dry_run,
        log=log,
        journal_run=journal_run,
        refetch=refetch,
        full=full,
    ).run()
