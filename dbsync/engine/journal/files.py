"""The files of a run, journaled: a file the run stores is noted (``A``), a file it
would delete or overwrite is moved aside into ``DBSYNC_JOURNAL_DIR/<run>/`` and noted
(``K``), so that the revert can delete the first and put the second back.

Files are not in the database's transaction: each note is committed as the file is
stored or moved, so the journal lists every file the run touched even if it stops
half-way.
"""

import json
import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import connection, transaction

from .schema import TABLE

logger = logging.getLogger(__name__)

FILES = "<files>"  # the journal's table_name of files


def run_folder(run_id):
    return Path(settings.DBSYNC_JOURNAL_DIR) / str(int(run_id))


class FileJournal:
    """The files of run ``run_id`` in ``storage``; ``run_id`` None: not journaled
    (``delete`` deletes, ``stored`` notes nothing)."""

    def __init__(self, run_id, storage):
        self.run_id = run_id
        self.storage = storage

    def note(self, op, image):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {TABLE} (run_id, table_name, op, image) VALUES (%s, %s, %s, %s)",
                [self.run_id, FILES, op, json.dumps(image)],
            )

    def stored(self, name):
        """The run stored the file ``name`` (the revert deletes it)."""
        if self.run_id is not None:
            self.note("A", {"name": name})

    def delete(self, name):
        """Delete ``name`` from the storage, or, journaled, move it aside (the revert
        puts it back)."""
        if self.run_id is None:
            self.storage.delete(name)
            return
        folder = run_folder(self.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / uuid.uuid4().hex
        with self.storage.open(name, "rb") as source, open(kept, "wb") as target:
            shutil.copyfileobj(source, target)
        self.note("K", {"name": name, "kept": kept.name})
        self.storage.delete(name)


def revert_files(run_id, entries, storage):
    """Undo the file notes ``entries`` [(op, image)] of a run, newest first: a stored
    file deleted, a kept one put back. Returns (deleted, restored)."""
    deleted = restored = 0
    folder = run_folder(run_id)
    for op, image in entries:
        image = json.loads(image)
        name = image["name"]
        if op == "A":
            if storage.exists(name):
                storage.delete(name)
                deleted += 1
            continue
        if storage.exists(name):
            storage.delete(name)
        with open(folder / image["kept"], "rb") as fh:
            saved = storage.save(name, File(fh, name=Path(name).name))
        if saved != name:
            logger.warning("Run %s: the file %s was put back as %s", run_id, name, saved)
        restored += 1
    return deleted, restored


def discard_files(run_id):
    shutil.rmtree(run_folder(run_id), ignore_errors=True)
