"""The row encoding that verification hashes, defined once, in Python and in SQL.

A served object's content (its pk, its served fields, its many-to-many links: what the
API serves of it, keys as the serving instance's pks) is written as one text, a token
a value, and hashed to a signed 64-bit integer. A set of objects' checksum is the sum
of their hashes modulo 2**64 (``protocol.formats.format_checksum``, as the records'),
so that the checksum of a key range is the sum of its parts' and the order of the rows
does not matter.

Both sides compute it from their actual columns, never from a hash stored at install:
the serving side (``api.checksums``) from its rows, the replica
(``dbsync.engine.verify``) from its own, each key mapped back to the remote's pk
through ``original_id``; a hand edit of either shows. (The manifest's per-model
checksum is of this encoding too, but kept by the capture triggers, ``hcore.checksums``:
a figure for readers, which ``--verify`` does not trust, since a write made with the
triggers disabled would be in neither it nor the replica.) PostgreSQL computes it in SQL
(``row_text_sql``, ``hash_sql``), SQLite in Python (``row_text``, ``text_hash``); the
golden vectors of ``tests/test_rowhash.py`` hold both to the same bytes.

Not hashed: the bookkeeping (``original_id``, ``original_db``: never served),
``last_modified`` (each instance's own clock: the replica sets its own), keys to user
accounts (never served) and file fields (a name in each instance's own storage; the
files are compared by their SHA-256, ``api.files``).

Tokens, each ending in ``;``:

====================  ====================================================================
``N;``                NULL (so that NULL and ``""`` differ)
``S<len>:<text>;``    text; ``<len>`` in characters (code points), so no text can end early
``I<digits>;``        integer; a key as the serving instance's pk
``F<16 hex>;``        float: its IEEE 754 double, big-endian (no decimal rounding at all)
``D<digits>;``        decimal without trailing zeros (``12.50`` -> ``12.5``, ``0.0`` -> ``0``)
``B1;`` / ``B0;``     boolean
``d<days>;``          date: days since 1970-01-01
``T<microseconds>;``  date and time: microseconds since 1970-01-01T00:00Z (time zone free)
``t<microseconds>;``  time of day: microseconds since midnight
``M<n>:<k>,<k>;``     many-to-many: how many links, and the linked pks ascending
====================  ====================================================================

A row is ``I<pk>;`` then its fields' tokens in ``hashed_fields`` order, then its
many-to-many fields' in ``hashed_m2m_fields`` order. Its hash is the first 8 bytes of
the SHA-256 of the text's UTF-8, read as a big-endian signed integer.
"""

import datetime as dt
import hashlib
import struct
from decimal import Decimal

from django.db import models

from .schema import served_fields, served_m2m_fields

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EPOCH_DATE = dt.date(1970, 1, 1)
MICROSECOND = dt.timedelta(microseconds=1)
NULL = "N;"

# Internal field type -> token kind. A key's kind is that of the pk it points to.
KINDS = {
    "CharField": "text",
    "TextField": "text",
    "SlugField": "text",
    "EmailField": "text",
    "URLField": "text",
    "AutoField": "int",
    "BigAutoField": "int",
    "SmallAutoField": "int",
    "IntegerField": "int",
    "BigIntegerField": "int",
    "SmallIntegerField": "int",
    "PositiveIntegerField": "int",
    "PositiveBigIntegerField": "int",
    "PositiveSmallIntegerField": "int",
    "FloatField": "float",
    "DecimalField": "decimal",
    "BooleanField": "bool",
    "DateField": "date",
    "DateTimeField": "datetime",
    "TimeField": "time",
}
NOT_HASHED = frozenset({"last_modified"})


class UnhashableField(TypeError):
    """A served field of a type the encoding does not define (e.g. JSON)."""


def hashed_fields(model):
    """The served concrete fields that are hashed, in their served order."""
    return [
        f
        for f in served_fields(model)
        if f.name not in NOT_HASHED and not isinstance(f, models.FileField)
    ]


