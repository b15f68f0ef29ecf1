"""The replica's side of a verification: its rows of one remote, hashed as the remote
hashes its own (``protocol.rowhash``), from the columns as they are now.

Keys are mapped back to the remote's pks through ``original_id``: the row's own (on its
root's row, for a multi-table child), and each foreign key's and many-to-many link's
target's. A key to an object of another origin (or a local one) cannot be the
remote's: it is encoded so that it never matches. PostgreSQL computes it all in one
statement a range; SQLite in Python.
"""

from django.db import connection

from protocol.formats import format_checksum
from protocol.rowhash import (
    hash_sql,
    hashed_fields,
    hashed_m2m_fields,
    m2m_links,
    part_of,
    part_of_sql,
    row_hash,
    row_text_sql,
)

from ..planner import root_of

CHUNK = 2_000


def qn(name):
    return connection.ops.quote_name(name)


class LocalRows:
    """The rows of ``model`` replicated from ``database``, by remote pk."""

    def __init__(self, database, model):
        self.database = database
        self.model = model
        self.root = root_of(model)

    # --- PostgreSQL ----------------------------------------------------------------------

    def sql(self):
        """(FROM ... WHERE clause, key SQL, hash SQL) of this remote's rows."""
        opts, root = self.model._meta, self.root._meta
        db = int(self.database.pk)
        pk = f"t.{qn(opts.pk.column)}"
        source = f"{qn(opts.db_table)} t"
        if self.root is not self.model:
            source += f" JOIN {qn(root.db_table)} r ON r.{qn(root.pk.column)} = {pk}"
            owner = "r"
        else:
            owner = "t"
        joins = []

        def column(field):
            if not field.is_relation:
                return f"t.{qn(field.column)}"
            target = root_of(field.related_model)._meta
            alias = f"j{len(joins)}"
            joins.append(
                f" LEFT JOIN {qn(target.db_table)} {alias} ON {alias}.{qn(target.pk.column)} "
                f"= t.{qn(field.column)} AND {alias}.original_db_id = {db}"
            )
            # A key to another origin's object: 'L<local pk>', which no remote writes.
            value = f"t.{qn(field.column)}"
            return (
                f"CASE WHEN {value} IS NULL THEN NULL "
                f"ELSE COALESCE({alias}.original_id::text, 'L' || {value}::text) END"
            )

        def m2m_keys(field):
            through = field.remote_field.through._meta.db_table
            source_column, target_column = field.m2m_column_name(), field.m2m_reverse_name()
            target = root_of(field.related_model)._meta
            return (
                f"SELECT jt.original_id FROM {qn(through)} x LEFT JOIN {qn(target.db_table)} jt "
                f"ON jt.{qn(target.pk.column)} = x.{qn(target_column)} "
                f"AND jt.original_db_id = {db} WHERE x.{qn(source_column)} = {pk}"
            )

        key = f"{owner}.original_id"
        text = row_text_sql(self.model, key, column, m2m_keys)
        where = f" WHERE {owner}.original_db_id = {db}"
        return source + "".join(joins) + where, key, hash_sql(text)

    # --- both ------------------------------------------------------------------------------

    def checksums(self, low, high, parts):
        """{part: (count, checksum, min, max)} of the non-empty parts of [low, high]
        (``protocol.rowhash.part_bounds``)."""
        if connection.vendor == "postgresql":
            source, key, row_hash_sql = self.sql()
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {part_of_sql('s.k', low, high, parts)} AS part, count(*), "
                    f"sum(s.h), min(s.k), max(s.k) FROM (SELECT {key} AS k, {row_hash_sql} AS h "
                    f"FROM {source} AND {key} BETWEEN %s AND %s) s GROUP BY part",
                    [low, high],
                )
                return {
                    part: (count, format_checksum(total), first, last)
                    for part, count, total, first, last in cursor.fetchall()
                }
        totals = {}
        for pk, hash_ in self.python_hashes(low, high):
            entry = totals.setdefault(part_of(pk, low, high, parts), [0, 0, pk, pk])
            entry[0] += 1
            entry[1] += hash_
            entry[3] = pk
        return {
            part: (count, format_checksum(total), first, last)
            for part, (count, total, first, last) in totals.items()
        }

    def hashes(self, low=None, high=None, pks=None):
        """{remote pk: hash (16 hex digits)} of the rows of [low, high], or of ``pks``."""
        if pks is not None:
            low, high = min(pks), max(pks)
        if connection.vendor == "postgresql":
            source, key, row_hash_sql = self.sql()
            where, params = f"{key} BETWEEN %s AND %s", [low, high]
            if pks is not None:
                where, params = f"{key} = ANY(%s)", [list(pks)]
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {key}, {row_hash_sql} FROM {source} AND {where}", params)
                return {pk: format_checksum(h) for pk, h in cursor.fetchall()}
        found = {pk: format_checksum(h) for pk, h in self.python_hashes(low, high)}
        if pks is not None:
            found = {pk: h for pk, h in found.items() if pk in set(pks)}
        return found

    # --- SQLite --------------------------------------------------------------------------

    def python_hashes(self, low, high):
        """(remote pk, hash) of [low, high], hashed in Python."""
        fields = hashed_fields(self.model)
        m2m = hashed_m2m_fields(self.model)
        remote_of = {}  # target root -> {local pk: remote pk}

        def remote_pk(target, local):
            target = root_of(target)
            if target not in remote_of:
                rows = target._base_manager.filter(original_db=self.database).values_list(
                    "pk", "original_id"
                )
                remote_of[target] = dict(rows)
            # Another origin's object: a value no remote writes (never matches).
            return remote_of[target].get(local, f"L{local}")

        queryset = self.model._base_manager.filter(
            original_db=self.database, original_id__gte=low, original_id__lte=high
        ).order_by("pk")
        columns = ["pk", "original_id", *(f.attname for f in fields)]
        for start in range(0, queryset.count(), CHUNK):
            rows = list(queryset.values_list(*columns)[start : start + CHUNK])
            pks = [row[0] for row in rows]
            links = {f.name: m2m_links(f, pks) for f in m2m}
            for row in rows:
                values = {}
                for f, value in zip(fields, row[2:], strict=False):
                    if f.is_relation and value is not None:
                        value = remote_pk(f.related_model, value)
                    values[f.name] = value
                row_links = {
                    f.name: [remote_pk(f.related_model, k) for k in links[f.name].get(row[0], ())]
                    for f in m2m
                }
                yield row[1], python_row_hash(self.model, row[1], values, row_links)


def python_row_hash(model, pk, values, links):
    """``row_hash``, but a key of another origin (``L<pk>``) never matches the remote's."""
    if any(isinstance(v, str) and v.startswith("L") for v in values_of_keys(model, values)) or any(
        isinstance(k, str) for keys in links.values() for k in keys
    ):
        return row_hash(model, pk, {}, {}) ^ 1
    return row_hash(model, pk, values, links)


def values_of_keys(model, values):
    return [values.get(f.name) for f in hashed_fields(model) if f.is_relation]
