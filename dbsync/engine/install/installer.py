"""The install in order: the key map, the references, each model's rows, the
deletions. See the package's docstring for what each step may assume."""

import time
from collections import defaultdict

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ..keychecks import KeyChecks
from ..keysets import KeySet
from ..planner import label, root_of
from ..progress import OBJECTS, steps
from . import writers
from .deletions import delete_missing
from .inserver import Doubt, InServerInstall, is_doubt, not_eligible
from .keymap import KeyMaps
from .references import References
from .source import Dumps
from .spec import BadValue, ModelSpec, check_object, convert_row


class Installer:
    """Install a remote's dumps; see the package's docstring for the algorithm."""

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
        approval=None,
        asked=None,
        log=None,
    ):
        """``files``: model label -> list of dump paths, re-fetched ones last;
        ``remote_keys``: root label -> set of remote pks, "present" (the dumps are
        complete) or None (no deletions); ``asked``: model label -> remote pks asked
        for again already, or None if none may be (see ``references``); ``approval``:
        deletions an operator approved once (``guard.Approval``)."""
        self.database = database
        self.plan = plan
        self.result = result
        self.skip = skip
        self.max_delete = max_delete
        self.approval = approval
        self.log = log or (lambda message, level=1: None)
        self.specs = {label(m): ModelSpec(m, plan) for m in plan.models}
        self.now = timezone.now()
        self.dumps = Dumps(files, database)
        self.keys = KeyMaps(
            database, {name: spec.root for name, spec in self.specs.items() if spec.is_root}
        )
        self.references = References(
            self.specs,
            self.dumps,
            self.keys,
            result,
            database=database,
            remote_keys=remote_keys,
            skip=skip,
            asked=asked,
            log=self.log,
        )
        self.written = defaultdict(KeySet)  # model label -> local pks written in this run
        self.grown = defaultdict(int)  # table -> rows inserted

    @property
    def loaded(self):
        """Root label -> the key map of this remote's objects installed before the run."""
        return self.keys.loaded

    def load_keymaps(self):
        self.keys.load(self.plan.roots)

    def analyze_grown_tables(self):
        """After the COMMIT: statistics of the tables that grew much."""
        writers.analyze_grown_tables(self.grown)

    # --- the whole install ---------------------------------------------------------

    def run(self):
        try:
            return self._run()
        finally:
            self.keys.close()

    def _run(self):
        refs = self.references
        self.load_keymaps()
        self.key_checks = KeyChecks(self.database)
        if self.skip:
            # Everything is checked before anything is written, so that a bad object
            # can be left out together with whatever needs it.
            for spec in self.specs.values():
                refs.scan_model(spec, self.dumps.paths(spec.label))
            refs.resolve_before()
            for spec in self.specs.values():
                for pk in sorted(refs.present[spec.label]):
                    if (spec.root_label, pk) not in refs.bad:
                        self.keys.local_pk(spec.root_label, pk)
        progress = steps(self.log)
        progress.begin(OBJECTS, len(self.plan.models))
        try:
            if not self.install_in_server(progress):
                for model in self.plan.models:
                    self.install_model_logged(self.specs[label(model)], progress)
        finally:
            progress.end(OBJECTS)
        if not self.skip:
            refs.resolve_after()
        self.log("Re-linking foreign keys and many-to-many relations: done", 1)
        remote_keys = refs.remote_keys
        if refs.full_dumps:
            remote_keys = {label(root): KeySet() for root in self.plan.roots}
            for spec in self.specs.values():
                remote_keys[spec.root_label].update(refs.present[spec.label])
                if not spec.is_root:
                    # A child model's own listing: what changed type (deletions).
                    remote_keys[spec.label] = refs.present[spec.label]
        if remote_keys is not None:
            delete_missing(
                self.plan.roots,
                remote_keys,
                self.keys,
                self.written,
                max_delete=self.max_delete,
                approval=self.approval,
                children=[spec.model for spec in self.specs.values() if not spec.is_root],
                planned=self.specs,
                database=self.database,
                result=self.result,
                log=self.log,
            )
        started = time.monotonic()
        if checked := self.key_checks.check():
            self.log(
                f"Checked the foreign keys of {checked} new rows, one query per key, in "
                f"{time.monotonic() - started:.1f} s",
                2,
            )
        return self.result

    # --- a first sync, by the server (inserver) ---------------------------------------

    def install_in_server(self, progress):
        """Install every model by PostgreSQL from the dumps' bytes, if this install may
        (``inserver.not_eligible``) and it finds nothing to doubt; return whether it did.
        A doubt rolls back to a savepoint, and the Python path installs the same dumps."""
        if reason := not_eligible(self):
            self.log(f"Installing in Python: {reason}", 3)
            return False
        started = time.monotonic()
        server = InServerInstall(
            self, lambda spec, count: self.log_inserted(spec, count, progress)
        )
        kept = False
        try:
            with transaction.atomic():
                inserted = server.run()
            kept = True
        except Doubt as exc:
            reason = str(exc)
        except (DatabaseError, connection.Database.Error) as exc:
            if getattr(connection.connection, "closed", False):
                raise  # the connection is lost: no path can go on
            reason = " ".join(str(exc).split()) if is_doubt(exc) else f"the server: {exc}"
        finally:
            server.close(kept)
        if kept:
            for model in self.plan.models:
                self.count_inserted(self.specs[label(model)], inserted)
            self.result.user_links_dropped += sum(server.user_links.values())
            self.log(
                f"Installed {sum(inserted.values())} new objects in the database server in "
                f"{time.monotonic() - started:.1f} s",
                2,
            )
            return True
        self.log(f"Installing in Python, row by row ({reason[:300]})", 2)
        progress.end(OBJECTS)  # counted again, by the Python path
        progress.begin(OBJECTS, len(self.plan.models))
        return False

    def log_inserted(self, spec, count, progress):
        """A model's rows written by the server (told as they are, kept or not)."""
        if self.dumps.paths(spec.label):
            self.log(f"Installing fixtures from file {spec.label}.json", 1)
        self.log(f"\t- {count} created, 0 updated, 0 unchanged", 2)
        progress.advance(OBJECTS, objects=count)

    def count_inserted(self, spec, inserted):
        """A model's rows written by the server, counted once they are kept."""
        if self.dumps.paths(spec.label):
            self.result.files += 1
        count = inserted[spec.label]
        counts = self.result.model(spec.label)
        counts["fetched"] += count
        counts["created"] += count
        self.grown[spec.table] += count

    # --- one model ---------------------------------------------------------------------

    def install_model_logged(self, spec, progress):
        paths = self.dumps.paths(spec.label)
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
        progress.advance(OBJECTS, objects=c["created"] + c["updated"] + c["unchanged"])

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
                rows = self.existing_rows(spec, paths, pending, owners, links)
                changed = writers.merge(spec, rows)
        linked = set()
        for f in spec.planned_m2m:
            linked |= writers.replace_links(f, owners, links[f.name])
        touched = {pk for pk in changed | linked if pk not in inserted}
        # A root row changed by the merge got its new last_modified there; a change
        # of a child row or of links is recorded on the root row here.
        writers.touch(
            spec.root,
            touched if not spec.is_root else {pk for pk in linked - changed if pk not in inserted},
            self.now,
        )
        seen = len(self.written[spec.label]) - seen_before
        counts["fetched"] += seen
        counts["created"] += len(inserted)
        counts["updated"] += len(touched)
        counts["unchanged"] += seen - len(inserted) - len(touched)
        if self.skip:
            counts["skipped"] = self.references.skipped(spec)

    def each_object(self, spec, paths):
        """(remote pk, fields, local pk) of the objects to install, each once.

        Re-fetched dumps come last and are the newest: they are read first, so that
        an object sent twice is installed once, in its latest version.
        """
        refs = self.references
        done = KeySet()
        for path in reversed(paths):
            for obj in self.dumps.objects(path):
                pk = obj["pk"]
                if not done.add_new(pk):
                    continue
                if not self.skip:
                    check_object(spec, obj, self.database)
                    refs.saw(spec, pk)
                elif (spec.root_label, pk) in refs.bad:
                    continue
                yield pk, obj["fields"], self.keys.local_pk(spec.root_label, pk)

    def insert_new(self, spec, paths, owners, links, pending):
        """COPY/INSERT the objects that are new here; list the others in ``pending``."""
        existing = self.keys.loaded[spec.root_label]
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
            writers.write_rows(spec, spec.table, rows())
        if unchecked is not None:
            unchecked.update(inserted)
        self.grown[spec.table] += len(inserted)
        return inserted

    def existing_rows(self, spec, paths, pending, owners, links):
        done = KeySet()
        for path in reversed(paths):
            for obj in self.dumps.objects(path):
                pk = obj["pk"]
                if pk in pending and pk not in done:
                    done.add(pk)
                    local = self.keys.local_pk(spec.root_label, pk)
                    row = self.row(spec, pk, obj["fields"], local, owners, links)
                    if row is not None:
                        yield row

    def row(self, spec, pk, fields, local, owners, links):
        """The row to write for remote object ``pk`` (local pk ``local``), its links
        collected into ``links``; None if it has a bad value (with --skip)."""
        if spec.user_fields and spec.user_fields & fields.keys():
            self.result.user_links_dropped += 1
        try:
            values = convert_row(spec, fields, self.resolve)
        except BadValue as exc:
            self.references.object_problem(spec, pk, str(exc))
            return None
        self.written[spec.label].add(local)
        if spec.planned_m2m:  # the owners of links, for replace_links only
            owners.add(local)
        for f in spec.planned_m2m:
            self.collect_links(spec, pk, f, local, fields.get(f.name, []), links)
        row = [local, *values]
        if spec.is_root:
            row += [pk, self.database.pk, self.now]
        return row

    def resolve(self, target_label, target_root, remote):
        """The local value of a foreign key to remote object ``remote``."""
        self.references.refer(target_label, remote)
        return self.keys.local_pk(target_root, remote)

    def collect_links(self, spec, pk, f, local, values, links):
        refs = self.references
        if not refs.valid_keys(spec, pk, f, values):
            return
        target_label = label(f.related_model)
        target_root = label(root_of(f.related_model))
        for value in values:
            if (target_root, value) in refs.bad:
                continue
            if self.skip and not refs.is_known(target_label, value):
                continue
            refs.refer(target_label, value)
            links[f.name].add((local, self.keys.local_pk(target_root, value)))
