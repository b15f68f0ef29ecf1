"""The install: dumps on disk -> the local database, in the caller's transaction.

1. The key map ``(this remote, model, remote pk) -> local pk`` is read from the
   local tables; objects seen for the first time get their local pk allocated up
   front, so that every foreign key (forward references and cycles included) is
   written with its final value in one pass. No dummy objects.
2. Every reference is checked before anything is written: a key to an object the
   remote did not send is first re-fetched (the remote may have changed between two
   model fetches); only a reference that still dangles is an error.
3. Each model's rows are staged (COPY on PostgreSQL) and merged with one
   ``INSERT ... ON CONFLICT (pk) DO UPDATE ... WHERE <something changed>``, so rows
   that did not change are not touched.
4. Many-to-many links of the synced objects are replaced in bulk.
5. Objects the remote no longer has are deleted, under a guard.

Only rows whose key map says they came from this remote are ever updated or
deleted: the payload's own ``original_db``/``original_id`` are ignored.
"""

import logging
import math
from collections import defaultdict

from django.conf import settings
from django.db import connection
from django.db.models.deletion import Collector
from django.utils import timezone

from api.schema import BOOKKEEPING_FIELDS, served_fields, served_m2m_fields

from .convert import converter_for
from .dumps import iter_objects
from .errors import DeleteGuardError, ObjectError, PayloadError, SchemaMismatch
from .planner import label, root_of

logger = logging.getLogger(__name__)

MISSING = object()
MAX_REFETCH_ROUNDS = 3
MAX_LISTED_PROBLEMS = 20
SQLITE_CHUNK = 500


def qn(name):
    return connection.ops.quote_name(name)


class ModelSpec:
    """How one model's dump maps onto its table."""

    def __init__(self, model, plan):
        self.model = model
        self.label = label(model)
        self.root = root_of(model)
        self.root_label = label(self.root)
        self.is_root = self.root is model
        self.table = model._meta.db_table
        self.pk_column = model._meta.pk.column
        # last_modified is ours: set when the local copy changes, so that this
        # instance's own API serves correct incremental dumps.
        self.fields = [f for f in served_fields(model) if f.name != "last_modified"]
        self.m2m = served_m2m_fields(model)
        planned = set(plan.models)
        # name -> (column, converter, target root label or None, planned target?)
        self.columns = []
        for f in self.fields:
            target = f.related_model if f.is_relation else None
            self.columns.append(
                (
                    f,
                    converter_for(f.target_field if target else f),
                    label(root_of(target)) if target else None,
                    target in planned if target else None,
                )
            )
        self.known = {f.name for f in served_fields(model)} | {f.name for f in self.m2m}
        # Fields a dumpdata file has that we deliberately ignore: the remote's own
        # bookkeeping and its keys to user accounts.
        local = {f.name for f in model._meta.local_fields} | {
            f.name for f in model._meta.local_many_to_many
        }
        self.ignored = (local - self.known) | (BOOKKEEPING_FIELDS & local)
        self.user_fields = {
            f.name
            for f in list(model._meta.local_fields) + list(model._meta.local_many_to_many)
            if f.is_relation and f.related_model._meta.app_label == "auth"
        }
        self.parent_labels = [label(p) for p in model._meta.get_parent_list()]

    @property
    def column_names(self):
        names = [self.pk_column] + [f.column for f, *_ in self.columns]
        if self.is_root:
            names += ["original_id", "original_db_id", "last_modified"]
        return names

    @property
    def compared_columns(self):
        return [f.column for f, *_ in self.columns]


