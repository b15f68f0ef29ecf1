"""The files of ``GentityFile`` objects, downloadable from the admin in production.

WhiteNoise serves static files only, and replicated files are data: they are served by
this view, to a logged-in user who may view ``GentityFile`` objects, and only a name
that a ``GentityFile`` points at (nothing else under ``MEDIA_ROOT``: not a leftover of
an interrupted sync, not another remote's folder by a guessed path). On a storage that
serves its own URLs (S3), the user is redirected to the storage's (signed) URL.
"""

import logging
import mimetypes
import posixpath
import re

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.urls import reverse

from .models import GentityFile

logger = logging.getLogger(__name__)

PERMISSION = "hcore.view_gentityfile"
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE = re.compile(rf"{TOKEN}/{TOKEN}")


def media_type(value):
    """``value`` if it is a media type (``type/subtype``, RFC 9110 tokens), else None: a
    stored description is sent in a header, where a line break or a stray character
    would be refused or would forge another header."""
    return value if MEDIA_TYPE.fullmatch(value) else None


def file_content_type(gentity_file, basename):
    """The Content-Type of a stored file: its file type's, if that is a media type, else
    guessed from its name."""
    return (
        media_type(gentity_file.file_type.mime_type)
        or mimetypes.guess_type(basename)[0]
        or "application/octet-stream"
    )


class StoredNameConverter:
    """A stored file's name in the URL: any characters, line breaks too (Django's
    ``path`` converter stops at one, so a file named so would be a 404)."""

    regex = r"[\s\S]+"

    def to_python(self, value):
        return value

    def to_url(self, value):
        return value


def media_file(request, name):
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url=reverse("admin:login"))
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    obj = (
        GentityFile._base_manager.select_related("file_type")
        .filter(content=name)
        .exclude(content="")
        .first()
    )
    if obj is None:
        raise Http404("No such file.")
    storage = obj.content.storage
    if not isinstance(storage, FileSystemStorage):
        return HttpResponseRedirect(storage.url(name))
    try:
        handle = storage.open(name, "rb")
    except (OSError, SuspiciousFileOperation) as exc:
        logger.warning("File %r of gentityfile %s is not readable: %s", name, obj.pk, exc)
        raise Http404("The file is missing on this server.") from exc
    basename = posixpath.basename(name)
    content_type = file_content_type(obj, basename)
    # An attachment, never rendered inline: a remote's HTML or SVG must not run as a page
    # of this site.
    response = FileResponse(
        handle, as_attachment=True, filename=basename, content_type=content_type
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response
