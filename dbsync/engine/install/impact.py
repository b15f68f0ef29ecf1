"""What deleting some objects would remove, found by walking the models' relations.

Nothing is left to the database's ON DELETE: from the objects a run would delete, the
walk follows every relation that points at them, model by model, as Django's
deletion does (``on_delete``), and counts what goes with them:

- rows that cascade (``CASCADE``), and their parent rows (multi-table inheritance:
  a station is a gpoint and a gentity), walked again from there, one direct parent
  at a time up to a row already counted, as Django's deletion does; the child rows of
  an object whose concrete type changed (``add(..., keep_parents=True)``) go without
  their parent rows;
- many-to-many links (rows of an auto-created ``through`` table, which points at
  both ends: found as a relation of either);
- rows of the models that hold no replicated objects but data of them (the records
  of a series, its records summary and sync state): counted, not listed;
- the files of ``GentityFile`` objects that go;
- rows that stay but lose a key (``SET_NULL``): counted as unlinked.

On the way it notes what must stop the deletion instead: an object of another origin
(``outsiders``), and, given the remote's key listings, an object that the remote
still lists yet would go in a cascade or lose a key (``SET_NULL``), its copy still
referring to one the listing lacks (``contradictions``: the listing lacks what the
remote's other objects refer to). The walk runs after the install wrote this run's
dumps, so a referrer whose key the remote itself cleared no longer points there.
"""

from collections import defaultdict
from dataclasses import dataclass

from django.db import models

from hcore.models import GentityFile, Record

from ..planner import label, root_of

MAX_LISTED = 20


@dataclass
class Contradiction:
    """Objects the remote still lists that refer to objects its listing lacks."""

    gone_label: str
    gone_pks: list  # remote pks of the unlisted objects referred to
    referrer_label: str
    field: str
    referrer_pks: list  # remote pks of the still-listed referrers

    def __str__(self):
        return (
            f"{len(self.referrer_pks)} {self.referrer_label} object(s) it still lists "
            f"(remote pks {listed(self.referrer_pks)}) refer through {self.field} to "
            f"{len(self.gone_pks)} {self.gone_label} object(s) that its listing lacks "
            f"(remote pks {listed(self.gone_pks)})"
        )


def listed(pks):
    pks = sorted(pks)
    text = ", ".join(str(pk) for pk in pks[:MAX_LISTED])
    return text + (f", … ({len(pks)} in all)" if len(pks) > MAX_LISTED else "")


def is_replicated(model):
    return any(f.name == "original_db" for f in model._meta.concrete_fields)


def reverse_relations(model):
    """The relations that point at ``model``'s own table (not at its parents')."""
    return [
        f
        for f in model._meta.get_fields(include_parents=False, include_hidden=True)
        if f.auto_created and not f.concrete and (f.one_to_one or f.one_to_many)
    ]


