"""A model's checksums over key ranges, and the row hashes of a small range: what a
syncer's ``--verify`` compares with its replica without downloading a dump.

``GET <app>/<model>/checksums/?from=A&to=B&parts=N`` splits the keys [A, B] into N
equal sub-ranges (``protocol.rowhash.part_of``; the client computes their bounds with
``part_bounds``) and gives, for each that holds objects, ``[part, count, checksum, min, max]``: its
index, how many objects, their checksum (the sum of their row hashes modulo 2**64, 16
hex digits: ``protocol.rowhash``) and their lowest and highest key. Compact, as a
verification asks for many::

    {"model": "hcore.station", "from": 1, "to": 1000, "parts": [
     [0, 12, "9b4812ddd6282372", 3, 240], [2, 7, "…", 501, 610]]}

``GET <app>/<model>/hashes/?from=A&to=B`` lists the objects of [A, B] by pk, ``[pk,
hash]`` each, at most API_MAX_KEYS_PER_REQUEST of them (a range holding more is
refused, 400: ask for its checksums first); ``pks=1,2,3`` instead of a range lists those
objects, and ``ranges=A-B,C-D`` (protocol 3, at most MAX_RANGES) the objects of several
ranges at once, the limit counting them all. With ``after=<ISO 8601 datetime>``, an
object whose ``last_modified`` is later is ``[pk, hash, 1]``: a syncer whose cursor
that is will get its change anyway. With ``changed_since=<transaction id>`` (protocol
3, change capture: a syncer's capture cursor), an object written by that transaction
or a later one (``dbsync_xid`` of its table or of a parent's) is ``[pk, hash, 1]``,
and a key asked for that the model no longer has, deleted by such a transaction (its
tombstone), is ``[pk, null, 1]``: the next incremental run brings both, ``update()``
and SQL changes included, which leave ``last_modified`` alone.

On PostgreSQL each is one statement over the range (the hashes computed in SQL from the
rows as they are); on SQLite, in Python, row by row.
"""

from django.conf import settings
from django.db import connection

from hcore.capture import MARKER_COLUMN, TOMBSTONE_TABLE
from protocol.formats import MAX_KEY, format_checksum
from protocol.rowhash import (
    hashed_fields,
    hashed_m2m_fields,
    m2m_links,
    part_of,
    part_of_sql,
    row_hash,
    served_hash_sql,
)

from .changes import check_changed_since
from .errors import ApiError
from .params import (
    INTEGER,
    check_parameters,
    parse_key,
    parse_modified_after,
    parse_pks,
    parse_transaction,
)

CHECKSUM_PARAMETERS = ("from", "to", "parts")
HASHES_PARAMETERS = ("from", "to", "pks", "ranges", "after", "changed_since")
MAX_PARTS = 256
MAX_RANGES = 64  # of a hashes request's ``ranges``
CHUNK = 2_000


def parse_range(query, with_parts):
    """(from, to, parts) of a request: keys from 0 to MAX_KEY, from <= to, and parts
    from 1 to MAX_PARTS (default 16)."""
    check_parameters(query, CHECKSUM_PARAMETERS if with_parts else HASHES_PARAMETERS)
    low = parse_key("from", query.get("from", "0"))
    high = parse_key("to", query.get("to", str(MAX_KEY)))
    if low < 0 or high < 0 or low > high:
        raise ApiError(400, f"from and to must be keys from 0 to {MAX_KEY}, from <= to.")
    parts = 1
    if with_parts:
        text = query.get("parts", "16")
        # ASCII digits only: str.isdigit() takes '²', which int() refuses
        if not INTEGER.fullmatch(text) or not 1 <= int(text) <= MAX_PARTS:
            raise ApiError(400, f"parts must be an integer from 1 to {MAX_PARTS}, not {text!r}.")
        parts = int(text)
    return low, high, parts


# --- the SQL of the served rows -------------------------------------------------------------


def qn(name):
    return connection.ops.quote_name(name)


def served_row_sql(model):
    """(FROM clause, key SQL, hash SQL, last_modified SQL or None) of the served rows of
    ``model`` as this instance serves them: keys are its own pks."""
    opts = model._meta
    pk = f"t.{qn(opts.pk.column)}"
    source = f"{qn(opts.db_table)} t"
    modified = None
    parents = opts.get_parent_list()
    root = parents[-1] if parents else model
    if any(f.name == "last_modified" for f in root._meta.concrete_fields):
        if root is model:
            modified = "t.last_modified"
        else:
            source += f" JOIN {qn(root._meta.db_table)} r ON r.{qn(root._meta.pk.column)} = {pk}"
            modified = "r.last_modified"
    return source, pk, served_hash_sql(model), modified