def hashed_m2m_fields(model):
    return served_m2m_fields(model)


def kind_of(field):
    target = field
    while target.is_relation:
        target = target.target_field
    kind = KINDS.get(target.get_internal_type())
    if kind is None:
        raise UnhashableField(
            f"{field.model._meta.label_lower}.{field.name}: the row encoding "
            f"(protocol.rowhash) does not define {target.get_internal_type()}"
        )
    return kind


# --- Python -------------------------------------------------------------------------------


def token(kind, value):
    """The token of one value (see the module's docstring)."""
    if value is None:
        return NULL
    if kind == "text":
        value = str(value)
        return f"S{len(value)}:{value};"
    if kind == "int":
        return f"I{int(value)};"
    if kind == "float":
        return f"F{struct.pack('>d', float(value)).hex()};"
    if kind == "decimal":
        return f"D{decimal_text(value)};"
    if kind == "bool":
        return "B1;" if value else "B0;"
    if kind == "date":
        if isinstance(value, dt.datetime):
            value = value.date()
        return f"d{(value - EPOCH_DATE).days};"
    if kind == "datetime":
        if value.tzinfo is None:  # a naive value is UTC (USE_TZ off: the database's)
            value = value.replace(tzinfo=dt.UTC)
        return f"T{(value - EPOCH) // MICROSECOND};"
    if kind == "time":
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 10**6
        return f"t{micros + value.microsecond};"
    raise UnhashableField(f"no token for kind {kind!r}")


def decimal_text(value):
    """A decimal as PostgreSQL's ``trim_scale(value)::text`` writes it."""
    value = Decimal(value)
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def m2m_token(pks):
    pks = sorted(int(pk) for pk in pks)
    return f"M{len(pks)}:{','.join(map(str, pks))};"


def row_text(model, pk, values, links=None):
    """The encoded row: ``values`` maps each hashed field's name to its value (a key
    as the serving instance's pk), ``links`` each many-to-many field's name to the
    linked pks."""
    links = links or {}
    parts = [token("int", pk)]
    parts += [token(kind_of(f), values.get(f.name)) for f in hashed_fields(model)]
    parts += [m2m_token(links.get(f.name, ())) for f in hashed_m2m_fields(model)]
    return "".join(parts)


