"""Syncing a legacy remote: one that serves only the 2010 layout (``protocol.legacy``).

A legacy remote has no manifest, no key listings, no ``modified_after`` and no clock
to read. So every run is a full one: each planned model's listing,
``/api/<ModelName>/``, is fetched into the work folder as a stream (the same
``fetch_job``, client, size caps and timeouts as today's dumps), then installed by
today's install (one transaction, key maps, the delete guard). The full listings are
the deletion check: an object replicated from the remote before and absent from its
listing now is deleted, under the guard. No cursor moves (the remote's time is not
known; a run after a change to the current layout is full). There are no schema
fingerprints to compare: an object with a field the local model does not have is
refused by the install (``install.spec.check_object``), as a dumpdata file's is.

A server of 2010 wrote a listing as Django's serializer does, all on one line (or
indented); each fetched listing is rewritten, as a stream, in the dumps' line layout
(``to_line_layout``), which the install reads with flat memory and a cap per object.

The records come from ``/api/tsdata/<id>/`` (``records.legacy``); files are not
synced (the 2010 layout serves none).

Whether a remote is legacy is what it was registered as (``Database.api_layout``),
never guessed from its answers.
"""

import json
import os

import ijson
from django.conf import settings

try:  # an order of magnitude faster than the standard library's json on this path
    from orjson import JSONEncodeError, dumps
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    JSONEncodeError = ValueError

    def dumps(obj):
        return json.dumps(obj, ensure_ascii=False).encode()


from protocol.legacy import LAYOUT_CURRENT, LAYOUT_LEGACY, legacy_name

from .errors import PayloadError, PlanError
from .remote import check_api_path


def is_legacy(database):
    return getattr(database, "api_layout", LAYOUT_CURRENT) == LAYOUT_LEGACY


def listing_path(database, name):
    """The path of a 2010 URL under the remote's API path (``/api/`` by default)."""
    base = database.api_path.strip("/")
    return f"/{base}/{name}/" if base else f"/{name}/"


def legacy_entries(database, plan):
    """{model label: entry} for the planned models, as a manifest would give them: the
    URL of each model's full listing."""
    entries = {}
    for model_label in plan.labels:
        name = legacy_name(model_label)
        if name is None:
            raise PlanError(
                f"{model_label} has no URL in the 2010 layout, so a legacy remote cannot "
                f"serve it; exclude it (-e)."
            )
        path = listing_path(database, name)
        check_api_path(path, database)
        entries[model_label] = {"model": model_label, "url": path, "layout": LAYOUT_LEGACY}
    return entries


def to_line_layout(path):
    """Rewrite the fetched listing at ``path`` one object a line between ``[`` and
    ``]`` lines (``engine.dumps``), reading it as a stream: any layout of a JSON list
    of objects will do; anything else, or an object longer than
    DBSYNC_MAX_OBJECT_BYTES, is a PayloadError, and ``path`` is left as it came."""
    name = os.path.basename(path)
    limit = settings.DBSYNC_MAX_OBJECT_BYTES
    tmp = f"{path}.layout"
    try:
        with open(path, "rb") as src, open(tmp, "wb") as out:
            first = src.read(1)
            while first.isspace():
                first = src.read(1)
            if first != b"[":
                raise PayloadError(f"{name}: a listing must be a JSON list of objects")
            src.seek(0)
            out.write(b"[\n")
            separator = b""
            for number, obj in enumerate(ijson.items(src, "item", use_float=True), 1):
                try:
                    line = dumps(obj)
                except JSONEncodeError as exc:  # e.g. an integer of more than 64 bits
                    raise PayloadError(f"{name} object {number}: {exc}") from exc
                if len(line) > limit:
                    raise PayloadError(
                        f"{name} object {number}: more than {limit} bytes; refused "
                        f"(DBSYNC_MAX_OBJECT_BYTES)"
                    )
                out.write(separator + line)
                separator = b",\n"
            out.write(b"\n]\n" if separator else b"]\n")
    except ijson.JSONError as exc:
        os.unlink(tmp)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PayloadError(f"{name}: malformed JSON: {reason}") from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
