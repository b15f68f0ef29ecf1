"""The files of a replica's ``GentityFile`` objects against the remote's listing (size
and SHA-256 a file, ``api.files``), each local file read and hashed as it is now."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from hcore.models import GentityFile

from ..dumps import listing_entries
from ..files import check_entry
from ..remote import check_api_path

LABEL = "hcore.gentityfile.content"
CHUNK = 1 << 16


@dataclass
class FilesVerdict:
    model: str = LABEL
    files: int = 0
    differ: list = field(default_factory=list)  # remote pks of objects whose file differs
    note: str = ""

    @property
    def differing(self):
        return len(self.differ)

    @property
    def equal(self):
        return not self.differ

    def describe(self):
        if self.note:
            return f"{self.model}: not verified ({self.note})"
        if self.equal:
            return f"{self.model}: equal ({self.files} files)"
        return f"{self.model}: {len(self.differ)} files differ"

    def as_json(self, listed=100):
        return {
            "model": self.model,
            "equal": self.equal,
            "differing": self.differing,
            "objects": self.differ[:listed],
            "note": self.note,
        }


def verify_files(database, client, work):
    verdict = FilesVerdict()
    urls = client.manifest().get("files")
    if not isinstance(urls, dict):
        verdict.note = "the remote serves no files"
        return verdict
    check_api_path(urls.get("listing_url"), client)
    path = Path(work) / "files-listing.json"
    client.download(urls["listing_url"], path)
    listing = {
        e["pk"]: e for e in listing_entries(path, f"{database}: the file listing", check_entry)
    }
    path.unlink()
    storage = GentityFile._meta.get_field("content").storage
    objects = GentityFile._base_manager.filter(original_db=database).values_list(
        "original_id", "content"
    )
    for remote_pk, name in objects.order_by("original_id"):
        entry = listing.get(remote_pk)
        if entry is None or entry.get("missing"):
            continue  # the object itself differs, or the remote cannot read its file
        verdict.files += 1
        if not entry["name"]:
            if name:
                verdict.differ.append(remote_pk)
            continue
        if not name or stored_checksum(storage, name) != (entry["size"], entry["sha256"]):
            verdict.differ.append(remote_pk)
    return verdict


def stored_checksum(storage, name):
    """(size, SHA-256) of a stored file, or None if it cannot be read."""
    digest, size = hashlib.sha256(), 0
    try:
        with storage.open(name, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError:
        return None
    return size, digest.hexdigest()
