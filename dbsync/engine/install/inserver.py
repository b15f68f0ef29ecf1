"""A first sync's install done by PostgreSQL: the dumps' bytes in, no Python per row.

The install's Python path (``Installer.install_model``) parses every object, checks
and converts every value and maps every key in Python: about 17 µs a row, slower than
a raw ``COPY`` of the same rows (docs/benchmarks.md). When a remote is installed for
the first time, every object is new and every key is in the dumps, so the server can
do it all instead:

1. each model's dump is streamed, bytes nearly as they are, into a table of ``jsonb``
   (one object a row) by a session and a thread of their own (``Stager``): Python only
   finds the lines' ends, checks their length and doubles backslashes for ``COPY``;
2. meanwhile the install's session builds a key map a model (remote pk -> local pk,
   a temporary table) as each dump is in: a root model's objects get their local pks
   from its sequence in the order of their remote pks (so the map is one run of
   keys), a child's are its parent's;
3. and writes each model's rows as soon as the key maps they need are built: one
   ``INSERT ... SELECT`` converts, checks and keys them (foreign keys joined to the
   key maps), then the many-to-many links. The server parses one dump while it
   writes another.

It judges nothing itself. Every value is checked as strictly as ``spec.convert_row``
and ``spec.check_object`` would (type, length, range, format, the keys present,
nesting, the model's label, every reference to an object of the dumps), and
anything else, however harmless (a string for a number, a date in another format, an
object sent twice, a reference the dumps lack, a field a cap could refuse), is a
``Doubt``: the caller rolls this back to its savepoint and installs the same dumps on
the Python path, which gives the error, the skip or the fetch again that it always
gave. So an install's outcome is the same on either path; only its speed differs.

Foreign keys: every reference is joined to the key map of its target's model, which
holds exactly the rows this install writes (a reference with no row there is a doubt),
so the rows go in with their foreign-key triggers off (``KeyChecks.unchecked``, when
it may) and need no check after: the join was it. Nothing outside this remote's new
rows is referred to, so nothing needs the locks ``KeyChecks.check`` takes.
"""

import logging
import os
import re
import threading

from django.conf import settings
from django.db import DatabaseError, connection, models

from hcore.bulk import qn

from ..convert import INT_TYPES
from ..planner import label as label_of

try:  # several times faster than the standard library's json on this path
    from orjson import loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    from json import loads

logger = logging.getLogger(__name__)

BLOCK = 1 << 20
# The deepest a dump object this path takes can nest: the object, its fields, a list
# of many-to-many keys. A lower DBSYNC_MAX_JSON_DEPTH is left to the Python path.
DEPTH = 3
DOUBT_STATE = "DBS01"
DOUBT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION pg_temp.dbsync_doubt(reason text) RETURNS text "
    "LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'doubt: %', reason "
    f"USING ERRCODE = '{DOUBT_STATE}'; END$$"
)
# The server's date and time input takes many forms that Python's parse_date and
# parse_datetime refuse (and the reverse): this path takes only the ISO forms that
# both read alike; any other is left to the Python path.
DATE_RE = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
DATETIME_RE = (
    "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
    ":[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])?$"
)
# jsonb keeps a number's value, not its spelling: 1e2 reads as 100, which Python's
# parser makes a float (refused where an integer belongs). Lines that may spell a
# number with an exponent are read by Python, and those that do, where an integer
# belongs, are doubts.
EXPONENT = re.compile(rb"[0-9][eE][-+]?[0-9]")
DIGITS = bytes.maketrans(b"0123456789E+-", b"0000000000e00")


SQL_TYPES = {
    "key": "bigint",
    "int": "bigint",
    "text": "text",
    "float": "float8",
    "bool": "boolean",
    "date": "date",
    "datetime": "timestamptz",
}
SAFE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)?$")


class Doubt(Exception):
    """Something this path does not judge: the Python path installs the dumps instead."""


def is_doubt(exc):
    """Whether a database error is a doubt raised by this path's SQL."""
    cause = getattr(exc, "__cause__", None) or exc
    return getattr(cause, "sqlstate", None) == DOUBT_STATE