def range_checksums(model, low, high, parts):
    """The non-empty parts of [low, high]: {part, from, to, count, checksum, min, max}."""
    if connection.vendor == "postgresql":
        source, key, row_hash_sql, _modified = served_row_sql(model)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {part_of_sql('s.k', low, high, parts)} AS part, count(*), sum(s.h), "
                f"min(s.k), max(s.k) FROM (SELECT {key} AS k, {row_hash_sql} AS h "
                f"FROM {source} WHERE {key} BETWEEN %s AND %s) s GROUP BY part ORDER BY part",
                [low, high],
            )
            rows = cursor.fetchall()
    else:
        totals = {}
        for pk, hash_, _modified in python_hashes(model, low, high):
            entry = totals.setdefault(part_of(pk, low, high, parts), [0, 0, pk, pk])
            entry[0] += 1
            entry[1] += hash_
            entry[3] = pk
        rows = [(part, *entry) for part, entry in sorted(totals.items())]
    return [
        [part, count, format_checksum(total), first, last]
        for part, count, total, first, last in rows
    ]


def parse_ranges(value):
    """``ranges=A-B,C-D``: [(A, B), (C, D)], keys from 0 to MAX_KEY, A <= B, at most
    MAX_RANGES of them."""
    if value is None:
        return None
    items = value.split(",")
    if len(items) > MAX_RANGES:
        raise ApiError(400, f"ranges lists {len(items)} ranges; at most {MAX_RANGES} are allowed.")
    ranges = []
    for item in items:
        low, dash, high = item.partition("-")
        if (
            not dash
            or not INTEGER.fullmatch(low)
            or not INTEGER.fullmatch(high)
            or not int(low) <= int(high) <= MAX_KEY
        ):
            raise ApiError(
                400,
                f"ranges must be comma-separated key ranges A-B (A <= B); {item!r} is not one.",
            )
        ranges.append((int(low), int(high)))
    return ranges


def parse_hashes_query(query):
    """(from, to, pks or None, after or None, changed_since or None, ranges or None) of
    a hashes request."""
    low, high, _parts = parse_range(query, with_parts=False)
    pks = parse_pks(query.get("pks"))
    ranges = parse_ranges(query.get("ranges"))
    if sum(("from" in query or "to" in query, pks is not None, ranges is not None)) > 1:
        raise ApiError(400, "Give one of pks, ranges or a range (from, to), not several.")
    after = parse_modified_after(query.get("after"), "after")
    changed_since = parse_transaction("changed_since", query.get("changed_since"))
    check_changed_since(changed_since)
    return low, high, pks, after, changed_since, ranges


def key_filter(column, low, high, pks, ranges):
    """(SQL, params): the keys ``column`` asked for: ``pks``, else ``ranges``, else [low,
    high]."""
    if pks is not None:
        return f"{column} = ANY(%s)", [list(pks)]
    if ranges is not None:
        sql = " OR ".join(f"{column} BETWEEN %s AND %s" for _ in ranges)
        return f"({sql})", [bound for pair in ranges for bound in pair]
    return f"{column} BETWEEN %s AND %s", [low, high]


def marker_sql(model, key):
    """(JOIN clause, SQL of the highest change marker of a row of ``model``): that of its
    own table and of each parent's (an ``update()`` of an inherited field writes the
    parent's row only)."""
    tables = [model._meta.db_table] + [p._meta.db_table for p in model._meta.get_parent_list()]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND column_name = %s AND table_name = ANY(%s)",
            [MARKER_COLUMN, tables],
        )
        marked = {row[0] for row in cursor.fetchall()}
    if model._meta.db_table not in marked:
        raise ApiError(400, "changed_since needs change capture, which this model lacks.")
    joins, markers = "", [f"t.{MARKER_COLUMN}"]
    for i, parent in enumerate(model._meta.get_parent_list()):
        if parent._meta.db_table not in marked:
            continue
        alias = f"p{i}"
        joins += (
            f" JOIN {qn(parent._meta.db_table)} {alias} "
            f"ON {alias}.{qn(parent._meta.pk.column)} = {key}"
        )
        markers.append(f"{alias}.{MARKER_COLUMN}")
    return joins, f"GREATEST({', '.join(markers)})"


