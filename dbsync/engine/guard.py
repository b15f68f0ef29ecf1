"""The deletion guards' shared parts: the allowance grammar and an approval.

A guard (``install.deletions`` for the objects, ``records.guard`` for the records)
lets one run remove at most ``deletion_allowance(max_delete, held)`` of the ``held``
rows of a model (or records of a series), where ``max_delete`` is "all", a count
("100") or a share ("50%"). There is no floor: a share of a small table is small, so
no default lets a remote empty a table. A run refused by a guard lists what it would
have removed (``Refusal.deletions``, kept with the run); an operator may approve that
list once (``Approval``): the next run may then remove what was listed, and no more.
"""

import math
from dataclasses import dataclass, field

UNLIMITED = frozenset({"all", "any", "unlimited"})


def deletion_allowance(max_delete, held):
    """How many of ``held`` rows one run may remove (``math.inf``: any number)."""
    text = str(max_delete).strip().lower()
    if text in UNLIMITED:
        return math.inf
    if text.endswith("%"):
        return math.floor(held * float(text[:-1]) / 100)
    return int(text)


def validate_max_delete(value):
    """Raise ValueError unless ``value`` is "all", a count or a percentage."""
    text = str(value).strip().lower()
    if text in UNLIMITED:
        return text
    number = text[:-1] if text.endswith("%") else text
    try:
        if float(number) < 0:
            raise ValueError
        if not text.endswith("%") and int(number) != float(number):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{value!r} is not a number of objects, a percentage (e.g. 10%) or 'all'"
        ) from None
    return text


@dataclass
class Approval:
    """Deletions an operator approved once, as a refused run listed them.

    ``objects``: root label -> remote pks that may be deleted (with what cascades from
    them); ``records``: series remote pk -> the fewest records it may be left with.
    The guards set ``used_objects`` / ``used_records`` when they allowed something
    only because of it; the sync sets ``installed`` once a run's objects committed
    with it in hand: that run has had its chance, and the approval is spent.
    """

    objects: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)
    used_objects: bool = False
    used_records: bool = False
    installed: bool = False

    @classmethod
    def from_json(cls, data):
        data = data or {}
        return cls(
            objects={label: set(pks) for label, pks in data.get("objects", {}).items()},
            records={int(pk): int(n) for pk, n in data.get("records", {}).items()},
        )

    def covers_objects(self, root_label, remote_pks):
        """Whether every one of ``remote_pks`` (a model's deletions) was approved."""
        approved = self.objects.get(root_label)
        return bool(approved) and set(remote_pks) <= approved

    def covers_series(self, remote_pk, left):
        """Whether a series may be left with ``left`` records."""
        fewest = self.records.get(remote_pk)
        return fewest is not None and left >= fewest