def not_eligible(installer):
    """Why the install of ``installer`` cannot take this path (None: it can)."""
    if connection.vendor != "postgresql":
        return "not PostgreSQL"
    if not settings.DBSYNC_INSTALL_IN_SERVER:
        return "DBSYNC_INSTALL_IN_SERVER is off"
    if installer.skip:
        return "--skip"
    if not installer.references.full_dumps:
        return "an incremental run"
    if settings.DBSYNC_MAX_JSON_DEPTH < DEPTH:
        return "DBSYNC_MAX_JSON_DEPTH below 3"
    if any(installer.keys.loaded.values()):
        return "objects of this remote are installed already"
    for spec in installer.specs.values():
        if len(installer.dumps.paths(spec.label)) > 1:
            return f"{spec.label} has objects asked for again"
        for f, *_rest in spec.columns:
            if column_kind(f) is None:
                return f"{spec.label}.{f.name} is of a type this path does not convert"
    return None


def column_kind(field):
    """How a column's value is converted here (None: not by this path)."""
    if field.is_relation:
        return "key" if column_kind(key_field(field)) == "int" else None
    kind = field.get_internal_type()
    if kind in ("CharField", "TextField", "FileField"):
        return "text"
    if kind in INT_TYPES:
        return "int"
    return {
        "FloatField": "float",
        "BooleanField": "bool",
        "DateField": "date",
        "DateTimeField": "datetime",
    }.get(kind)


def key_field(field):
    """The field a foreign key's values are: the pk it points to, through parent links."""
    while field.is_relation:
        field = field.target_field
    return field


