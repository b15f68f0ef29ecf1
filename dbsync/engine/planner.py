"""Which models to sync, and in which order.

The order is a topological sort of the edges that make one row need another:
multi-table parent links, foreign keys and many-to-many links. An edge that closes
a cycle is dropped from the ordering if it is nullable (PostgreSQL and SQLite check
Django's foreign keys at commit, so a forward reference within the transaction is
fine); a cycle of NOT NULL keys cannot be installed and is reported by name.
"""

from dataclasses import dataclass, field

from django.apps import apps

from protocol.schema import get_served_model, served_fields, served_m2m_fields, served_models

from .errors import PlanError


def root_of(model):
    """The concrete root of a multi-table chain (the table that owns the pk)."""
    parents = model._meta.get_parent_list()
    return parents[-1] if parents else model


def label(model):
    return model._meta.label_lower


@dataclass
class Plan:
    app_label: str
    models: list  # in install order
    excluded: list = field(default_factory=list)

    @property
    def labels(self):
        return [label(m) for m in self.models]

    @property
    def roots(self):
        seen = []
        for model in self.models:
            root = root_of(model)
            if root not in seen:
                seen.append(root)
        return seen

    def family(self, model):
        """The planned models that share ``model``'s rows: its root's whole tree."""
        root = root_of(model)
        return [m for m in self.models if root_of(m) is root]


def _edges(model, planned):
    """(target, nullable, name) for every row this model's rows depend on."""
    for parent in model._meta.parents:
        yield parent, False, f"{label(model)} is a {label(parent)}"
    for f in served_fields(model):
        if f.is_relation and f.related_model is not None:
            target = f.related_model
            if target is model:  # a self-reference never orders models
                continue
            yield target, f.null, f"{label(model)}.{f.name}"
    for f in served_m2m_fields(model):
        if f.related_model is not model:
            yield f.related_model, True, f"{label(model)}.{f.name}"


def _resolve(app_label, names):
    models, unknown = [], []
    for name in names:
        full = name if "." in name else f"{app_label}.{name}"
        model = get_served_model(full)
        if model is None or model._meta.app_label != app_label:
            unknown.append(name)
        else:
            models.append(model)
    return models, unknown


def make_plan(app_label="hcore", exclude=()):
    """The models of ``app_label`` minus ``exclude``, parents and targets first."""
    try:
        apps.get_app_config(app_label)
    except LookupError as exc:
        raise PlanError(f"No application {app_label!r} is installed here.") from exc
    served = served_models(app_label)
    if not served:
        raise PlanError(f"The application {app_label!r} serves no models to sync.")
    excluded, unknown = _resolve(app_label, exclude)
    # The seed told operators to exclude UserProfile; it is never served anyway.
    unknown = [n for n in unknown if n.lower() not in {"userprofile", f"{app_label}.userprofile"}]
    if unknown:
        names = ", ".join(sorted(m.__name__ for m in served))
        raise PlanError(
            f"Cannot exclude unknown model(s) {', '.join(unknown)}; the models of "
            f"{app_label} are: {names}."
        )
    planned = [m for m in served if m not in excluded]
    _check_exclusions(planned, excluded)
    ordered = _toposort(planned)
    return Plan(app_label, ordered, sorted(label(m) for m in excluded))


def _check_exclusions(planned, excluded):
    for model in planned:
        for target, nullable, name in _edges(model, planned):
            if target in excluded and not nullable:
                raise PlanError(
                    f"{label(model)} needs {label(target)} ({name} may not be null): "
                    f"exclude both, or neither."
                )


def _toposort(planned):
    remaining = {m: [] for m in planned}
    for model in planned:
        for target, nullable, name in _edges(model, planned):
            if target in remaining:
                remaining[model].append((target, nullable, name))
    ordered = []
    # Kahn's algorithm over the hard edges first; nullable edges are dropped only to
    # break a cycle, so an acyclic graph keeps every edge in the order.
    hard_only = False
    while remaining:
        ready = sorted(
            (
                m
                for m, deps in remaining.items()
                if all(t not in remaining or (hard_only and n) for t, n, _ in deps)
            ),
            key=label,
        )
        if not ready:
            if not hard_only:
                hard_only = True
                continue
            cycle = ", ".join(
                name for m in remaining for t, n, name in remaining[m] if t in remaining and not n
            )
            raise PlanError(f"The models form a cycle of NOT NULL keys: {cycle}.")
        ordered.extend(ready)
        for m in ready:
            del remaining[m]
        hard_only = False
    return ordered
