"""The fast, streaming serializer: a model's objects as ``dumpdata`` writes them.

Each object is the dictionary Django's serializer makes
(``{"model": ..., "pk": ..., "fields": {...}}``, restricted to the served fields),
encoded with Django's own :class:`DjangoJSONEncoder`, but built from
``values_list`` rows instead of model instances: serializing instance by instance
is several times slower and a whole table never fits in memory anyway.

The body is laid out one object per line, so a reader can parse it line by line and
tell a complete dump (its last line is ``]``) from a truncated one::

    [
    {"model": "hcore.eventtype", "pk": 1, "fields": {...}},
    {"model": "hcore.eventtype", "pk": 2, "fields": {...}}
    ]

The table is read in keyset chunks ordered by primary key, each chunk's
many-to-many links with one more query, so memory stays flat at any table size.
"""

import datetime as dt
import json.encoder
import logging
from collections import defaultdict

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import Field
from django.db.models.base import ModelState
from django.utils.encoding import is_protected_type

from protocol.schema import served_fields, served_m2m_fields

from .changes import deleted_keys, filter_changed_since

logger = logging.getLogger(__name__)

# Rows per query: big enough to amortize the round trip, small enough to stay flat.
CHUNK_SIZE = 2_000
KEYS_CHUNK_SIZE = 20_000
PG_KEYS_CHUNK_SIZE = 100_000


