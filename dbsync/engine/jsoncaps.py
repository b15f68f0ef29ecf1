"""JSON from a remote, parsed under caps on what it may make a sync hold.

A cap on bytes does not bound memory: a few megabytes of tiny values (``{},{},...``)
parse into hundreds of megabytes of Python objects, and gzipped they take far less
on the wire. So every JSON document read whole from a remote (the
manifest, one object of a dump, one entry of the records summary or of the file
listing, a ``dumpdata`` file's objects) is parsed here as a stream of events (ijson)
and refused, with a PayloadError naming the document, as soon as it has more than
DBSYNC_MAX_JSON_ITEMS values (a container and each scalar count one) or nests deeper
than DBSYNC_MAX_JSON_DEPTH: before the memory grows.

A text that cannot break a cap (no longer than DBSYNC_MAX_JSON_ITEMS bytes, since a
value takes at least one; with no more ``[`` and ``{`` than DBSYNC_MAX_JSON_DEPTH) is
parsed by orjson at once, several times faster: the lines of a dump are such texts.
A keys listing (millions of keys, legitimately) is not parsed here: ``dumps.key_pieces``
reads it a bounded piece at a time, and takes nothing but flat integers.
"""

import io

import ijson
from django.conf import settings
from ijson.common import IncompleteJSONError, JSONError, ObjectBuilder

try:  # several times faster than the standard library's json on this path
    from orjson import loads as fast_loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    from json import loads as fast_loads

from .errors import PayloadError


class MalformedJSON(PayloadError):
    """Not JSON at all (as opposed to JSON over a cap)."""


OPENERS = ("start_map", "start_array")
CLOSERS = ("end_map", "end_array")


class Caps:
    """The caps in force (read once per document: the settings may change in tests)."""

    def __init__(self, items=None, depth=None):
        self.items = items if items is not None else settings.DBSYNC_MAX_JSON_ITEMS
        self.depth = depth if depth is not None else settings.DBSYNC_MAX_JSON_DEPTH

    def cannot_break(self, text):
        return len(text) <= self.items and text.count(b"[") + text.count(b"{") <= self.depth


def loads(text, what, caps=None):
    """The value of the JSON ``text`` (bytes); a PayloadError naming ``what`` if it is
    malformed or breaks a cap."""
    caps = caps or Caps()
    if isinstance(text, str):
        text = text.encode()
    if caps.cannot_break(text):
        try:
            return fast_loads(text)
        except (ValueError, RecursionError) as exc:
            raise MalformedJSON(f"{what}: malformed JSON: {exc}") from exc
    events = _events(io.BytesIO(text), what)
    value = _value(next(events, None), events, what, caps, depth=0)
    for _extra in events:  # the parser refuses anything after the value
        pass
    return value


def iter_array(fh, what, caps=None):
    """The elements of a JSON array read from the binary file ``fh``, one at a time,
    each under the caps (the array as a whole is never held, nor its length capped)."""
    caps = caps or Caps()
    events = _events(fh, what)
    first = next(events, None)
    if first is None or first[0] != "start_array":
        raise PayloadError(f"{what}: must be a JSON list")
    index = 0
    while (event := next(events, None)) is not None:
        if event[0] == "end_array":
            for _extra in events:  # the parser refuses anything after the list
                pass
            return
        index += 1
        yield _value(event, events, f"{what}, element {index}", caps, depth=1)
    raise MalformedJSON(f"{what}: malformed JSON: truncated")


def _value(first, events, what, caps, depth):
    """The value whose first event is ``first``, inside ``depth`` containers."""
    builder, level, count = ObjectBuilder(), depth, 0
    event = first
    while True:
        if event is None:
            raise MalformedJSON(f"{what}: malformed JSON: truncated")
        kind, value = event
        if kind in OPENERS:
            level += 1
            if level > caps.depth:
                raise PayloadError(
                    f"{what}: JSON nested deeper than {caps.depth} levels; refused "
                    f"(DBSYNC_MAX_JSON_DEPTH)"
                )
        if kind in CLOSERS:
            level -= 1
        elif kind != "map_key":
            count += 1
            if count > caps.items:
                raise PayloadError(
                    f"{what}: more than {caps.items} JSON values; refused (DBSYNC_MAX_JSON_ITEMS)"
                )
        builder.event(kind, value)
        if level == depth:
            return builder.value
        event = next(events, None)


def _events(fh, what):
    try:
        yield from ijson.basic_parse(fh, use_float=True)
    except (IncompleteJSONError, JSONError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MalformedJSON(f"{what}: malformed JSON: {detail}") from exc
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"{what}: malformed JSON: {exc}") from exc
