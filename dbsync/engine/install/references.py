"""Reference resolution: which remote objects this run has, what refers to what is
missing, asking for it again, and (with ``--skip``) which objects are left out.

State, all in *remote* pks:

- ``present[model label]``: the pks of the objects in this run's dumps, re-fetched
  ones included. Only ever grows. Without ``--skip`` an object becomes present when
  the install reaches it; with ``--skip``, when the scan before any write does.
- ``refs[model label]``: pks referred to (foreign key, parent row, many-to-many link)
  that were not *known* when referred to; checked once all is read (``missing``).
- known: present, or (unless the dumps are complete) installed before the run
  (the key map's ``loaded``) and still listed by the remote's keys, if it sent them.
  A known object stays known: the checks only ever learn of more.
- ``bad``: (root label, pk) of the objects skipped, only with ``--skip``. Only this
  class adds to it: ``object_problem`` (an object that cannot be installed),
  ``report_dangling`` (one that refers to an object nobody sent) and
  ``propagate_bad`` (one that needs a bad object: its parent row or the target of a
  foreign key; a many-to-many link to a bad object is dropped, not propagated). It
  is complete before anything is written, and the writers leave its objects out.

Without ``--skip`` every problem raises (``ObjectError``, ``DanglingReferences``)
and ``bad`` stays empty.

What is missing is never fetched here, inside the install's transaction: unless all
of it was asked for already (``asked``), the install raises ``MissingObjects``, its
transaction rolls back, and the caller fetches those objects and installs again
(``dbsync.engine.sync.install_fetched``).
"""

from collections import defaultdict

from django.conf import settings

from protocol.formats import MAX_KEY

from ..errors import DanglingReferences, MissingObjects, ObjectError
from ..keysets import KeySet
from ..planner import label
from .spec import BadValue, check_object, convert_row, object_needs, object_targets

MAX_LISTED_PROBLEMS = 20


class References:
    """What the run's objects refer to, and whether it exists; see the module docstring."""

    def __init__(self, specs, dumps, keys, result, *, database, remote_keys, skip, asked, log):
        """``remote_keys``: model label -> remote pks, "present" (the dumps are complete)
        or None (not known); ``asked``: model label -> the remote pks asked for again
        already, or None when none may be (what is missing then dangles)."""
        self.specs = specs
        self.dumps = dumps
        self.keys = keys
        self.result = result
        self.database = database
        # "present": the dumps are complete, so what they hold is all the remote has.
        self.full_dumps = remote_keys == "present"
        self.remote_keys = None if self.full_dumps else remote_keys
        self.skip = skip
        self.asked = asked
        self.log = log
        self.present = defaultdict(KeySet)
        self.refs = defaultdict(set)
        self.bad = set()

    # --- what is known ------------------------------------------------------------------

    def saw(self, spec, pk):
        """An object of ``spec`` in the dumps: present, and its parent rows needed."""
        self.present[spec.label].add(pk)
        for parent in spec.parent_labels:
            self.refer(parent, pk)

    def is_known(self, model_label, pk):
        if pk in self.present[model_label]:
            return True
        if self.full_dumps:
            return False
        root_label = self.specs[model_label].root_label
        if pk not in self.keys.loaded[root_label]:
            return False
        if self.remote_keys is None:
            return True
        # The object's listing, and its model's own (a child row the remote deleted
        # while the object stays, its type changed, is not known either).
        return all(
            pk in keys
            for keys in (self.remote_keys.get(root_label), self.remote_keys.get(model_label))
            if keys is not None
        )

    def refer(self, model_label, pk):
        """Note a reference to be checked at the end, unless its object is known now
        (known objects stay known: the checks only ever learn of more)."""
        if (
            pk not in self.present[model_label]
            and model_label in self.specs
            and not self.is_known(model_label, pk)
        ):
            self.refs[model_label].add(pk)

    def missing(self):
        missing = {}
        for model_label, pks in self.refs.items():
            if model_label not in self.specs:
                continue
            gone = {pk for pk in pks if not self.is_known(model_label, pk)}
            if gone:
                missing[model_label] = gone
        return missing

    # --- problems of one object -------------------------------------------------------

    def object_problem(self, spec, pk, message):
        if not self.skip:
            raise ObjectError(
                f"{self.database}: could not install {spec.label}(pk={pk}): {message}"
            )
        if (spec.root_label, pk) not in self.bad:
            self.bad.add((spec.root_label, pk))
            self.result.problem(spec.label, pk, message)

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

    def skipped(self, spec):
        """How many objects of ``spec``'s dumps are bad."""
        return sum(
            1
            for root_label, pk in self.bad
            if root_label == spec.root_label and pk in self.present[spec.label]
        )

    # --- with --skip: everything checked before anything is written ----------------------

    def scan_model(self, spec, paths):
        for path in paths:
            for obj in self.dumps.objects(path):
                self.scan_object(spec, obj)

    def scan_object(self, spec, obj):
        """With --skip: check an object and note what it needs, writing nothing."""
        check_object(spec, obj, self.database)
        pk, fields = obj["pk"], obj["fields"]
        self.saw(spec, pk)
        try:
            values = convert_row(spec, fields)
        except BadValue as exc:
            self.object_problem(spec, pk, str(exc))
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

    def resolve_before(self):
        """--skip, after the scan: ask for what is missing (``ask_again``), then skip
        what still dangles and whatever needs a skipped object."""
        missing = self.missing()
        if missing:
            self.ask_again(missing)
            self.report_dangling(missing)
        if self.bad:
            self.propagate_bad()

    def propagate_bad(self):
        """With --skip: whatever needs a skipped object (its parent row, or the target
        of a foreign key) is skipped too. The dumps are read again, in install order,
        pass after pass until a pass skips nothing more (usually two), rather than
        keeping every object's references in memory for this rare case."""
        changed = True
        while changed:
            changed = False
            for spec in self.specs.values():
                for path in self.dumps.paths(spec.label):
                    for obj in self.dumps.objects(path):
                        changed |= self.skip_if_needs_bad(spec, obj)

    def skip_if_needs_bad(self, spec, obj):
        pk = obj["pk"]
        if (spec.root_label, pk) in self.bad:
            return False
        for target_label, target_root, value in object_needs(spec, obj):
            if (target_root, value) in self.bad:
                self.bad.add((spec.root_label, pk))
                self.result.problem(
                    spec.label, pk, f"needs {target_label}(pk={value}), which was skipped"
                )
                return True
        return False

    # --- without --skip: checked after everything is written ------------------------------

    def resolve_after(self):
        """Every reference written must point at an object of this run or an earlier
        one: ask for what is missing (``ask_again``), or raise."""
        missing = self.missing()
        if missing:
            self.ask_again(missing)
            self.report_dangling(missing)

    # --- both ----------------------------------------------------------------------------

    def ask_again(self, missing):
        """Raise MissingObjects (the transaction rolls back; the caller fetches them
        and installs again) if some of ``missing`` may still be asked for."""
        if self.asked is None:
            return
        new = {
            model_label: pks - self.asked.get(model_label, set())
            for model_label, pks in missing.items()
        }
        new = {model_label: pks for model_label, pks in new.items() if pks}
        if new:
            count = sum(len(pks) for pks in new.values())
            self.log(f"{count} object(s) referenced but not sent: asking for them again", 1)
            raise MissingObjects(self.database, new)

    def report_dangling(self, missing):
        """Name each object whose reference still dangles; halt unless skipping."""
        problems = []
        for spec in self.specs.values():
            for path in self.dumps.paths(spec.label):
                for obj in self.dumps.objects(path):
                    for target_label, pk in object_targets(spec, obj):
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