def reusable_encode(encoder):
    """``encoder.encode`` for dicts, twice as fast.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs as much
    as the encoding of a small object; this builds it once. It is checked against
    ``encoder.encode`` and not used if the two ever disagree (or without C json).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    if encoder.ensure_ascii:
        strings = json.encoder.encode_basestring_ascii
    else:
        strings = json.encoder.encode_basestring
    try:
        c_encode = make(
            None,  # no check for circular references: rows hold plain values
            encoder.default,
            strings,
            None,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # another Python's signature
        return encoder.encode

    def encode(obj):
        return "".join(c_encode(obj, 0))

    sample = {"a": [1, 2.5, None, True], "é\n": dt.datetime(2001, 2, 3, 4, 5, 6, 7890, dt.UTC)}
    try:
        same = encode(sample) == encoder.encode(sample)
    except (TypeError, ValueError):
        same = False
    return encode if same else encoder.encode


# As Django's JSON serializer: DjangoJSONEncoder, non-ASCII text kept as UTF-8.
OBJECT_ENCODER = DjangoJSONEncoder(ensure_ascii=False)
encode_object = reusable_encode(OBJECT_ENCODER)
KEYS_ENCODER = DjangoJSONEncoder(separators=(",", ":"))

# Internal types whose database values are str or types that Django's serializer
# passes through unchanged (numbers, dates, times, None): no conversion needed.
PASS_THROUGH_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
        "FloatField",
        "DecimalField",
        "BooleanField",
        "CharField",
        "TextField",
        "SlugField",
        "DateField",
        "DateTimeField",
        "TimeField",
    }
)


class ModelDumper:
    """Turns ``values_list`` rows of one model into encoded dump objects."""

    def __init__(self, model):
        self.label = model._meta.label_lower
        fields = served_fields(model)
        self.names = [field.name for field in fields]
        # The pk comes last, so ``zip(self.names, row)`` leaves it out for free.
        self.columns = [field.attname for field in fields] + ["pk"]
        self.converters = [
            (index, value_converter(model, field))
            for index, field in enumerate(fields)
            if needs_conversion(field)
        ]
        self.m2m_fields = served_m2m_fields(model)

    def encode_rows(self, rows):
        """The JSON text of each row's object, in order.

        Written as ``{"model": ..., "pk": ..., "fields": ...}`` around the encoded
        fields, to the letter what encoding the whole dictionary would give.
        """
        links = [
            (field.name, m2m_links(field, [row[-1] for row in rows])) for field in self.m2m_fields
        ]
        head = '{"model": ' + OBJECT_ENCODER.encode(self.label) + ', "pk": '
        names, converters, encode = self.names, self.converters, encode_object
        lines = []
        for row in rows:
            if converters:
                row = list(row)
                for index, convert in converters:
                    row[index] = convert(row[index])
            pk = row[-1]
            fields = dict(zip(names, row, strict=False))
            for name, by_pk in links:
                fields[name] = by_pk.get(pk, [])
            pk_text = str(pk) if type(pk) is int else OBJECT_ENCODER.encode(pk)
            lines.append(f'{head}{pk_text}, "fields": {encode(fields)}}}')
        return lines


def needs_conversion(field):
    if type(field).value_from_object is not Field.value_from_object:
        return True
    target = field
    while target.is_relation:  # a key's values are those of the pk it points to
        target = target.target_field
    return target.get_internal_type() not in PASS_THROUGH_TYPES


def value_converter(model, field):
    """A function giving a database value as Django's serializer would (slow path).

    For fields like FileField whose instance attribute differs from the database
    value: put the value on a bare instance and ask the field, as Django does.
    """

    def convert(value):
        obj = model.__new__(model)
        obj._state = ModelState()
        obj.__dict__[field.attname] = value
        value = field.value_from_object(obj)
        return value if is_protected_type(value) else field.value_to_string(obj)

    return convert


def m2m_links(field, pks):
    """``{pk: [linked pks, ascending]}`` for the objects ``pks``, in one query."""
    through = field.remote_field.through
    source, target = field.m2m_field_name(), field.m2m_reverse_field_name()
    rows = (
        through._base_manager.filter(**{f"{source}__in": pks})
        .order_by(source, target)
        .values_list(source, target)
    )
    links = defaultdict(list)
    for source_pk, target_pk in rows:
        links[source_pk].append(target_pk)
    return links


def select(model, modified_after=None, pks=None, changed_since=None):
    """The objects of a dump request, unordered (the chunks order them)."""
    queryset = model._base_manager.all()
    if changed_since is not None:
        # The model's own table: a child's dump serves its own fields only.
        queryset = filter_changed_since(queryset, model, changed_since)
    if modified_after is not None:
        # For a multi-table child this is its root's ``last_modified`` (a join).
        queryset = queryset.filter(last_modified__gt=modified_after)
    if pks is not None:
        queryset = queryset.filter(pk__in=pks)
    return queryset


def key_text_chunks(queryset, chunk_size):
    """(keys as "1,2,3", how many) by ascending pk: PostgreSQL writes the text, 20
    times faster than Python would (a keys listing is read at every incremental run)."""
    last = None
    while True:
        page = queryset if last is None else queryset.filter(pk__gt=last)
        page = page.order_by("pk").values_list("pk")[:chunk_size]
        try:
            sql, params = page.query.get_compiler(queryset.db).as_sql()
        except EmptyResultSet:
            return
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(
                f"SELECT string_agg(k::text, ',' ORDER BY k), max(k), count(*) "
                f"FROM ({sql}) AS page(k)",
                params,
            )
            keys, last, count = cursor.fetchone()
        if count:
            yield keys, count
        if count < chunk_size:
            return


def keyset_chunks(queryset, columns, chunk_size, after=None, limit=None):
    """Rows of ``queryset`` by ascending pk (the last column), a chunk per query."""
    last, remaining = after, limit
    while remaining is None or remaining > 0:
        size = chunk_size if remaining is None else min(chunk_size, remaining)
        page = queryset if last is None else queryset.filter(pk__gt=last)
        rows = fetch(page.order_by("pk").values_list(*columns)[:size])
        if rows:
            yield rows
        if len(rows) < size:
            return
        last = rows[-1][-1]
        if remaining is not None:
            remaining -= len(rows)


def fetch(queryset):
    """The rows of a ``values_list`` queryset, exactly as iterating it gives them.

    On PostgreSQL the timestamps are parsed by psycopg's C loader: Django's loader,
    a Python subclass of it, takes most of a dump's time. The values are the same
    (aware, UTC) as Django's, and Django's own converters are applied after.
    """
    loader = fast_timestamptz_loader(queryset.db)
    if loader is None:
        return list(queryset)
    compiler = queryset.query.get_compiler(queryset.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return []
    with connections[queryset.db].cursor() as cursor:
        cursor.cursor.adapters.register_loader("timestamptz", loader)
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if compiler.has_extra_select:
        rows = [row[: compiler.col_count] for row in rows]
    return list(compiler.results_iter(results=[rows], tuple_expected=True))


def fast_timestamptz_loader(alias):
    """psycopg's C timestamptz loader, where it gives what Django's would; or None."""
    connection = connections[alias]
    if connection.vendor != "postgresql" or not settings.USE_TZ:
        return None
    # Django's loader sets the connection's zone; psycopg's gives the session's,
    # which Django sets to the same name: equal values, if the zone is UTC.
    if connection.timezone_name != "UTC":
        return None
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:  # psycopg2's loaders are C already
        return None
    from psycopg import adapters, postgres, pq

    return adapters.get_loader(postgres.types["timestamptz"].oid, pq.Format.TEXT)


def stream_dump(model, query):
    """The body of a dump, as chunks of bytes (see the module's docstring)."""
    dumper = ModelDumper(model)
    queryset = select(model, query.modified_after, query.pks, query.changed_since)
    chunks = keyset_chunks(
        queryset, dumper.columns, CHUNK_SIZE, after=query.after, limit=query.limit
    )
    yield b"[\n"
    separator, count = "", 0
    try:
        for rows in chunks:
            yield (separator + ",\n".join(dumper.encode_rows(rows))).encode()
            separator = ",\n"
            count += len(rows)
    except Exception:
        # The closing bracket is never sent, so the reader sees a truncated dump.
        logger.exception("Dump of %s failed after %d objects", dumper.label, count)
        raise
    yield b"\n]\n" if count else b"]\n"


def stream_keys(model, deleted_since=None):
    """All primary keys of a model, ascending, as a JSON array in chunks of bytes; or,
    given ``deleted_since``, the keys deleted since that transaction (tombstones)."""
    label = model._meta.label_lower
    queryset = model._base_manager.all()
    if deleted_since is not None:
        chunks = deleted_keys(model, deleted_since)
    elif connections[queryset.db].vendor == "postgresql":
        chunks = key_text_chunks(queryset, PG_KEYS_CHUNK_SIZE)
    else:
        chunks = (
            (KEYS_ENCODER.encode([row[0] for row in rows])[1:-1], len(rows))
            for rows in keyset_chunks(queryset, ["pk"], KEYS_CHUNK_SIZE)
        )
    yield b"["
    separator, count = "", 0
    try:
        for keys, n in chunks:
            yield (separator + keys).encode()
            separator = ",\n"
            count += n
    except Exception:
        logger.exception("Key listing of %s failed after %d keys", label, count)
        raise
    yield b"]\n"
