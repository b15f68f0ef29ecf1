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
import time
from collections import defaultdict

from django.conf import settings
from django.db import connection, models
from django.db.models.deletion import Collector
from django.utils import timezone

from hcore.bulk import copy_rows, execute_batches, qn, sequence_values
from protocol.formats import MAX_KEY
from protocol.schema import BOOKKEEPING_FIELDS, served_fields, served_m2m_fields

from .convert import converter_for
from .dumps import iter_objects
from .errors import (
    DanglingReferences,
    DeleteGuardError,
    ObjectError,
    PayloadError,
    SchemaMismatch,
)
from .keychecks import KeyChecks
from .keysets import KeyMap, KeySet
from .planner import label, root_of

logger = logging.getLogger(__name__)

MISSING = object()
MAX_REFETCH_ROUNDS = 3
MAX_LISTED_PROBLEMS = 20
SQLITE_CHUNK = 500
# A table that gets this many new rows is analyzed after the run's COMMIT: its
# statistics (none after a first sync) steer every later query on it. Not before:
# ANALYZE counts the uncommitted rows into pg_class at once, for every session.
ANALYZE_MIN_ROWS = 10_000


# One pass, no sort: whether the key map is one run (remote pks dense, one distance
# to the local ones), as after a first sync of a remote with no gaps in its keys.
KEYMAP_SPAN = (
    "SELECT count(*), min(original_id), max(original_id), min({pk} - original_id), "
    "max({pk} - original_id) FROM {table} WHERE original_db_id = %s"
)
KEYMAP_RUNS = (
    "SELECT min(original_id), min({pk}), count(*), "
    "max(original_id) - min(original_id) + 1 = count(*) FROM ("
    "  SELECT original_id, {pk}, original_id - row_number() OVER (ORDER BY original_id) AS g"
    "  FROM {table} WHERE original_db_id = %s) ranked "
    "GROUP BY g, {pk} - original_id ORDER BY 1"
)
# The same, surely right and slower: a run starts where either key does not step by one.
KEYMAP_RUNS_STEPWISE = (
    "SELECT min(original_id), min(local), count(*) FROM ("
    "  SELECT original_id, local, sum(step) OVER (ORDER BY original_id) AS run FROM ("
    "    SELECT original_id, {pk} AS local, CASE WHEN original_id = "
    "      lag(original_id) OVER w + 1 AND {pk} = lag({pk}) OVER w + 1 THEN 0 ELSE 1 END"
    "      AS step FROM {table} WHERE original_db_id = %s"
    "    WINDOW w AS (ORDER BY original_id)) steps) runs "
    "GROUP BY run ORDER BY 1"
)


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
        # (field, name, converter, target model label, target root label) per column;
        # the target labels are None for plain fields and for keys to unplanned models.
        self.columns = []
        for f in self.fields:
            target = f.related_model if f.is_relation else None
            in_plan = target in planned
            convert = converter_for(f.target_field if target else f)
            if isinstance(f, models.FileField):
                convert = without_file_name(convert)
            self.columns.append(
                (
                    f,
                    f.name,
                    convert,
                    label(target) if in_plan else None,
                    label(root_of(target)) if in_plan else None,
                )
            )
        self.known = {f.name for f in served_fields(model)} | {f.name for f in self.m2m}
        # Fields a dumpdata file has that we deliberately ignore: the remote's own
        # bookkeeping and its keys to user accounts.
        local = {f.name for f in model._meta.local_fields} | {
            f.name for f in model._meta.local_many_to_many
        }
        self.ignored = (local - self.known) | (BOOKKEEPING_FIELDS & local)
        self.accepted = frozenset(self.known | self.ignored)
        self.user_fields = {
            f.name
            for f in list(model._meta.local_fields) + list(model._meta.local_many_to_many)
            if f.is_relation and f.related_model._meta.app_label == "auth"
        }
        # A file field's value is a name in the remote's storage, meaningless here:
        # dbsync.engine.files fetches the file and sets the name. New rows start without one.
        self.file_columns = {f.column for f in self.fields if isinstance(f, models.FileField)}
        self.parent_labels = [label(p) for p in model._meta.get_parent_list()]
        self.planned_m2m = [f for f in self.m2m if f.related_model in planned]

    @property
    def column_names(self):
        names = [self.pk_column] + [f.column for f, *_ in self.columns]
        if self.is_root:
            names += ["original_id", "original_db_id", "last_modified"]
        return names

    @property
    def column_fields(self):
        opts = self.model._meta
        fields = [opts.pk] + [f for f, *_ in self.columns]
        if self.is_root:
            fields += [opts.get_field(n) for n in ("original_id", "original_db", "last_modified")]
        return fields

    @property
    def compared_columns(self):
        return [f.column for f, *_ in self.columns if f.column not in self.file_columns]