class InServerInstall:
    """Stage, key and insert every model of a first sync; see the module docstring."""

    def __init__(self, installer, on_model=None):
        """``on_model(spec, rows)`` is told of each model's rows as they are written."""
        self.installer = installer
        self.on_model = on_model or (lambda spec, rows: None)
        self.specs = installer.specs
        self.database = installer.database
        self.order = [spec for spec in installer.specs.values()]
        self.index = {spec.label: i for i, spec in enumerate(self.order)}
        self.line_limit = min(settings.DBSYNC_MAX_OBJECT_BYTES, settings.DBSYNC_MAX_JSON_ITEMS)
        self.stager = Stager(self)
        self.inserted = {}  # model label -> rows inserted
        self.user_links = {}  # model label -> objects whose user links are dropped

    def keymap(self, i):
        return f"dbsync_keymap_{i}"

    # --- 1. the dumps into the server --------------------------------------------------

    def stage(self, spec):
        """The table of a model's dump, one object a row (written by the ``Stager``)."""
        return f"dbsync_stage_{self.database.pk}_{self.index[spec.label]}"

    def copy_blocks(self, spec, path):
        """The object lines of a dump in COPY's text format, a block at a time; a Doubt
        for a dump not in the API's line layout or with a line a cap could refuse."""
        limit = self.line_limit
        with open(path, "rb") as fh:
            first = fh.readline(limit + 1)
            if first.strip() != b"[":
                raise Doubt(f"{spec.label}: not in the line layout")
            start = fh.tell()
            end = closing_bracket(fh, start)
            fh.seek(start)
            remaining = end - start
            carry = b""
            while remaining > 0:
                block = fh.read(min(BLOCK, limit, remaining))
                if not block:
                    raise Doubt(f"{spec.label}: the dump changed while read")
                remaining -= len(block)
                data = carry + block
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if len(carry) > limit or data.find(b"\n") + 1 > limit:
                    raise Doubt(f"{spec.label}: a line longer than a cap allows")
                if cut:
                    yield self.copy_text(spec, data[:cut])
            if carry:
                raise Doubt(f"{spec.label}: the last object line has no end")

    def copy_text(self, spec, lines):
        """Complete object lines as COPY text: a backslash doubled (COPY's escape), the
        comma after an object dropped (jsonb takes the object alone)."""
        marked = lines.translate(DIGITS)
        if b"0e0" in marked:
            self.check_exponents(spec, lines)
        return lines.replace(b"\\", b"\\\\").replace(b",\n", b"\n")

    def check_exponents(self, spec, lines):
        """A Doubt if a line spells a number with an exponent where an integer belongs."""
        seen = set()
        for match in EXPONENT.finditer(lines):
            begin = lines.rfind(b"\n", 0, match.start()) + 1
            if begin in seen:
                continue
            seen.add(begin)
            line = lines[begin : lines.find(b"\n", match.end())].strip().rstrip(b",")
            try:
                obj = loads(line)
                fields = obj["fields"]
                values = [obj["pk"]] + [
                    fields.get(f.name)
                    for f, _n, _c, _t, target_root in spec.columns
                    if column_kind(f) == "int" or target_root is not None
                ]
                for f in spec.planned_m2m:
                    links = fields.get(f.name)
                    values += links if isinstance(links, list) else [links]
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise Doubt(f"{spec.label}: a line Python reads otherwise") from exc
            if any(isinstance(value, float) for value in values):
                raise Doubt(f"{spec.label}: an integer spelled with an exponent")

    # --- 2. the key maps ---------------------------------------------------------------

    def build_keymap(self, spec, cursor):
        """Remote pk -> local pk of a model's objects: a root's from its sequence, in the
        order of the remote pks (so that the map is a run of keys); a child's from its
        parent's map (a child whose parent row is not in the dumps is a doubt)."""
        i = self.index[spec.label]
        cursor.execute(
            f"CREATE TEMP TABLE {self.keymap(i)} (remote bigint PRIMARY KEY, "
            f"local bigint NOT NULL) ON COMMIT DROP"
        )
        pk = (
            "CASE WHEN jsonb_typeof(doc->'pk') = 'number' AND (doc->>'pk')::bigint > 0 "
            "THEN (doc->>'pk')::bigint ELSE pg_temp.dbsync_doubt('a pk')::bigint END"
        )
        if spec.is_root:
            table, column = spec.root._meta.db_table, spec.root._meta.pk.column
            cursor.execute(
                f"INSERT INTO {self.keymap(i)} SELECT pk, "
                f"nextval(pg_get_serial_sequence(%s, %s)) FROM ("
                f"SELECT {pk} AS pk FROM {self.stage(spec)} ORDER BY 1) objects",
                [qn(table), column],
            )
            return
        parent = self.index.get(spec.parent_labels[0])
        if parent is None:
            raise Doubt(f"{spec.label}: its parent model is not synced")
        cursor.execute(
            f"INSERT INTO {self.keymap(i)} SELECT s.pk, CASE WHEN p.local IS NULL "
            f"THEN pg_temp.dbsync_doubt('a parent row')::bigint ELSE p.local END FROM "
            f"(SELECT {pk} AS pk FROM {self.stage(spec)}) s "
            f"LEFT JOIN {self.keymap(parent)} p ON p.remote = s.pk"
        )

    def needs(self, spec):
        """The models whose key maps a model's rows are written with."""
        targets = {target for _f, _n, _c, target, _r in spec.columns if target is not None}
        return targets | {label_of(f.related_model) for f in spec.planned_m2m} | {spec.label}

    # --- 3. the rows ---------------------------------------------------------------------

    def insert_rows(self, spec, cursor):
        """One INSERT ... SELECT of a model's rows, every value checked; its row count."""
        i = self.index[spec.label]
        selected, joins, params = [], [], []
        for n, (f, name, _convert, target_label, _target_root) in enumerate(spec.columns):
            expression, expression_params, join = self.column(spec, f, name, target_label, n)
            selected.append(expression)
            params += expression_params
            if join:
                joins.append(join)
        pk = (
            f"CASE WHEN {self.row_checks(spec)} THEN k.local "
            f"ELSE pg_temp.dbsync_doubt('{spec.label}: an object')::bigint END"
        )
        values = [pk, *selected]
        if spec.is_root:
            values += ["k.remote", "%s", "%s"]
            params += [self.database.pk, self.installer.now]
        columns = ", ".join(qn(c) for c in spec.column_names)
        cursor.execute(
            f"INSERT INTO {qn(spec.table)} ({columns}) SELECT {', '.join(values)} FROM "
            f"(SELECT doc, doc->'fields' AS f, (doc->>'pk')::bigint AS pk FROM "
            f"{self.stage(spec)} OFFSET 0) s JOIN {self.keymap(i)} k ON k.remote = s.pk "
            f"{' '.join(joins)}",
            params,
        )
        return cursor.rowcount

    def row_checks(self, spec):
        """SQL true if an object's envelope and field names are what check_object takes
        and no value this path does not read could break a cap (nesting)."""
        read = {f.name for f, *_ in spec.columns} | {f.name for f in spec.planned_m2m}
        accepted = ", ".join(literal(name) for name in sorted(spec.accepted))
        checks = [
            "jsonb_typeof(s.doc) = 'object'",
            f"s.doc->>'model' = {literal(spec.label)}",
            "jsonb_typeof(s.doc->'model') = 'string'",
            "jsonb_typeof(s.f) = 'object'",
            "(s.doc - '{model,pk,fields}'::text[]) = '{}'::jsonb",
            f"(s.f - ARRAY[{accepted}]::text[]) = '{{}}'::jsonb" if accepted else "s.f = '{}'",
        ]
        for name in sorted(spec.accepted - read):
            checks.append(
                f"coalesce(jsonb_typeof(s.f->{literal(name)}) NOT IN ('object', 'array'), true)"
            )
        return " AND ".join(checks)

    def column(self, spec, f, name, target_label, n):
        """(SQL value of a column, its parameters, a JOIN it needs or None), every value
        checked as ``convert_row`` checks it; anything else a doubt.

        The common case is tested first, with as few look-ups as may be: this runs for
        every value of a first sync. A column's own type does part of the checking: an
        integer out of its range, or text that is no integer, fails the statement (and
        so is a doubt too)."""
        key = literal(name)
        value, text = f"s.f->{key}", f"(s.f->>{key})"
        kind = column_kind(f)
        doubt = f"pg_temp.dbsync_doubt('{spec.label}.{name}')::{SQL_TYPES[kind]}"
        default = f.get_default()
        missing, params = ("NULL", []) if default is None else ("%s", [default])
        # A value of null, or none at all (then the field's default, as convert_row does).
        absent = (
            f"WHEN NOT s.f ? {key} THEN {missing} "
            f"WHEN jsonb_typeof({value}) = 'null' THEN {'NULL' if f.null else doubt}"
        )
        join = None
        if f.is_relation and target_label is None:
            # A key to a model not synced (a user account, an excluded model): dropped.
            sql = f"CASE {absent} ELSE {'NULL' if f.null else doubt} END"
        elif kind == "key":
            # Through the key map of the target's model: only an object of the dumps has
            # a row there, and a key PostgreSQL reads as a bigint is one Python reads as
            # an integer (the pks are bigints, so no range is narrower).
            target = self.keymap(self.index[target_label])
            join = f"LEFT JOIN {target} j{n} ON j{n}.remote = {text}::bigint"
            sql = f"CASE WHEN j{n}.local IS NOT NULL THEN j{n}.local {absent} ELSE {doubt} END"
        elif kind == "int":
            # Text that is an integer is one for Python's int() too.
            sql = f"CASE WHEN {text} IS NOT NULL THEN {text}::bigint {absent} ELSE {doubt} END"
        elif kind == "text":
            kept = "''" if isinstance(f, models.FileField) else text
            fits = "true"
            if f.max_length:  # not left to varchar(n): it would cut trailing spaces
                n = f.max_length
                fits = f"(octet_length({text}) <= {n} OR char_length({text}) <= {n})"
            sql = (
                f"CASE WHEN jsonb_typeof({value}) = 'string' AND {fits} THEN {kept} "
                f"{absent} ELSE {doubt} END"
            )
        elif kind == "float":
            sql = (
                f"CASE WHEN jsonb_typeof({value}) = 'number' THEN {text}::float8 "
                f"{absent} ELSE {doubt} END"
            )
        elif kind == "bool":
            sql = (
                f"CASE WHEN jsonb_typeof({value}) = 'boolean' THEN {text}::boolean "
                f"{absent} ELSE {doubt} END"
            )
        else:  # a date, or a date and time
            pattern, cast = (DATE_RE, "date") if kind == "date" else (DATETIME_RE, "timestamptz")
            sql = (
                f"CASE WHEN jsonb_typeof({value}) = 'string' AND {text} ~ '{pattern}' AND "
                f"{text} NOT LIKE '0000%%' THEN {text}::{cast} {absent} ELSE {doubt} END"
            )
        return sql, params, join

    def insert_links(self, spec, f, cursor):
        """The many-to-many links of a model's new rows; each list checked as
        ``References.valid_keys`` checks it, each key joined to its target's key map."""
        i = self.index[spec.label]
        target = self.keymap(self.index[label_of(f.related_model)])
        through = f.remote_field.through._meta
        key = literal(f.name)
        doubt = f"pg_temp.dbsync_doubt('{spec.label}.{f.name}')::bigint"
        limit = settings.DBSYNC_MAX_LINKS_PER_OBJECT
        cursor.execute(
            f"INSERT INTO {qn(through.db_table)} ({qn(f.m2m_column_name())}, "
            f"{qn(f.m2m_reverse_name())}) SELECT DISTINCT k.local, "
            f"coalesce(t.local, {doubt}) FROM ("
            f"  SELECT (s.doc->>'pk')::bigint AS pk, CASE WHEN jsonb_typeof(e) = 'number' "
            f"  AND (e #>> '{{}}')::bigint > 0 "
            f"  THEN (e #>> '{{}}')::bigint ELSE {doubt} END AS remote "
            f"  FROM {self.stage(spec)} s, jsonb_array_elements(CASE "
            f"  WHEN NOT s.doc->'fields' ? {key} THEN '[]'::jsonb "
            f"  WHEN jsonb_typeof(s.doc->'fields'->{key}) = 'array' AND "
            f"  jsonb_array_length(s.doc->'fields'->{key}) <= {limit} "
            f"  THEN s.doc->'fields'->{key} ELSE to_jsonb({doubt}) END) e"
            f") l JOIN {self.keymap(i)} k ON k.remote = l.pk "
            f"LEFT JOIN {target} t ON t.remote = l.remote"
        )

    # --- the whole ---------------------------------------------------------------------

    def run(self):
        """Install every model; return {model label: rows inserted}. Raises Doubt (or
        a database error) for anything this path does not judge: the caller's savepoint
        then rolls back whatever it did, and calls ``close``.

        The dumps are staged by another session (``Stager``) while this one builds the
        key maps and writes each model's rows as soon as the key maps they need are
        built: the server parses the next dump while it writes the last."""
        self.stager.start()
        try:
            with connection.cursor() as cursor:
                cursor.execute(DOUBT_FUNCTION)
                # The statements look costly to the planner (many expressions a row) and
                # run once: compiling them (JIT) would cost more than it saves.
                cursor.execute("SET LOCAL jit = off")
                pending, built = list(self.order), set()
                for spec in self.order:
                    self.stager.wait(spec)
                    self.build_keymap(spec, cursor)
                    built.add(spec.label)
                    for ready in [other for other in pending if self.needs(other) <= built]:
                        pending.remove(ready)
                        self.insert_model(ready, cursor)
                for spec in self.order:  # at the COMMIT, if this transaction gets there
                    cursor.execute(f"DROP TABLE {self.stage(spec)}")
        finally:
            self.stager.stop()
        return self.inserted

    def insert_model(self, spec, cursor):
        with self.installer.key_checks.unchecked(spec):
            self.inserted[spec.label] = self.insert_rows(spec, cursor)
        self.on_model(spec, self.inserted[spec.label])
        for f in spec.planned_m2m:
            self.insert_links(spec, f, cursor)
        if spec.user_fields:
            cursor.execute(
                f"SELECT count(*) FROM {self.stage(spec)} WHERE doc->'fields' ?| %s",
                [sorted(spec.user_fields)],
            )
            self.user_links[spec.label] = cursor.fetchone()[0]

    def close(self, kept):
        """After the savepoint: unless this path's work was ``kept`` (its own DROPs with
        it), the staged dumps are dropped by the stager's session; then it is closed."""
        self.stager.close(drop=not kept)