def text_hash(text):
    """The 64-bit hash of an encoded row, a signed integer (as PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def row_hash(model, pk, values, links=None):
    return text_hash(row_text(model, pk, values, links))


# --- SQL (PostgreSQL) ------------------------------------------------------------------------


def token_sql(kind, expr):
    """SQL giving the token of the value of ``expr`` (``token`` in SQL)."""
    e = f"({expr})"
    if kind == "text":
        value = f"'S' || length({e}::text)::text || ':' || {e}::text || ';'"
    elif kind == "int":
        value = f"'I' || {e}::text || ';'"
    elif kind == "float":
        value = f"'F' || encode(float8send({e}::float8), 'hex') || ';'"
    elif kind == "decimal":
        value = f"'D' || trim_scale({e}::numeric)::text || ';'"
    elif kind == "bool":
        value = f"CASE WHEN {e} THEN 'B1;' WHEN NOT {e} THEN 'B0;' END"
    elif kind == "date":
        value = f"'d' || ({e}::date - DATE '1970-01-01')::text || ';'"
    elif kind == "datetime":
        value = f"'T' || (extract(epoch FROM {e}) * 1000000)::bigint::text || ';'"
    elif kind == "time":
        value = f"'t' || (extract(epoch FROM {e}::time) * 1000000)::bigint::text || ';'"
    else:
        raise UnhashableField(f"no token for kind {kind!r}")
    # Any NULL operand makes the concatenation NULL: that is the NULL token.
    return f"COALESCE({value}, '{NULL}')"


def m2m_token_sql(keys_query):
    """SQL of the token of the keys that ``keys_query`` (a SELECT of one column, ``k``)
    gives. A NULL key (a link to an object of another origin) is counted but not listed,
    so it never matches."""
    return (
        f"(SELECT 'M' || count(*)::text || ':' || "
        f"COALESCE(string_agg(m.k::text, ',' ORDER BY m.k), '') || ';' "
        f"FROM ({keys_query}) AS m(k))"
    )


def row_text_sql(model, key, column, m2m_keys):
    """SQL of the encoded row of ``model``: ``key`` is the SQL of its pk as served,
    ``column(field)`` the SQL of a hashed field's value (a key: the serving instance's
    pk), ``m2m_keys(field)`` a SELECT of the linked pks of a many-to-many field."""
    parts = [token_sql("int", key)]
    parts += [token_sql(kind_of(f), column(f)) for f in hashed_fields(model)]
    parts += [m2m_token_sql(m2m_keys(f)) for f in hashed_m2m_fields(model)]
    return " || ".join(parts)


def served_hash_sql(model, alias="t", links=None):
    """SQL of the hash of a row of ``model``'s own table, aliased ``alias``, as its
    instance serves it (keys are its own pks); ``links(field)``, if given, may give the
    SELECT of a many-to-many field's linked pks instead of its table's (None: the
    table's). The checksums endpoint (``api.checksums``) and the change capture's
    running checksum (``hcore.checksums``) hash with this one expression."""
    opts = model._meta
    key = f"{alias}.{quote(opts.pk.column)}"

    def column(field):
        return f"{alias}.{quote(field.column)}"

    def m2m_keys(field):
        override = links(field) if links is not None else None
        return override if override is not None else linked_keys_sql(field, key)

    return hash_sql(row_text_sql(model, key, column, m2m_keys))


def linked_keys_sql(field, owner_key):
    """SELECT of the pks that many-to-many ``field`` links to the owner ``owner_key``."""
    through = field.remote_field.through._meta.db_table
    source, target = field.m2m_column_name(), field.m2m_reverse_name()
    return (
        f"SELECT x.{quote(target)} FROM {quote(through)} x WHERE x.{quote(source)} = {owner_key}"
    )


def quote(name):
    """A PostgreSQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def hash_sql(text_sql):
    """SQL of the 64-bit hash of an encoded row (``text_hash`` in SQL)."""
    return (
        f"('x' || encode(substring(sha256(convert_to({text_sql}, 'UTF8')) FROM 1 FOR 8), "
        f"'hex'))::bit(64)::bigint"
    )


# --- key ranges -------------------------------------------------------------------------------


def part_of(key, low, high, parts):
    """Which of ``parts`` equal sub-ranges of [low, high] holds ``key`` (0-based)."""
    return (key - low) * parts // (high - low + 1)


def part_of_sql(key_sql, low, high, parts):
    """``part_of`` in SQL (exact: numeric division, no bigint overflow)."""
    return (
        f"div(({key_sql} - {int(low)})::numeric * {int(parts)}, "
        f"{int(high) - int(low) + 1}::numeric)::integer"
    )


def part_bounds(low, high, parts):
    """[(from, to)] of each of the ``parts`` sub-ranges of [low, high] (inclusive);
    a sub-range may be empty (from > to) when the range is narrower than ``parts``."""
    span = high - low + 1
    starts = [low + -(-i * span // parts) for i in range(parts + 1)]
    return [(starts[i], starts[i + 1] - 1) for i in range(parts)]


def m2m_links(field, pks):
    """{owner pk: [linked pks]} of many-to-many ``field`` for the owners ``pks``, as this
    database holds them: the links the Python hash (SQLite) writes as ``M`` tokens, for
    the serving side and the replica alike."""
    through = field.remote_field.through
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    links = {}
    rows = through._base_manager.filter(**{f"{source}__in": pks}).values_list(source, target)
    for source_pk, target_pk in rows:
        links.setdefault(source_pk, []).append(target_pk)
    return links
