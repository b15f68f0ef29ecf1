"""The query parameters of the API, validated: a bad value is a 400 naming it."""

import datetime as dt
import re
from dataclasses import dataclass

from django.conf import settings
from django.utils.dateparse import parse_datetime

from protocol.formats import MAX_KEY

from .errors import ApiError

DUMP_PARAMETERS = ("modified_after", "changed_since", "pks", "after", "limit")
INTEGER = re.compile(r"-?[0-9]{1,19}")
# An unescaped "+" in a query string arrives as a space: "...00 00:00" means "+00:00".
SPACED_OFFSET = re.compile(r"^(?P<local>.*[0-9]) (?P<offset>[0-9]{2}(:?[0-9]{2})?)$")


@dataclass(frozen=True)
class DumpQuery:
    """Which objects of a model a dump request asks for."""

    modified_after: dt.datetime | None = None
    changed_since: int | None = None  # a transaction id (api.changes)
    pks: tuple | None = None
    after: int | None = None
    limit: int | None = None


def parse_dump_query(query):
    """The :class:`DumpQuery` of a request's ``GET`` parameters."""
    check_parameters(query, DUMP_PARAMETERS)
    return DumpQuery(
        modified_after=parse_modified_after(query.get("modified_after")),
        changed_since=parse_transaction("changed_since", query.get("changed_since")),
        pks=parse_pks(query.get("pks")),
        after=parse_key("after", query.get("after")),
        limit=parse_limit(query.get("limit")),
    )


def check_parameters(query, allowed=()):
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ApiError(
            400, f"Unknown query parameter {', '.join(map(repr, unknown))}; known: {known}."
        )
    repeated = sorted(name for name in query if len(query.getlist(name)) > 1)
    if repeated:
        raise ApiError(400, f"Query parameter {repeated[0]!r} is given more than once.")


def parse_key(name, value):
    if value is None:
        return None
    if not INTEGER.fullmatch(value) or abs(int(value)) > MAX_KEY:
        raise ApiError(400, f"{name} must be an integer primary key, not {value!r}.")
    return int(value)


def parse_pks(value):
    if value is None:
        return None
    items = value.split(",")
    limit = settings.API_MAX_KEYS_PER_REQUEST
    if len(items) > limit:
        raise ApiError(
            400, f"pks lists {len(items)} keys; at most {limit} are allowed per request."
        )
    for item in items:
        if not INTEGER.fullmatch(item) or abs(int(item)) > MAX_KEY:
            raise ApiError(
                400, f"pks must be comma-separated integer primary keys; {item!r} is not one."
            )
    return tuple(sorted({int(item) for item in items}))


def parse_transaction(name, value):
    """A transaction id, as the manifest's capture cursor gives it."""
    if value is None:
        return None
    if not INTEGER.fullmatch(value) or not 0 <= int(value) < 2**63:
        raise ApiError(
            400, f"{name} must be a transaction id (the manifest's capture cursor), not {value!r}."
        )
    return int(value)


def parse_limit(value):
    if value is None:
        return None
    maximum = settings.API_MAX_PAGE_SIZE
    if not INTEGER.fullmatch(value) or not 1 <= int(value) <= maximum:
        raise ApiError(400, f"limit must be an integer from 1 to {maximum}, not {value!r}.")
    return int(value)


def parse_modified_after(value, name="modified_after"):
    """An ISO 8601 datetime; naive means UTC. (Also ``records-summary``'s
    ``changed_after``, under that ``name``.)"""
    if value is None:
        return None
    parsed = parse_iso_datetime(value)
    if parsed is None:
        raise ApiError(
            400,
            f"{name} must be an ISO 8601 datetime such as "
            f"2026-11-25T23:59:01.123456+00:00 (escape '+' as %2B), not {value!r}.",
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return in_utc(parsed)


def in_utc(moment):
    """``moment`` in UTC: PostgreSQL refuses offsets over 15:59, Python allows 23:59.
    A moment out of Python's range in UTC is the range's end: nothing lies beyond."""
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        return (dt.datetime.max if moment.year > 1 else dt.datetime.min).replace(tzinfo=dt.UTC)


def parse_iso_datetime(value):
    """An ISO 8601 datetime, or None. An offset whose '+' arrived as a space (a query
    string's unescaped '+') is read as the '+' it was."""
    parsed = _parse_datetime(value)
    if parsed is None and (spaced := SPACED_OFFSET.match(value)):
        parsed = _parse_datetime(f"{spaced['local']}+{spaced['offset']}")
    return parsed


def _parse_datetime(text):
    try:
        return parse_datetime(text)
    except ValueError:  # well formed but impossible, e.g. February 30th
        return None