class Stager:
    """The dumps streamed into the server by a session and a thread of their own.

    Unlogged tables (a temporary table is seen by its session alone), committed as
    each is written, so that the install's session reads a model's dump while the
    next one is parsed. Named after the remote (``dbsync_stage_<remote pk>_<n>``; one
    install of a remote at a time, under its lock): the install drops them in its
    transaction; if that rolls back later, the next install of the remote drops them
    before it writes them again.
    """

    def __init__(self, server):
        self.server = server
        self.ready = {spec.label: threading.Event() for spec in server.order}
        self.error = None
        self.stopping = False
        self.thread = threading.Thread(target=self.work, name="dbsync-stager", daemon=True)
        self.session = None

    def start(self):
        self.session = connection.get_new_connection(connection.get_connection_params())
        self.session.autocommit = True
        self.thread.start()

    def work(self):
        try:
            for spec in self.server.order:
                self.write(spec)
                self.ready[spec.label].set()
        except BaseException as exc:  # noqa: BLE001 - handed to the install's thread
            self.error = exc
        finally:
            for event in self.ready.values():
                event.set()

    def write(self, spec):
        table = self.server.stage(spec)
        with self.session.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE UNLOGGED TABLE {table} (doc jsonb)")
            for path in self.server.installer.dumps.paths(spec.label):
                with cursor.copy(f"COPY {table} (doc) FROM STDIN (DELIMITER E'\\x01')") as copy:
                    for block in self.server.copy_blocks(spec, path):
                        if self.stopping:
                            raise Doubt("stopped")
                        copy.write(block)

    def wait(self, spec):
        """Wait until a model's dump is in its table; a Doubt if it could not be."""
        self.ready[spec.label].wait()
        if self.error is not None:
            if isinstance(self.error, Doubt):
                raise self.error
            reason = " ".join(str(self.error).split())[:300]
            raise Doubt(f"{spec.label}: staging failed ({reason})") from self.error

    def stop(self):
        self.stopping = True
        if self.thread.is_alive():
            self.thread.join()

    def close(self, drop):
        if self.session is None:
            return
        try:
            if drop:
                with self.session.cursor() as cursor:
                    for spec in self.server.order:
                        cursor.execute(f"DROP TABLE IF EXISTS {self.server.stage(spec)}")
        except connection.Database.Error as exc:  # the server gone: the next run drops them
            logger.warning("Could not drop the staged dumps: %s", exc)
        finally:
            self.session.close()


