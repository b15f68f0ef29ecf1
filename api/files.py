"""The files of ``GentityFile`` objects (photos, documents) over the API.

``gentityfile/contents/`` lists every object's file, one per line as the dumps::

    [
    {"pk": 3, "name": "gentityfile/notes.txt", "size": 812, "sha256": "9f86d0..."},
    {"pk": 4, "name": "", "size": null, "sha256": null},
    {"pk": 5, "name": "gentityfile/gone.pdf", "size": null, "sha256": null, "missing": true}
    ]

(an empty ``name``: the object has no file; ``missing``: its file is not in this
server's storage). ``gentityfile/<pk>/content/`` serves the bytes, with the same
SHA-256 in an ``X-Content-SHA256`` header. The listing reads every file it lists to
compute its checksum, so a whole listing costs what the files weigh.

``gentityfile/contents/?changed_since=<transaction id>`` (PostgreSQL, change capture:
``hcore.capture``) lists only the objects whose row was written by that transaction or
a later one (the manifest's capture cursor), and hashes only their files: an unchanged
re-sync costs one indexed read and no file. The manifest's ``files.listing_parameters``
names the parameter where it is honoured (a client sends it only then). A new file is
a new row or a written one (an upload saves the object), so the row's marker tells.
A file rewritten in the storage behind the database's back (same name, no write of
its row) is not listed by it: a listing without ``changed_since`` (``--full``) or
``--verify`` finds it.
"""

import hashlib
import logging
import posixpath

from django.core.exceptions import SuspiciousFileOperation
from django.http import FileResponse, HttpResponse

from hcore.media import file_content_type
from hcore.models import GentityFile
from protocol.formats import MAX_KEY

from .changes import filter_changed_since
from .dumps import OBJECT_ENCODER
from .errors import ApiError

logger = logging.getLogger(__name__)

CHUNK = 1 << 16
STORAGE_ERRORS = (OSError, SuspiciousFileOperation)


def storage():
    return GentityFile._meta.get_field("content").storage


def checksum(name):
    """(size, SHA-256 hex) of a stored file; raises OSError if it is missing."""
    digest, size = hashlib.sha256(), 0
    with storage().open(name, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def describe(pk, name):
    entry = {"pk": pk, "name": name, "size": None, "sha256": None}
    if not name:
        return entry
    try:
        entry["size"], entry["sha256"] = checksum(name)
    except STORAGE_ERRORS as exc:
        logger.warning("File %r of gentityfile %s is not readable: %s", name, pk, exc)
        entry["missing"] = True
    return entry


LISTING_PARAMETERS = ("changed_since",)


def listing_parameters(capture):
    """The parameters the listing honours, for the manifest: ``changed_since`` only
    where the database captures changes (``capture``: the manifest's capture state)."""
    return list(LISTING_PARAMETERS) if capture else []


def stream_listing(changed_since=None):
    """The listing's body; with ``changed_since``, only the objects written since."""
    rows = GentityFile._base_manager.order_by("pk").values_list("pk", "content")
    if changed_since is not None:
        rows = filter_changed_since(rows, GentityFile, changed_since)
    yield b"[\n"
    separator = ""
    for pk, name in rows.iterator(chunk_size=2000):
        yield (separator + OBJECT_ENCODER.encode(describe(pk, name))).encode()
        separator = ",\n"
    yield b"\n]\n" if separator else b"]\n"


def file_response(pk, head=False):
    obj = None
    if pk <= MAX_KEY:
        obj = GentityFile._base_manager.select_related("file_type").filter(pk=pk).first()
    if obj is None:
        raise ApiError(404, f"No gentityfile with pk={pk}.")
    name = obj.content.name
    if not name:
        raise ApiError(404, f"gentityfile(pk={pk}) has no file.")
    try:
        size, sha256 = checksum(name)
        handle = None if head else storage().open(name, "rb")
    except STORAGE_ERRORS as exc:
        logger.warning("File %r of gentityfile %s is not readable: %s", name, pk, exc)
        raise ApiError(
            404, f"The file of gentityfile(pk={pk}) is missing on this server."
        ) from exc
    basename = posixpath.basename(name)
    content_type = file_content_type(obj, basename)
    if head:
        response = HttpResponse(content_type=content_type)
    else:
        response = FileResponse(
            handle, as_attachment=True, filename=basename, content_type=content_type
        )
    response["Content-Length"] = str(size)
    response["X-Content-SHA256"] = sha256
    return response
