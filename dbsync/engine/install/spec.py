"""How one model's dump maps onto its table, and the checks and conversion of one
object against it. Pure: nothing here reads or writes the database or any state of
the install."""

from django.db import models

from protocol.legacy import DROPPED_2010_FIELDS
from protocol.schema import BOOKKEEPING_FIELDS, served_fields, served_m2m_fields

from ..convert import value_converter
from ..errors import PayloadError, SchemaMismatch
from ..planner import label, root_of

MISSING = object()


class BadValue(ValueError):
    """A field's value that cannot be installed; the message names the field."""


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
            # convert_row checks None itself: the converter sees values only.
            convert = value_converter(f.target_field if target else f)
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
        # bookkeeping, its keys to user accounts, and the fields of 2010 that today's
        # models left out (a legacy remote's listings have them).
        local = {f.name for f in model._meta.local_fields} | {
            f.name for f in model._meta.local_many_to_many
        }
        self.ignored = (
            (local - self.known)
            | (BOOKKEEPING_FIELDS & local)
            | DROPPED_2010_FIELDS.get(self.label, frozenset())
        )
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


def without_file_name(convert):
    """A file field's converter that checks the remote's value and keeps nothing of it:
    a name in the remote's storage means nothing here (``dbsync.engine.files`` sets ours)."""

    def convert_file(value):
        convert(value)
        return ""

    return convert_file


def check_object(spec, obj, database):
    """Raise unless ``obj`` is an object of ``spec``'s model with fields it knows."""
    model = obj["model"]
    if model != spec.label and model.lower() != spec.label:
        raise PayloadError(
            f"the {spec.label} dump from {database} contains an object of "
            f"{obj['model'][:100]!r} (pk={obj['pk']}); only {spec.label} belongs there"
        )
    if obj["fields"].keys() <= spec.accepted:
        return
    unknown = obj["fields"].keys() - spec.accepted
    if unknown:
        raise SchemaMismatch(
            f"{spec.label}(pk={obj['pk']}) from {database} has field(s) "
            f"{', '.join(sorted(repr(u[:100]) for u in unknown))} that the local model "
            f"does not have; the remote runs a different schema"
        )


def convert_row(spec, fields, resolve=None):
    """The row's column values, without the pk and the bookkeeping columns.

    ``resolve(target label, target root label, remote pk)`` gives the local value of
    a key to a planned model; without it, keys stay remote. Raises ``BadValue``
    naming the field for a value that cannot be installed (any ValueError, that of
    ``resolve`` included).
    """
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
            elif resolve is not None:
                append(resolve(target_label, target_root, convert(raw)))
            else:
                append(convert(raw))
    except ValueError as exc:
        raise BadValue(f"field {name!r}: {exc}") from exc
    return values


def object_needs(spec, obj):
    """(label, root label, pk) of each row ``obj`` cannot be installed without: its
    parent rows and the targets of its foreign keys (not its many-to-many links)."""
    for parent in spec.parent_labels:
        yield parent, spec.root_label, obj["pk"]
    fields = obj["fields"]
    for _f, name, _c, target_label, target_root in spec.columns:
        value = fields.get(name)
        if target_label is not None and isinstance(value, int):
            yield target_label, target_root, value


def object_targets(spec, obj):
    """(label, pk) of every object ``obj`` refers to, its many-to-many links included."""
    for target_label, _root, pk in object_needs(spec, obj):
        yield target_label, pk
    fields = obj["fields"]
    for f in spec.planned_m2m:
        values = fields.get(f.name)
        for value in values if isinstance(values, list) else ():
            if isinstance(value, int):  # not a nested list or object: not a key
                yield label(f.related_model), value