def drop_staged(database):
    """Drop what staged dumps of ``database`` are left, after the install's transaction.

    The stager's session commits its tables; the install's transaction drops them, so a
    rollback (``--dry-run``, an error after this path kept its work, a killed process)
    leaves them, unlogged copies of every dump taking disk. Called when that transaction
    has ended either way, under the remote's lock (no other run of it stages now)."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return  # inside a caller's transaction (a test's): its end decides
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = current_schema() AND tablename LIKE %s",
                [f"dbsync\\_stage\\_{database.pk}\\_%"],
            )
            for (table,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
    except (DatabaseError, connection.Database.Error) as exc:  # the next run drops them
        logger.warning("Could not drop the staged dumps of %s: %s", database, exc)


def literal(name):
    """A field name or model label as an SQL string literal (they are identifiers)."""
    if not SAFE.match(name):
        raise Doubt(f"a name this path does not quote: {name[:100]!r}")
    return f"'{name}'"


def closing_bracket(fh, start):
    """The offset of the line ``]`` that ends a dump (only blank lines after it)."""
    size = os.fstat(fh.fileno()).st_size
    tail_start = max(start, size - 4096)
    fh.seek(tail_start)
    tail = fh.read().rstrip()
    if not tail.endswith(b"]"):
        raise Doubt("no closing bracket")
    line_start = tail.rfind(b"\n") + 1
    if tail[line_start:].strip() != b"]" or (line_start == 0 and tail_start != start):
        raise Doubt("no closing bracket on a line of its own")
    return tail_start + line_start