class Installer:
    def __init__(
        self,
        database,
        plan,
        files,
        result,
        *,
        remote_keys=None,
        skip=False,
        max_delete="50%",
        refetch=None,
        log=None,
    ):
        """``files``: model label -> list of dump paths; ``remote_keys``: root label ->
        set of remote pks (None: no deletions); ``refetch(model_label, pks)`` returns
        {model label: [paths]} of re-fetched objects."""
        self.database = database
        self.plan = plan
        # "present": the dumps are complete, so what they hold is all the remote has.
        self.full_dumps = remote_keys == "present"
        if self.full_dumps:
            remote_keys = None
        self.files = {lbl: list(paths) for lbl, paths in files.items()}
        self.result = result
        self.remote_keys = remote_keys
        self.skip = skip
        self.max_delete = max_delete
        self.refetch = refetch
        self.log = log or (lambda message, level=1: None)
        self.specs = {label(m): ModelSpec(m, plan) for m in plan.models}
        self.vendor = connection.vendor
        self.now = timezone.now()
        self.keymap = {}  # root label -> {remote pk: local pk}
        self.existing = {}  # root label -> set of remote pks installed before this run
        self.present = defaultdict(set)  # model label -> remote pks in this run's dumps
        self.refs = defaultdict(set)  # model label -> remote pks referenced
        self.bad = set()  # (root label, remote pk) of objects skipped
        self.obj_refs = {}  # only with skip: (root label, pk) -> [(root label, pk)]
        self.new = defaultdict(set)  # root label -> local pks allocated in this run

    # --- the whole install ---------------------------------------------------------

    def run(self):
        self.load_keymaps()
        for spec in self.specs.values():
            self.scan_model(spec, self.files.get(spec.label, []))
        self.resolve_references()
        if self.full_dumps:
            self.remote_keys = {label(root): set() for root in self.plan.roots}
            for spec in self.specs.values():
                self.remote_keys[spec.root_label] |= self.present[spec.label]
        self.allocate()
        for model in self.plan.models:
            spec = self.specs[label(model)]
            paths = self.files.get(spec.label, [])
            if paths:
                self.log(f"Installing fixtures from file {spec.label}.json", 1)
                self.result.files += 1
            self.install_model(spec, paths)
        self.log("Re-linking foreign keys and many-to-many relations: done", 1)
        if self.remote_keys is not None:
            self.delete_missing()
        return self.result

    # --- 1. key map ------------------------------------------------------------------

    def load_keymaps(self):
        with connection.cursor() as cursor:
            for root in self.plan.roots:
                cursor.execute(
                    f"SELECT original_id, {qn(root._meta.pk.column)} FROM "
                    f"{qn(root._meta.db_table)} WHERE original_db_id = %s",
                    [self.database.pk],
                )
                mapping = dict(cursor.fetchall())
                self.keymap[label(root)] = mapping
                self.existing[label(root)] = set(mapping)

    # --- 2. scan and check references --------------------------------------------------

    def scan_model(self, spec, paths):
        for path in paths:
            try:
                for obj in iter_objects(path):
                    self.scan_object(spec, obj)
            except PayloadError as exc:
                if str(exc).startswith(str(self.database)):
                    raise
                raise PayloadError(f"{self.database}: {exc}") from exc

    def scan_object(self, spec, obj):
        if obj["model"].lower() != spec.label:
            raise PayloadError(
                f"the {spec.label} dump from {self.database} contains an object of "
                f"{obj['model'][:100]!r} (pk={obj['pk']}); only {spec.label} belongs there"
            )
        pk, fields = obj["pk"], obj["fields"]
        unknown = set(fields) - spec.known - spec.ignored
        if unknown:
            raise SchemaMismatch(
                f"{spec.label}(pk={pk}) from {self.database} has field(s) "
                f"{', '.join(sorted(repr(u[:100]) for u in unknown))} that the local model "
                f"does not have; the remote runs a different schema"
            )
        self.present[spec.label].add(pk)
        own_refs = [] if self.skip else None
        for parent in spec.parent_labels:
            self.refs[parent].add(pk)
        for f, _conv, target_root, planned in spec.columns:
            if target_root is None or not planned:
                continue
            value = fields.get(f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                self.object_problem(spec, pk, f"{f.name}: expected a key, got {value!r:.60}")
                continue
            self.refs[label(f.related_model)].add(value)
            if own_refs is not None:
                own_refs.append((label(f.related_model), target_root, value))
        for f in spec.m2m:
            values = fields.get(f.name, [])
            if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                self.object_problem(spec, pk, f"{f.name}: expected a list of keys")
                continue
            if f.related_model in self.plan.models:
                self.refs[label(f.related_model)].update(values)
        if own_refs:
            self.obj_refs[(spec.root_label, pk)] = own_refs
        if self.skip:
            # Convert now, so that a bad value skips the object before anything is
            # written (and its dependants with it).
            self.convert_fields(spec, pk, fields, lookup=False)

    def object_problem(self, spec, pk, message):
        if not self.skip:
            raise ObjectError(
                f"{self.database}: could not install {spec.label}(pk={pk}): {message}"
            )
        if (spec.root_label, pk) not in self.bad:
            self.bad.add((spec.root_label, pk))
            self.result.problem(spec.label, pk, message)

    def is_known(self, model_label, pk):
        if pk in self.present[model_label]:
            return True
        if self.full_dumps:
            return False
        root_label = self.specs[model_label].root_label
        if pk not in self.keymap[root_label]:
            return False
        keys = self.remote_keys.get(root_label) if self.remote_keys is not None else None
        return keys is None or pk in keys

    def missing_refs(self):
        missing = {}
        for model_label, pks in self.refs.items():
            if model_label not in self.specs:
                continue
            gone = {pk for pk in pks if not self.is_known(model_label, pk)}
            if gone:
                missing[model_label] = gone
        return missing

    def resolve_references(self):
        missing = self.missing_refs()
        rounds = 0
        while missing and self.refetch is not None and rounds < MAX_REFETCH_ROUNDS:
            rounds += 1
            count = sum(len(p) for p in missing.values())
            self.log(f"Re-fetching {count} object(s) referenced but not sent", 1)
            for model_label, pks in sorted(missing.items()):
                fetched = self.refetch(model_label, sorted(pks))
                for fetched_label, paths in fetched.items():
                    spec = self.specs[fetched_label]
                    self.files.setdefault(fetched_label, []).extend(paths)
                    self.scan_model(spec, paths)
            missing = self.missing_refs()
        if missing:
            self.report_dangling(missing)
        if self.skip and self.bad:
            self.propagate_bad()

    def report_dangling(self, missing):
        """Name each object whose reference still dangles; halt unless skipping."""
        problems = []
        for spec in self.specs.values():
            for path in self.files.get(spec.label, []):
                for obj in iter_objects(path):
                    for target_label, pk in self.object_targets(spec, obj):
                        if pk in missing.get(target_label, ()):
                            message = (
                                f"refers to {target_label}(pk={pk}), which the remote did not "
                                f"send (not even when asked again)"
                            )
                            problems.append(f"{spec.label}(pk={obj['pk']}) {message}")
                            if self.skip:
                                self.object_problem(spec, obj["pk"], message)
        if not self.skip:
            listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
            more = len(problems) - MAX_LISTED_PROBLEMS
            raise ObjectError(
                f"{self.database}: {len(problems)} reference(s) to objects that do not exist: "
                f"{listed}{f'; and {more} more' if more > 0 else ''}"
            )

    def object_targets(self, spec, obj):
        for parent in spec.parent_labels:
            yield parent, obj["pk"]
        fields = obj["fields"]
        for f, _c, target_root, planned in spec.columns:
            value = fields.get(f.name)
            if target_root is not None and planned and isinstance(value, int):
                yield label(f.related_model), value
        for f in spec.m2m:
            if f.related_model in self.plan.models:
                for value in fields.get(f.name) or ():
                    yield label(f.related_model), value

    def propagate_bad(self):
        """With --skip: whatever needs a skipped object is skipped too."""
        changed = True
        while changed:
            changed = False
            for (root_label, pk), refs in self.obj_refs.items():
                if (root_label, pk) in self.bad:
                    continue
                for target_label, target_root, value in refs:
                    if (target_root, value) in self.bad:
                        self.bad.add((root_label, pk))
                        model_label = next(
                            s.label for s in self.specs.values() if s.root_label == root_label
                        )
                        self.result.problem(
                            model_label, pk, f"needs {target_label}(pk={value}), which was skipped"
                        )
                        changed = True
                        break

    # --- 3. allocate local keys for new objects ----------------------------------------

    def allocate(self):
        for root in self.plan.roots:
            root_label = label(root)
            mapping = self.keymap[root_label]
            wanted = set()
            for spec in self.specs.values():
                if spec.root_label == root_label:
                    wanted.update(self.present[spec.label])
            new = sorted(pk for pk in wanted - mapping.keys() if (root_label, pk) not in self.bad)
            if not new:
                continue
            local = self.next_ids(root, len(new))
            mapping.update(zip(new, local, strict=True))
            self.new[root_label] = set(local)

    def next_ids(self, root, count):
        table, column = root._meta.db_table, root._meta.pk.column
        with connection.cursor() as cursor:
            if self.vendor == "postgresql":
                cursor.execute(
                    "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                    [qn(table), column, count],
                )
                return [row[0] for row in cursor.fetchall()]
            cursor.execute(f"SELECT COALESCE(MAX({qn(column)}), 0) FROM {qn(table)}")
            start = cursor.fetchone()[0]
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
            row = cursor.fetchone()
            start = max(start, row[0] if row else 0)
            return list(range(start + 1, start + 1 + count))

    # --- 4. write -----------------------------------------------------------------------

    def convert_fields(self, spec, pk, fields, lookup=True):
        """The row's column values, or None when the object is skipped."""
        values = []
        for f, convert, target_root, planned in spec.columns:
            raw = fields.get(f.name, MISSING)
            try:
                if raw is MISSING:
                    value = f.get_default()
                elif target_root is not None:
                    if not planned or raw is None:
                        value = None
                        if not f.null:
                            raise ValueError("may not be null")
                    else:
                        value = convert(raw)
                        if lookup:
                            value = self.keymap[target_root][value]
                else:
                    value = convert(raw)
            except (ValueError, KeyError) as exc:
                self.object_problem(spec, pk, f"field {f.name!r}: {exc}")
                return None
            values.append(value)
        return values

    def rows(self, spec, paths, owners, links):
        mapping = self.keymap[spec.root_label]
        done = set()
        # Re-fetched dumps come last and are the newest: read them first, so that an
        # object sent twice is installed once, in its latest version.
        for path in reversed(paths):
            for obj in iter_objects(path):
                pk, fields = obj["pk"], obj["fields"]
                if (spec.root_label, pk) in self.bad or pk in done:
                    continue
                done.add(pk)
                if spec.user_fields & fields.keys():
                    self.result.user_links_dropped += 1
                values = self.convert_fields(spec, pk, fields)
                if values is None:
                    continue
                local = mapping[pk]
                row = [local, *values]
                if spec.is_root:
                    row += [pk, self.database.pk, self.now]
                owners.append(local)
                for f in spec.m2m:
                    self.collect_links(f, local, fields.get(f.name, []), links)
                yield row

    def collect_links(self, f, local, values, links):
        target = f.related_model
        if target not in self.plan.models:
            return
        target_label = label(target)
        target_root = label(root_of(target))
        target_map = self.keymap[target_root]
        for value in values:
            if (target_root, value) in self.bad:
                continue
            to_pk = target_map.get(value)
            if to_pk is not None and self.is_known(target_label, value):
                links[f.name].add((local, to_pk))

    def install_model(self, spec, paths):
        counts = self.result.model(spec.label)
        owners, links = [], defaultdict(set)
        seen = 0
        changed = set()
        if paths:
            rows = self.rows(spec, paths, owners, links)
            changed = self.merge(spec, rows)
            seen = len(set(owners))
        linked = set()
        for f in spec.m2m:
            linked |= self.replace_links(f, owners, links[f.name])
        new = self.new.get(spec.root_label, set()) & set(owners)
        touched = (changed | linked) - new
        # A root row changed by the merge got its new last_modified there; a change
        # of a child row or of links is recorded on the root row here.
        self.touch(spec.root, touched if not spec.is_root else linked - changed - new)
        counts["fetched"] += seen
        counts["created"] += len(new)
        counts["updated"] += len(touched)
        counts["unchanged"] += seen - len(new) - len(touched)
        counts["skipped"] += sum(
            1
            for root_label, pk in self.bad
            if root_label == spec.root_label and pk in self.present[spec.label]
        )

    def merge(self, spec, rows):
        """Stage the rows and merge them; return the local pks inserted or changed."""
        columns = spec.column_names
        stage = f"dbsync_stage_{spec.table}"[:60]
        cols = ", ".join(qn(c) for c in columns)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {qn(stage)}")
            if self.vendor == "postgresql":
                cursor.execute(
                    f"CREATE TEMP TABLE {qn(stage)} AS SELECT {cols} FROM {qn(spec.table)} "
                    f"WITH NO DATA"
                )
                with cursor.cursor.copy(f"COPY {qn(stage)} ({cols}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.execute(
                    f"CREATE TEMP TABLE {qn(stage)} AS SELECT {cols} FROM {qn(spec.table)} LIMIT 0"
                )
                fields = [spec.model._meta.pk] + [f for f, *_ in spec.columns]
                if spec.is_root:
                    opts = spec.model._meta
                    fields += [
                        opts.get_field(n) for n in ("original_id", "original_db", "last_modified")
                    ]
                placeholders = ", ".join(["%s"] * len(columns))
                batch = []
                for row in rows:
                    batch.append(
                        [
                            f.get_db_prep_save(v, connection)
                            for f, v in zip(fields, row, strict=True)
                        ]
                    )
                    if len(batch) >= SQLITE_CHUNK:
                        cursor.executemany(
                            f"INSERT INTO {qn(stage)} VALUES ({placeholders})", batch
                        )
                        batch = []
                if batch:
                    cursor.executemany(f"INSERT INTO {qn(stage)} VALUES ({placeholders})", batch)
            compared = spec.compared_columns
            updates = [
                c
                for c in columns
                if c != spec.pk_column and c not in ("original_id", "original_db_id")
            ]
            set_clause = ", ".join(f"{qn(c)} = EXCLUDED.{qn(c)}" for c in updates)
            target = qn(spec.table)
            if not compared:
                conflict = "DO NOTHING"
            else:
                if self.vendor == "postgresql":
                    differs = " OR ".join(
                        f"{target}.{qn(c)} IS DISTINCT FROM EXCLUDED.{qn(c)}" for c in compared
                    )
                else:
                    differs = " OR ".join(
                        f"{target}.{qn(c)} IS NOT EXCLUDED.{qn(c)}" for c in compared
                    )
                conflict = f"DO UPDATE SET {set_clause} WHERE {differs}"
            where = "" if self.vendor == "postgresql" else " WHERE true"
            cursor.execute(
                f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {qn(stage)}{where} "
                f"ON CONFLICT ({qn(spec.pk_column)}) {conflict} RETURNING {qn(spec.pk_column)}"
            )
            changed = {row[0] for row in cursor.fetchall()}
            cursor.execute(f"DROP TABLE {qn(stage)}")
        return changed

    def replace_links(self, f, owners, wanted):
        """Make the links of ``owners`` exactly ``wanted``; return owners that changed."""
        if not owners or f.related_model not in self.plan.models:
            return set()
        through = f.remote_field.through._meta
        table = qn(through.db_table)
        src = qn(f.m2m_column_name())
        dst = qn(f.m2m_reverse_name())
        changed = set()
        with connection.cursor() as cursor:
            existing = set()
            for chunk in _chunks(sorted(set(owners)), 5000):
                cursor.execute(
                    f"SELECT {src}, {dst} FROM {table} WHERE {src} IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    chunk,
                )
                existing.update(cursor.fetchall())
            stale = existing - wanted
            fresh = wanted - existing
            for chunk in _chunks(sorted(stale), 500):
                cursor.executemany(f"DELETE FROM {table} WHERE {src} = %s AND {dst} = %s", chunk)
            for chunk in _chunks(sorted(fresh), 5000):
                cursor.executemany(f"INSERT INTO {table} ({src}, {dst}) VALUES (%s, %s)", chunk)
        changed.update(s for s, _ in stale)
        changed.update(s for s, _ in fresh)
        return changed

    def touch(self, root, pks):
        """Bump last_modified of objects changed through a child row or a link."""
        with connection.cursor() as cursor:
            for chunk in _chunks(sorted(pks), 5000):
                cursor.execute(
                    f"UPDATE {qn(root._meta.db_table)} SET last_modified = %s "
                    f"WHERE {qn(root._meta.pk.column)} IN ({', '.join(['%s'] * len(chunk))})",
                    [self.now, *chunk],
                )

    # --- 5. deletions ---------------------------------------------------------------------

    def delete_missing(self):
        for root in reversed(self.plan.roots):
            root_label = label(root)
            remote = self.remote_keys.get(root_label)
            if remote is None:
                continue
            mapping = self.keymap[root_label]
            gone = sorted(set(mapping) - remote)
            if not gone:
                continue
            allowed = deletion_allowance(self.max_delete, len(self.existing[root_label]))
            if len(gone) > allowed:
                raise DeleteGuardError(
                    f"{self.database}: the sync would delete {len(gone)} of "
                    f"{len(self.existing[root_label])} replicated {root_label} objects, more "
                    f"than allowed ({allowed}; --max-delete / DBSYNC_MAX_DELETE="
                    f"{self.max_delete}). If the remote really deleted them, run again with "
                    f"--max-delete=all."
                )
            self.delete_objects(root, root_label, gone)

    def delete_objects(self, root, root_label, gone):
        mapping = self.keymap[root_label]
        local = [mapping[pk] for pk in gone]
        queryset = root._base_manager.filter(pk__in=local)
        collector = Collector(using=connection.alias)
        collector.collect(queryset)
        outsiders = self.outside_objects(collector)
        if outsiders:
            raise ObjectError(
                f"{self.database}: deleting {len(gone)} {root_label} object(s) that the remote "
                f"no longer has would also change objects that do not come from this remote: "
                f"{'; '.join(outsiders[:MAX_LISTED_PROBLEMS])}"
            )
        _total, per_model = collector.delete()
        for model_label, n in per_model.items():
            if model_label.lower() in self.specs:
                self.result.add(model_label.lower(), "deleted", n)
        for pk in gone:
            del mapping[pk]
        self.log(f"Deleted {len(gone)} {root_label} object(s) the remote no longer has", 2)

    def outside_objects(self, collector):
        """Objects a deletion would reach that are not this remote's own."""
        found = []
        for model, instances in collector.data.items():
            for obj in instances:
                if hasattr(obj, "original_db_id") and obj.original_db_id != self.database.pk:
                    found.append(f"{label(model)}(pk={obj.pk})")
        for qs in collector.fast_deletes:
            if hasattr(qs, "model") and hasattr(qs.model, "original_db_id"):
                for pk in qs.exclude(original_db_id=self.database.pk).values_list("pk", flat=True)[
                    :MAX_LISTED_PROBLEMS
                ]:
                    found.append(f"{label(qs.model)}(pk={pk})")
        for (field, _value), instances in collector.field_updates.items():
            for obj in instances:
                if getattr(obj, "original_db_id", self.database.pk) != self.database.pk:
                    found.append(f"{label(field.model)}(pk={obj.pk}).{field.name}")
        return found


def deletion_allowance(max_delete, existing):
    """How many of ``existing`` replicated objects one run may delete.

    ``max_delete`` is "all", a count ("100") or a share ("50%"); a share always
    allows DBSYNC_MAX_DELETE_MIN objects, so that a small table can lose its last few.
    """
    text = str(max_delete).strip().lower()
    if text in {"all", "any", "unlimited"}:
        return math.inf
    if text.endswith("%"):
        share = math.floor(existing * float(text[:-1]) / 100)
        return max(share, settings.DBSYNC_MAX_DELETE_MIN)
    return int(text)


def validate_max_delete(value):
    """Raise ValueError unless ``value`` is "all", a count or a percentage."""
    text = str(value).strip().lower()
    if text in {"all", "any", "unlimited"}:
        return text
    number = text[:-1] if text.endswith("%") else text
    try:
        if float(number) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{value!r} is not a number of objects, a percentage (e.g. 10%) or 'all'"
        ) from None
    return text


def _chunks(items, size):
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]