class Impact:
    """Everything that deleting some of ``database``'s objects would remove.

    ``remote_keys``: root label -> the remote pks the remote lists (a model not in
    it is not judged for contradictions). ``links_of_others``: a many-to-many link
    from an object of another origin to one that goes is an outsider too (an
    offboarding must not change a local object's links; a sync's deletions count
    such links only). Call ``add`` with the objects to delete.
    """

    def __init__(self, database, remote_keys=None, *, links_of_others=False):
        self.database = database
        self.remote_keys = remote_keys or {}
        self.links_of_others = links_of_others
        self.rows = defaultdict(set)  # concrete model -> local pks
        self.counted = defaultdict(int)  # label -> rows of data models (records, ...)
        self.links = defaultdict(int)  # through label -> links removed
        self.link_pks = defaultdict(set)  # through label -> their pks (both ends may go)
        self.unlinked = defaultdict(int)  # "label.field" -> rows kept, their key cleared
        self.outsiders = []
        self.contradictions = []
        self.files = 0

    # --- the walk -----------------------------------------------------------------------

    def add(self, model, pks, keep_parents=False):
        """Count the rows ``pks`` of ``model`` and what goes with them; with
        ``keep_parents``, their parent rows stay (a child row of a multi-table model
        whose object changed type: Django's ``collect(..., keep_parents=True)``)."""
        pending = [(model, set(pks), keep_parents)]
        while pending:
            model, pks, keep = pending.pop()
            new = pks - self.rows[model]
            if not new:
                continue
            self.rows[model] |= new
            if not keep:
                # The direct parents, each walked again: a chain stops at a row already
                # counted (the kept parent of a type change's cascade, say), as Django's.
                pending.extend((parent, new, False) for parent in model._meta.parents)
            for relation in reverse_relations(model):
                found = self.follow(model, relation, new)
                if found:
                    pending.append((relation.related_model, found, False))
            if model is GentityFile:
                self.files += (
                    GentityFile._base_manager.filter(pk__in=new).exclude(content="").count()
                )

    def follow(self, model, relation, pks):
        """Walk one relation pointing at ``pks`` of ``model``; return the pks of the
        related rows that go too (to walk from), or None."""
        related, field = relation.related_model, relation.field
        on_delete = relation.on_delete
        referrers = related._base_manager.filter(**{f"{field.name}__in": pks})
        if related._meta.auto_created:  # a many-to-many through table: links
            # A link between two objects that both go is reached from either: once.
            self.link_pks[label(related)].update(referrers.values_list("pk", flat=True))
            self.links[label(related)] = len(self.link_pks[label(related)])
            if self.links_of_others:
                self.note_linked_outsiders(related, field, referrers)
            return None
        if on_delete is models.DO_NOTHING:
            return None
        if not is_replicated(related):
            # Data of the objects (records, their summaries): counted, never listed.
            if on_delete is models.CASCADE:
                self.counted[label(related)] += referrers.count()
            return None
        if on_delete is not models.CASCADE:
            kept = referrers.exclude(pk__in=self.rows.get(related, ()))
            if on_delete in (models.PROTECT, models.RESTRICT):
                self.outsiders.extend(
                    f"{label(related)}(pk={pk}) protects it"
                    for pk in kept.values_list("pk", flat=True)[:MAX_LISTED]
                )
                return None
            self.unlinked[f"{label(related)}.{field.name}"] += kept.count()
            # A key cleared on an object the remote still lists, whose copy (in this
            # run's dumps, or unchanged since) still refers to the object it lacks.
            mine = dict(kept.filter(original_db=self.database).values_list("pk", "original_id"))
            self.check_listed(model, field, related, mine, kept)
            self.outsiders.extend(
                f"{label(related)}(pk={pk}).{field.name}"
                for pk in kept.exclude(original_db=self.database).values_list("pk", flat=True)[
                    :MAX_LISTED
                ]
            )
            return None
        self.outsiders.extend(
            f"{label(related)}(pk={pk})"
            for pk in referrers.exclude(original_db=self.database).values_list("pk", flat=True)[
                :MAX_LISTED
            ]
        )
        found = dict(referrers.filter(original_db=self.database).values_list("pk", "original_id"))
        self.check_listed(model, field, related, found, referrers)
        return set(found)

    def note_linked_outsiders(self, through, field, links):
        """The objects of another origin at the other end of ``links`` (rows of the
        many-to-many table ``through`` whose ``field`` points at what goes)."""
        for other in through._meta.concrete_fields:
            if other is field or not other.is_relation or not is_replicated(other.related_model):
                continue
            pks = (
                links.exclude(**{f"{other.name}__original_db": self.database})
                .values_list(other.attname, flat=True)
                .distinct()[:MAX_LISTED]
            )
            self.outsiders.extend(
                f"{label(other.related_model)}(pk={pk}) links to it ({label(through)})"
                for pk in pks
            )

    def check_listed(self, model, field, related, found, referrers):
        """A cascade to objects the remote still lists, or a key of theirs cleared
        (``found``: local pk -> remote pk of the referrers of this remote), is a
        contradiction. Along a parent link (a gpoint's station), the child's own
        listing tells: its object stays listed when only its type changed."""
        parent_link = field.remote_field.parent_link
        listing = self.remote_keys.get(label(related if parent_link else root_of(related)))
        if listing is None or not found:
            return
        still = [remote for remote in found.values() if remote in listing]
        if not still:
            return
        targets = referrers.filter(original_id__in=still).values_list(field.attname, flat=True)
        gone = model._base_manager.filter(pk__in=set(targets)).values_list(
            "original_id", flat=True
        )
        self.contradictions.append(
            Contradiction(label(model), list(gone), label(related), field.name, still)
        )

    # --- what it found ------------------------------------------------------------------

    @property
    def records(self):
        return self.counted.get(label(Record), 0)

    def objects(self):
        """Label -> objects that go, of every replicated model reached, in label order."""
        return dict(sorted((label(m), len(pks)) for m, pks in self.rows.items()))

    def root_remote_pks(self):
        """Label -> the remote pks of the objects that go (the keys an approval names):
        of each root model, and of each child model the rows whose parent row stays
        (a type change)."""
        keys = {}
        for model, pks in self.rows.items():
            top = set(pks)
            for parent in model._meta.parents:
                top -= self.rows.get(parent, set())
            if not top:
                continue
            keys[label(model)] = sorted(
                model._base_manager.filter(pk__in=top).values_list("original_id", flat=True)
            )
        return keys

    @property
    def total_objects(self):
        """Objects that go, or lose their type's rows (a change of concrete type: the
        child rows go, the parent row stays), each once: a multi-table family's rows
        share their pk, so the pks of every model of a root, together."""
        families = {}
        for model, pks in self.rows.items():
            families.setdefault(root_of(model), set()).update(pks)
        return sum(len(pks) for pks in families.values())

    def totals(self):
        return {
            "objects": self.total_objects,
            "records": self.records,
            "links": sum(self.links.values()),
            "files": self.files,
            "unlinked": sum(self.unlinked.values()),
        }

    def expected_counts(self):
        """Label -> rows a deletion should report, to check Django's deletion against."""
        expected = {label(m): len(pks) for m, pks in self.rows.items() if pks}
        expected.update((name, n) for name, n in self.links.items() if n)
        if self.records:
            expected[label(Record)] = self.records
        return expected