def deleted_since(model, low, high, pks, since, ranges=None):
    """The keys of [low, high] (or of ``pks`` or ``ranges``) that ``model``'s table lost
    by a transaction ``since`` or later (its tombstones), and no longer has."""
    table = model._meta.db_table
    where, params = key_filter("d.pk", low, high, pks, ranges)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT d.pk FROM {TOMBSTONE_TABLE} d WHERE d.table_name = %s "
            f"AND d.xid >= %s AND {where} AND NOT EXISTS (SELECT 1 FROM {qn(table)} t "
            f"WHERE t.{qn(model._meta.pk.column)} = d.pk)",
            [table, since, *params],
        )
        return [row[0] for row in cursor.fetchall()]


def range_hashes(model, low, high, pks=None, after=None, changed_since=None, ranges=None):
    """[[pk, hash (16 hex digits)] or [pk, hash, 1] (changed after ``after``, or by
    transaction ``changed_since`` or later), and [pk, None, 1] (deleted by such a
    transaction)] of [low, high] (or of ``pks``, or of the key ``ranges``), by pk;
    ApiError if more than API_MAX_KEYS_PER_REQUEST."""
    limit = settings.API_MAX_KEYS_PER_REQUEST
    gone = []
    if connection.vendor == "postgresql":
        source, key, row_hash_sql, modified = served_row_sql(model)
        pending, params = "NULL", []
        if changed_since is not None:
            joins, marker = marker_sql(model, key)
            source += joins
            pending, params = f"({marker} >= %s)", [changed_since]
        elif after is not None and modified is not None:
            pending, params = f"({modified} > %s)", [after]
        where, keys = key_filter(key, low, high, pks, ranges)
        params += keys
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {key}, {row_hash_sql}, {pending} FROM {source} "
                f"WHERE {where} ORDER BY {key} LIMIT {limit + 1}",
                params,
            )
            rows = cursor.fetchall()
        if changed_since is not None and len(rows) <= limit:
            gone = deleted_since(model, low, high, pks, changed_since, ranges)
    else:
        rows = []
        for first, last in ranges or [(low, high)]:
            for pk, hash_, moment in python_hashes(model, first, last, pks):
                rows.append(
                    (pk, hash_, after is not None and moment is not None and moment > after)
                )
                if len(rows) > limit:
                    break
        rows = sorted(dict((row[0], row) for row in rows).values())
    if len(rows) + len(gone) > limit:
        raise ApiError(
            400,
            f"The range {low}-{high} holds more than {limit} objects "
            f"(API_MAX_KEYS_PER_REQUEST); ask for its checksums in parts first.",
        )
    listed = [
        [pk, format_checksum(hash_)] + ([1] if pending else []) for pk, hash_, pending in rows
    ]
    if gone:
        listed = sorted(listed + [[pk, None, 1] for pk in gone], key=lambda row: row[0])
    return listed


def python_hashes(model, low, high, pks=None):
    """(pk, hash, last_modified) of [low, high] (or of ``pks``) by pk, hashed in Python
    (SQLite)."""
    fields = hashed_fields(model)
    m2m = hashed_m2m_fields(model)
    has_modified = any(f.name == "last_modified" for f in model._meta.concrete_fields)
    columns = ["pk", *(f.attname for f in fields)]
    if has_modified:
        columns.append("last_modified")
    if pks is not None:
        queryset = model._base_manager.filter(pk__in=pks).order_by("pk")
    else:
        queryset = model._base_manager.filter(pk__gte=low, pk__lte=high).order_by("pk")
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        rows = list(page.values_list(*columns)[:CHUNK])
        if not rows:
            return
        pks = [row[0] for row in rows]
        links = {f.name: m2m_links(f, pks) for f in m2m}
        for row in rows:
            pk = row[0]
            values = {f.name: value for f, value in zip(fields, row[1:], strict=False)}
            row_links = {name: by_pk.get(pk, ()) for name, by_pk in links.items()}
            yield pk, row_hash(model, pk, values, row_links), row[-1] if has_modified else None
        last = pks[-1]