class Installer:
    """Install a remote's dumps; see the module's docstring for the algorithm."""

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
        set of remote pks, "present" (the dumps are complete) or None (no deletions);
        ``refetch(model_label, pks)`` returns {model label: [paths]} of re-fetched
        objects."""
        self.database = database
        self.plan = plan
        # Dump paths are read from ``files`` when the install reaches the model, so
        # that a caller still fetching can hand over a mapping that waits.
        self.source = files
        self.files = {}
        self.result = result
        # "present": the dumps are complete, so what they hold is all the remote has.
        self.full_dumps = remote_keys == "present"
        self.remote_keys = None if self.full_dumps else remote_keys
        self.skip = skip
        self.max_delete = max_delete
        self.refetch = refetch
        self.log = log or (lambda message, level=1: None)
        self.specs = {label(m): ModelSpec(m, plan) for m in plan.models}
        self.vendor = connection.vendor
        self.now = timezone.now()
        # Key maps (root label -> remote pk -> local pk): the objects installed before
        # this run, and those first seen in it. Compact: see dbsync.engine.keysets.
        self.loaded = {}
        self.allocated = defaultdict(KeyMap)
        self.pools = defaultdict(list)  # root label -> allocated local pks not yet used
        self.pool_sizes = defaultdict(lambda: 1000)
        self.sequence_connection = None
        self.present = defaultdict(KeySet)  # model label -> remote pks in this run's dumps
        self.written = defaultdict(KeySet)  # model label -> local pks written in this run
        # model label -> remote pks referenced that were not known when referenced
        # (an object of a later model, or not sent): checked once all is installed.
        self.refs = defaultdict(set)
        self.bad = set()  # (root label, remote pk) of objects skipped
        self.grown = defaultdict(int)  # table -> rows inserted

    def paths(self, model_label):
        if model_label not in self.files:
            self.files[model_label] = list(self.source.get(model_label, []))
        return self.files[model_label]

    # --- the whole install ---------------------------------------------------------

    def run(self):
        try:
            return self._run()
        finally:
            if self.sequence_connection is not None:
                self.sequence_connection.close()

    def _run(self):
        self.load_keymaps()
        self.key_checks = KeyChecks(self.database)
        if self.skip:
            # Everything is checked before anything is written, so that a bad object
            # can be left out together with whatever needs it.
            for spec in self.specs.values():
                self.scan_model(spec, self.paths(spec.label))
            self.resolve_references_before()
        for model in self.plan.models:
            spec = self.specs[label(model)]
            paths = self.paths(spec.label)
            if paths:
                self.log(f"Installing fixtures from file {spec.label}.json", 1)
                self.result.files += 1
            started = time.monotonic()
            self.install_model(spec, paths)
            c = self.result.model(spec.label)
            self.log(
                f"\t- {c['created']} created, {c['updated']} updated, {c['unchanged']} "
                f"unchanged in {time.monotonic() - started:.1f} s",
                2,
            )
        if not self.skip:
            self.resolve_references_after()
        self.log("Re-linking foreign keys and many-to-many relations: done", 1)
        if self.full_dumps:
            self.remote_keys = {label(root): KeySet() for root in self.plan.roots}
            for spec in self.specs.values():
                self.remote_keys[spec.root_label].update(self.present[spec.label])
        if self.remote_keys is not None:
            self.delete_missing()
        started = time.monotonic()
        if checked := self.key_checks.check():
            self.log(
                f"Checked the foreign keys of {checked} new rows, one query per key, in "
                f"{time.monotonic() - started:.1f} s",
                2,
            )
        return self.result

    # --- 1. key map and allocation ----------------------------------------------------

    def load_keymaps(self):
        """Read what this remote's objects are here, as runs of consecutive keys (the
        database finds them: a remote of millions of objects has a handful of runs)."""
        with connection.cursor() as cursor:
            for root in self.plan.roots:
                sql = {"pk": qn(root._meta.pk.column), "table": qn(root._meta.db_table)}
                cursor.execute(KEYMAP_SPAN.format(**sql), [self.database.pk])
                count, low, high, distance, far = cursor.fetchone()
                if not count or (high - low + 1 == count and distance == far):
                    runs = [(low, low + distance, count)] if count else []
                    self.loaded[label(root)] = KeyMap.from_runs(runs)
                    continue
                # Rows with the same distance from their rank (consecutive remote pks)
                # and from their local pk: a run, if they are contiguous (ok).
                cursor.execute(KEYMAP_RUNS.format(**sql), [self.database.pk])
                runs = cursor.fetchall()
                if not all(ok for *_run, ok in runs):
                    cursor.execute(KEYMAP_RUNS_STEPWISE.format(**sql), [self.database.pk])
                    runs = [(*run, True) for run in cursor.fetchall()]
                self.loaded[label(root)] = KeyMap.from_runs(run for *run, _ok in runs)

    def known_local_pk(self, root_label, remote_pk):
        """The local pk of a remote object installed before or allocated in this run."""
        local = self.loaded[root_label].get(remote_pk)
        return self.allocated[root_label].get(remote_pk) if local is None else local

    def local_pk(self, root_label, remote_pk):
        """The local pk of a remote object; a new one is allocated on first sight."""
        local = self.known_local_pk(root_label, remote_pk)
        if local is None:
            pool = self.pools[root_label]
            if not pool:
                size = self.pool_sizes[root_label]
                self.pool_sizes[root_label] = min(size * 4, 100_000)
                pool.extend(reversed(self.next_ids(self.specs[root_label].root, size)))
            local = self.allocated[root_label][remote_pk] = pool.pop()
        return local

    def next_ids(self, root, count):
        table, column = root._meta.db_table, root._meta.pk.column
        if self.vendor == "postgresql":
            # Keys are allocated while a COPY holds the install's connection, so on a
            # connection of their own; nextval() is outside transactions anyway.
            if self.sequence_connection is None:
                self.sequence_connection = connection.get_new_connection(
                    connection.get_connection_params()
                )
                self.sequence_connection.autocommit = True
            with self.sequence_connection.cursor() as cursor:
                return sequence_values(cursor, connection, table, column, count)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(MAX({qn(column)}), 0) FROM {qn(table)}")
            start = cursor.fetchone()[0]
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
            row = cursor.fetchone()
            start = max(start, row[0] if row else 0, self.allocated[label(root)].max_value())
            return list(range(start + 1, start + 1 + count))

    # --- 2. checking objects and references --------------------------------------------

    def check_object(self, spec, obj):
        model = obj["model"]
        if model != spec.label and model.lower() != spec.label:
            raise PayloadError(
                f"the {spec.label} dump from {self.database} contains an object of "
                f"{obj['model'][:100]!r} (pk={obj['pk']}); only {spec.label} belongs there"
            )
        if obj["fields"].keys() <= spec.accepted:
            return
        unknown = obj["fields"].keys() - spec.accepted
        if unknown:
            raise SchemaMismatch(
                f"{spec.label}(pk={obj['pk']}) from {self.database} has field(s) "
                f"{', '.join(sorted(repr(u[:100]) for u in unknown))} that the local model "
                f"does not have; the remote runs a different schema"
            )

    def objects(self, path):
        """The objects of a dump, with payload errors naming the remote."""
        try:
            # Never read whole: a dump that is not one object per line is refused.
            yield from iter_objects(path, whole=False)
        except PayloadError as exc:
            if str(exc).startswith(str(self.database)):
                raise
            raise PayloadError(f"{self.database}: {exc}") from exc

    def scan_model(self, spec, paths):
        for path in paths:
            for obj in self.objects(path):
                self.scan_object(spec, obj)

    def scan_object(self, spec, obj):
        """With --skip: check an object and note what it needs, writing nothing."""
        self.check_object(spec, obj)
        pk, fields = obj["pk"], obj["fields"]
        self.present[spec.label].add(pk)
        for parent in spec.parent_labels:
            self.refer(parent, pk)
        values = self.convert_row(spec, pk, fields, resolve=False)
        if values is None:
            return
        for (_f, _name, _conv, target_label, _root), value in zip(
            spec.columns, values, strict=True
        ):
            if target_label is not None and value is not None:
                self.refer(target_label, value)
        for f in spec.planned_m2m:
            values = fields.get(f.name, [])
            if self.valid_keys(spec, pk, f, values):
                for value in values:
                    self.refer(label(f.related_model), value)

    def valid_keys(self, spec, pk, f, values):
        limit = settings.DBSYNC_MAX_LINKS_PER_OBJECT
        if isinstance(values, list) and len(values) > limit:
            self.object_problem(
                spec,
                pk,
                f"field {f.name!r}: {len(values)} keys, more than the {limit} allowed "
                f"(DBSYNC_MAX_LINKS_PER_OBJECT)",
            )
            return False
        if isinstance(values, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_KEY for v in values
        ):
            return True
        self.object_problem(spec, pk, f"field {f.name!r}: expected a list of keys")
        return False

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
        if pk not in self.loaded[root_label]:
            return False
        keys = self.remote_keys.get(root_label) if self.remote_keys is not None else None
        return keys is None or pk in keys

    def refer(self, model_label, pk):
        """Note a reference to be checked at the end, unless its object is known now
        (known objects stay known: the checks only ever learn of more)."""
        if (
            pk not in self.present[model_label]
            and model_label in self.specs
            and not self.is_known(model_label, pk)
        ):
            self.refs[model_label].add(pk)

    def missing_refs(self):
        missing = {}
        for model_label, pks in self.refs.items():
            if model_label not in self.specs:
                continue
            gone = {pk for pk in pks if not self.is_known(model_label, pk)}
            if gone:
                missing[model_label] = gone
        return missing

    def refetch_missing(self, missing, install):
        """Ask the remote again for objects referenced but not sent."""
        count = sum(len(p) for p in missing.values())
        self.log(f"Re-fetching {count} object(s) referenced but not sent", 1)
        fetched_all = defaultdict(list)
        for model_label, pks in sorted(missing.items()):
            for fetched_label, paths in self.refetch(model_label, sorted(pks)).items():
                self.paths(fetched_label).extend(paths)
                fetched_all[fetched_label].extend(paths)
        for model in self.plan.models:
            paths = fetched_all.get(label(model))
            if paths:
                install(self.specs[label(model)], paths)

    def resolve_references_before(self):
        """--skip: re-fetch what is missing, then skip what still dangles."""
        missing = self.missing_refs()
        rounds = 0
        while missing and self.refetch is not None and rounds < MAX_REFETCH_ROUNDS:
            rounds += 1
            self.refetch_missing(missing, self.scan_model)
            missing = self.missing_refs()
        if missing:
            self.report_dangling(missing)
        if self.bad:
            self.propagate_bad()
        for spec in self.specs.values():
            for pk in sorted(self.present[spec.label]):
                if (spec.root_label, pk) not in self.bad:
                    self.local_pk(spec.root_label, pk)

    def resolve_references_after(self):
        """Every reference written must point at an object of this run or an earlier one."""
        missing = self.missing_refs()
        rounds = 0
        while missing and self.refetch is not None and rounds < MAX_REFETCH_ROUNDS:
            rounds += 1
            self.refetch_missing(missing, self.install_model)
            missing = self.missing_refs()
        if missing:
            self.report_dangling(missing)

    def report_dangling(self, missing):
        """Name each object whose reference still dangles; halt unless skipping."""
        problems = []
        for spec in self.specs.values():
            for path in self.paths(spec.label):
                for obj in self.objects(path):
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
            raise DanglingReferences(
                f"{self.database}: {len(problems)} reference(s) to objects that do not exist: "
                f"{listed}{f'; and {more} more' if more > 0 else ''}"
            )

    def object_needs(self, spec, obj):
        """(label, root label, pk) of each row ``obj`` cannot be installed without: its
        parent rows and the targets of its foreign keys (not its many-to-many links)."""
        for parent in spec.parent_labels:
            yield parent, spec.root_label, obj["pk"]
        fields = obj["fields"]
        for _f, name, _c, target_label, target_root in spec.columns:
            value = fields.get(name)
            if target_label is not None and isinstance(value, int):
                yield target_label, target_root, value

    def object_targets(self, spec, obj):
        for target_label, _root, pk in self.object_needs(spec, obj):
            yield target_label, pk
        fields = obj["fields"]
        for f in spec.planned_m2m:
            values = fields.get(f.name)
            for value in values if isinstance(values, list) else ():
                if isinstance(value, int):  # not a nested list or object: not a key
                    yield label(f.related_model), value

    def propagate_bad(self):
        """With --skip: whatever needs a skipped object (its parent row, or the target
        of a foreign key) is skipped too. The dumps are read again, in install order,
        pass after pass until a pass skips nothing more (usually two), rather than
        keeping every object's references in memory for this rare case."""
        changed = True
        while changed:
            changed = False
            for spec in self.specs.values():
                for path in self.paths(spec.label):
                    for obj in self.objects(path):
                        changed |= self.skip_if_needs_bad(spec, obj)

    def skip_if_needs_bad(self, spec, obj):
        pk = obj["pk"]
        if (spec.root_label, pk) in self.bad:
            return False
        for target_label, target_root, value in self.object_needs(spec, obj):
            if (target_root, value) in self.bad:
                self.bad.add((spec.root_label, pk))
                self.result.problem(
                    spec.label, pk, f"needs {target_label}(pk={value}), which was skipped"
                )
                return True
        return False

    # --- 3. write -----------------------------------------------------------------------

    def convert_row(self, spec, pk, fields, resolve=True):
        """The row's column values (keys translated when ``resolve``), or None if skipped."""
        values = []
        append = values.append
        name = None
        try:
            for f, name, convert, target_label, target_root in spec.columns:
                raw = fields.get(name, MISSING)
                if raw is MISSING:
                    append(f.get_default())
                elif raw is None or (target_root is None and f.is_relation):
                    if not f.null:
                        raise ValueError("may not be null")
                    append(None)
                elif target_root is None:
                    append(convert(raw))
                elif resolve:
                    remote = convert(raw)
                    self.refer(target_label, remote)
                    append(self.local_pk(target_root, remote))
                else:
                    append(convert(raw))
        except ValueError as exc:
            self.object_problem(spec, pk, f"field {name!r}: {exc}")
            return None
        return values

    def install_model(self, spec, paths):
        """Insert the new objects of a model's dumps, merge the others, relink M2M."""
        counts = self.result.model(spec.label)
        owners, links = KeySet(), defaultdict(set)
        inserted, changed = KeySet(), set()
        seen_before = len(self.written[spec.label])
        if paths:
            pending = KeySet()
            inserted = self.insert_new(spec, paths, owners, links, pending)
            if pending:
                changed = self.merge(spec, self.existing_rows(spec, paths, pending, owners, links))
        linked = set()
        for f in spec.planned_m2m:
            linked |= self.replace_links(f, owners, links[f.name])
        touched = {pk for pk in changed | linked if pk not in inserted}
        # A root row changed by the merge got its new last_modified there; a change
        # of a child row or of links is recorded on the root row here.
        self.touch(
            spec.root,
            touched if not spec.is_root else {pk for pk in linked - changed if pk not in inserted},
        )
        seen = len(self.written[spec.label]) - seen_before
        counts["fetched"] += seen
        counts["created"] += len(inserted)
        counts["updated"] += len(touched)
        counts["unchanged"] += seen - len(inserted) - len(touched)
        if self.skip:
            counts["skipped"] = sum(
                1
                for root_label, pk in self.bad
                if root_label == spec.root_label and pk in self.present[spec.label]
            )

    def each_object(self, spec, paths):
        """(remote pk, fields, local pk) of the objects to install, each once.

        Re-fetched dumps come last and are the newest: they are read first, so that
        an object sent twice is installed once, in its latest version.
        """
        done = KeySet()
        for path in reversed(paths):
            for obj in self.objects(path):
                pk = obj["pk"]
                if pk in done:
                    continue
                done.add(pk)
                if not self.skip:
                    self.check_object(spec, obj)
                    self.present[spec.label].add(pk)
                    for parent in spec.parent_labels:
                        self.refer(parent, pk)
                elif (spec.root_label, pk) in self.bad:
                    continue
                yield pk, obj["fields"], self.local_pk(spec.root_label, pk)

    def insert_new(self, spec, paths, owners, links, pending):
        """COPY/INSERT the objects that are new here; list the others in ``pending``."""
        existing = self.loaded[spec.root_label]
        written = self.written[spec.label]
        inserted = KeySet()

        def rows():
            for pk, fields, local in self.each_object(spec, paths):
                if pk in existing or local in written:
                    pending.add(pk)
                    continue
                row = self.row(spec, pk, fields, local, owners, links)
                if row is not None:
                    inserted.add(local)
                    yield row

        with self.key_checks.unchecked(spec) as unchecked:
            self.write_rows(spec, spec.table, rows())
        if unchecked is not None:
            unchecked.update(inserted)
        self.grown[spec.table] += len(inserted)
        return inserted

    def analyze_grown_tables(self):
        """After the COMMIT: statistics of the tables that grew much."""
        if self.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            for table, count in self.grown.items():
                if count >= ANALYZE_MIN_ROWS:
                    cursor.execute(f"ANALYZE {qn(table)}")

    def existing_rows(self, spec, paths, pending, owners, links):
        done = KeySet()
        for path in reversed(paths):
            for obj in self.objects(path):
                pk = obj["pk"]
                if pk in pending and pk not in done:
                    done.add(pk)
                    local = self.local_pk(spec.root_label, pk)
                    row = self.row(spec, pk, obj["fields"], local, owners, links)
                    if row is not None:
                        yield row

    def row(self, spec, pk, fields, local, owners, links):
        if spec.user_fields and spec.user_fields & fields.keys():
            self.result.user_links_dropped += 1
        values = self.convert_row(spec, pk, fields)
        if values is None:
            return None
        self.written[spec.label].add(local)
        owners.add(local)
        for f in spec.planned_m2m:
            self.collect_links(spec, pk, f, local, fields.get(f.name, []), links)
        row = [local, *values]
        if spec.is_root:
            row += [pk, self.database.pk, self.now]
        return row

    def collect_links(self, spec, pk, f, local, values, links):
        if not self.valid_keys(spec, pk, f, values):
            return
        target_label = label(f.related_model)
        target_root = label(root_of(f.related_model))
        for value in values:
            if (target_root, value) in self.bad:
                continue
            if self.skip and not self.is_known(target_label, value):
                continue
            self.refer(target_label, value)
            links[f.name].add((local, self.local_pk(target_root, value)))

    def write_rows(self, spec, table, rows):
        """Write ``rows`` (all columns of ``spec``) into ``table``: COPY on PostgreSQL."""
        columns = spec.column_names
        cols = ", ".join(qn(c) for c in columns)
        if self.vendor == "postgresql":
            copy_rows(connection, f"COPY {qn(table)} ({cols}) FROM STDIN", rows)
            return
        fields = spec.column_fields
        sql = f"INSERT INTO {qn(table)} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})"
        prepared = (
            [f.get_db_prep_save(v, connection) for f, v in zip(fields, row, strict=True)]
            for row in rows
        )
        with connection.cursor() as cursor:
            execute_batches(cursor, sql, prepared, SQLITE_CHUNK)

    def merge(self, spec, rows):
        """Stage the rows and merge them; return the local pks whose row changed."""
        columns = spec.column_names
        stage = f"dbsync_stage_{spec.table}"[:60]
        cols = ", ".join(qn(c) for c in columns)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {qn(stage)}")
            suffix = "WITH NO DATA" if self.vendor == "postgresql" else "LIMIT 0"
            cursor.execute(
                f"CREATE TEMP TABLE {qn(stage)} AS SELECT {cols} FROM {qn(spec.table)} {suffix}"
            )
        self.write_rows(spec, stage, rows)
        compared = spec.compared_columns
        updates = [
            c
            for c in columns
            if c != spec.pk_column
            and c not in ("original_id", "original_db_id")
            and c not in spec.file_columns
        ]
        target = qn(spec.table)
        if not compared:
            conflict = "DO NOTHING"
        else:
            same = "IS DISTINCT FROM" if self.vendor == "postgresql" else "IS NOT"
            differs = " OR ".join(f"{target}.{qn(c)} {same} EXCLUDED.{qn(c)}" for c in compared)
            set_clause = ", ".join(f"{qn(c)} = EXCLUDED.{qn(c)}" for c in updates)
            conflict = f"DO UPDATE SET {set_clause} WHERE {differs}"
        where = "" if self.vendor == "postgresql" else " WHERE true"
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {qn(stage)}{where} "
                f"ON CONFLICT ({qn(spec.pk_column)}) {conflict} RETURNING {qn(spec.pk_column)}"
            )
            changed = {row[0] for row in cursor.fetchall()}
            cursor.execute(f"DROP TABLE {qn(stage)}")
        return changed

    def replace_links(self, f, owners, wanted):
        """Make the links of ``owners`` exactly ``wanted``; return owners that changed."""
        if not owners:
            return set()
        through = f.remote_field.through._meta
        table = qn(through.db_table)
        src = qn(f.m2m_column_name())
        dst = qn(f.m2m_reverse_name())
        existing = set()
        with connection.cursor() as cursor:
            for chunk in _chunks(sorted(owners), 5000):
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
        return {s for s, _ in stale} | {s for s, _ in fresh}

    def touch(self, root, pks):
        """Bump last_modified of objects changed through a child row or a link."""
        with connection.cursor() as cursor:
            for chunk in _chunks(sorted(pks), 5000):
                cursor.execute(
                    f"UPDATE {qn(root._meta.db_table)} SET last_modified = %s "
                    f"WHERE {qn(root._meta.pk.column)} IN ({', '.join(['%s'] * len(chunk))})",
                    [self.now, *chunk],
                )

    # --- 4. deletions ---------------------------------------------------------------------

    def delete_missing(self):
        for root in reversed(self.plan.roots):
            root_label = label(root)
            remote = self.remote_keys.get(root_label)
            if remote is None:
                continue
            # Installed before and no longer listed, or installed in this run (an object
            # re-fetched as a reference) and not listed either.
            loaded, allocated = self.loaded[root_label], self.allocated[root_label]
            written = self.written[root_label]
            gone = loaded.keys().difference(remote)
            gone += [pk for pk in allocated.keys().difference(remote) if allocated[pk] in written]
            if not gone:
                continue
            gone.sort()
            allowed = deletion_allowance(self.max_delete, len(loaded))
            if len(gone) > allowed:
                raise DeleteGuardError(
                    f"{self.database}: the sync would delete {len(gone)} of "
                    f"{len(loaded)} replicated {root_label} objects, more "
                    f"than allowed ({allowed}; --max-delete / DBSYNC_MAX_DELETE="
                    f"{self.max_delete}). If the remote really deleted them, run again with "
                    f"--max-delete=all."
                )
            self.delete_objects(root, root_label, gone)

    def delete_objects(self, root, root_label, gone):
        local = [self.known_local_pk(root_label, pk) for pk in gone]
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
                outside = qs.exclude(original_db_id=self.database.pk).values_list("pk", flat=True)
                found.extend(f"{label(qs.model)}(pk={pk})" for pk in outside[:MAX_LISTED_PROBLEMS])
        for (field, _value), instances in collector.field_updates.items():
            for obj in instances:
                if getattr(obj, "original_db_id", self.database.pk) != self.database.pk:
                    found.append(f"{label(field.model)}(pk={obj.pk}).{field.name}")
        return found


def without_file_name(convert):
    """A file field's converter that checks the remote's value and keeps nothing of it:
    a name in the remote's storage means nothing here (``dbsync.engine.files`` sets ours)."""

    def convert_file(value):
        convert(value)
        return ""

    return convert_file


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
