"""Reading fetched dumps: Django's serialization format, one object at a time.

The API writes one object per line between a ``[`` line and a ``]`` line, so a
dump of any size is read with flat memory: a line (one object) longer than
DBSYNC_MAX_OBJECT_BYTES is refused before it is read whole, and each line is parsed
under the caps on JSON values and nesting (``jsoncaps``). A dump written by
``manage.py dumpdata`` (an air-gapped transfer) is any valid JSON list; it is read
as a stream of objects, each under the same caps, but only when the caller allows it
(never a dump fetched from a remote).
"""

import os
import re

from django.conf import settings

try:  # several times faster than the standard library's json on this path
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    from json import loads

from protocol.formats import MAX_KEY

from . import jsoncaps
from .errors import PayloadError
from .keysets import KeySet

SAFE_NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")


def dump_name(model_label, suffix=""):
    """A file name for a model's dump, from a planned model label only."""
    if not SAFE_NAME.match(model_label):
        raise PayloadError(f"refusing unsafe model name {model_label!r}")
    return f"{model_label}{suffix}.json"


def iter_objects(path, skip=frozenset(), whole=True):
    """Yield the objects of a dump; raise PayloadError on anything malformed.

    Objects of the models labelled in ``skip`` are passed over unchecked (e.g. the
    records in a ``dumpdata`` file, whose primary keys are not integers). A dump not
    in the line layout is read whole if ``whole``, else refused.
    """
    name = os.path.basename(path)
    caps = jsoncaps.Caps()
    with open(path, "rb") as fh:
        numbered = capped_lines(fh, name)
        _lineno, first = next(numbered, (0, b""))
        if first.strip() != b"[":
            if not whole:
                raise PayloadError(f"{name}: not a dump of the API (its first line is not '[')")
            yield from _iter_whole(path, skip)
            return
        lineno, closed = 1, False
        for lineno, line in numbered:
            text = line.strip()
            if not text:
                continue
            if closed:
                raise PayloadError(f"{name} line {lineno}: data after the closing bracket")
            if text == b"]":
                closed = True
                continue
            if text.endswith(b","):
                text = text[:-1]
            try:
                obj = jsoncaps.loads(text, f"{name} line {lineno}", caps)
            except jsoncaps.MalformedJSON:
                if lineno == 2 and whole:
                    # Not our line layout (e.g. dumpdata --indent): read it as a stream.
                    yield from _iter_whole(path, skip)
                    return
                raise
            if not _skipped(obj, skip):
                yield _check_object(obj, name, f"line {lineno}")
        if not closed:
            raise PayloadError(f"{name}: truncated (no closing bracket after line {lineno})")


def capped_lines(fh, name):
    """(line number, line) of a binary file; a line over DBSYNC_MAX_OBJECT_BYTES is
    refused (PayloadError naming ``name``) before it is read whole."""
    limit = settings.DBSYNC_MAX_OBJECT_BYTES
    lineno = 0
    while line := fh.readline(limit + 1):
        lineno += 1
        if len(line) > limit:
            raise PayloadError(
                f"{name} line {lineno}: more than {limit} bytes; refused (DBSYNC_MAX_OBJECT_BYTES)"
            )
        yield lineno, line


def listing_entries(path, what, check):
    """The entries of a JSON listing written one per line between ``[`` and ``]`` (the
    records summary, the file listing), each passed through ``check``; a line that is
    not a valid entry is a PayloadError naming ``what`` and the line."""
    caps = jsoncaps.Caps()
    with open(path, "rb") as fh:
        for lineno, line in capped_lines(fh, f"{what},"):
            text = line.strip().rstrip(b",")
            if text in (b"[", b"]", b""):
                continue
            entry = jsoncaps.loads(text, f"{what}, line {lineno}", caps)
            try:
                yield check(entry)
            except (ValueError, TypeError, KeyError) as exc:
                raise PayloadError(f"{what}, line {lineno}: not a valid entry ({exc})") from exc


def _skipped(obj, skip):
    return bool(skip) and isinstance(obj, dict) and str(obj.get("model")).lower() in skip


def _iter_whole(path, skip=frozenset()):
    """A dump in any layout (``dumpdata``'s), as a stream of objects under the caps."""
    name = os.path.basename(path)
    with open(path, "rb") as fh:
        for index, obj in enumerate(jsoncaps.iter_array(fh, name), start=1):
            if not _skipped(obj, skip):
                yield _check_object(obj, name, f"object {index}")


def _check_object(obj, name, where):
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("model"), str)
        or not isinstance(obj.get("fields"), dict)
    ):
        raise PayloadError(f"{name} {where}: not a serialized object (model, pk, fields)")
    pk = obj.get("pk")
    if isinstance(pk, str) and pk.isdigit():
        pk = obj["pk"] = int(pk)
    if not isinstance(pk, int) or isinstance(pk, bool) or not 0 < pk <= MAX_KEY:
        raise PayloadError(f"{name} {where}: {obj['model']} has an invalid pk {pk!r}")
    return obj


# A key listing is parsed this many characters at a time: a listing of millions of
# keys is never held whole (as a list of ints, 36 bytes a key).
KEYS_PIECE = 1 << 20
# Characters between two commas of a listing, at most (a key has 20 at most).
MAX_KEY_ENTRY = 1024


def read_key_set(path):
    """The primary keys of a keys-only listing, as a compact KeySet, a piece at a time."""
    keys = KeySet()
    for piece in key_pieces(path):
        keys.update(KeySet.from_sorted(piece))
    return keys


def read_keys(path):
    """The list of primary keys of a keys-only listing."""
    return [key for piece in key_pieces(path) for key in piece]


def key_pieces(path, size=KEYS_PIECE):
    """The keys of a listing (a JSON list of integers), as lists of at most about
    ``size`` characters' worth: each piece of text up to a comma is parsed as a JSON
    list of its own, so the listing must be one list of plain integers, as a whole."""
    name = os.path.basename(path)

    def parse(text, between_commas):
        if between_commas and not text.strip():
            raise PayloadError(f"{name}: malformed key listing: an empty entry")
        try:
            keys = loads(f"[{text}]")
        except ValueError as exc:
            raise PayloadError(f"{name}: malformed or truncated key listing: {exc}") from exc
        # JSON gives int, float, str, bool, None, list or dict: only int will do (and
        # bool, a subclass, is a type of its own here).
        if not set(map(type, keys)) <= {int}:
            raise PayloadError(f"{name}: a key listing must be a JSON list of integers")
        return keys

    try:
        with open(path, encoding="utf-8") as fh:
            text, opened, after_comma = "", False, False
            while True:
                block = fh.read(size)
                text += block
                if not opened:
                    text = text.lstrip()
                    if not text and block:
                        continue
                    if not text.startswith("["):
                        raise PayloadError(
                            f"{name}: a key listing must be a JSON list of integers"
                        )
                    text, opened = text[1:], True
                if not block:  # the end: the list's closing bracket, then only space
                    body = text.rstrip()
                    if not body.endswith("]"):
                        raise PayloadError(f"{name}: malformed or truncated key listing")
                    yield parse(body[:-1], after_comma)
                    return
                cut = text.rfind(",")
                if cut < 0:
                    if len(text) > max(size, MAX_KEY_ENTRY):
                        raise PayloadError(f"{name}: malformed key listing: an entry too long")
                    continue
                yield parse(text[:cut], True)
                text, after_comma = text[cut + 1 :], True
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{name}: malformed key listing: {exc}") from exc
