"""One model's replica against its remote: checksums over key ranges, bisected where
they differ, then the row hashes of the small ranges that still differ. No dump is
downloaded; what crosses the network grows with the differences, not with the model.

Rows the remote changed after the replica's cursor are the next sync's work, not a
divergence: they are counted as pending. With change capture (the replica has a
capture cursor and the remote speaks protocol 3) the remote says which by its change
markers (``changed_since``): a row written by a transaction at or after the cursor,
``update()`` and SQL included, and a key deleted by one (its tombstone). Otherwise, on
the clock: a row whose ``last_modified`` is after the last sync's (``after``). The ranges
that differ are asked for once more at the end, so that a change at the remote during
the verification raises no false alarm.
"""

from dataclasses import dataclass, field
from datetime import datetime

from protocol.formats import MAX_KEY
from protocol.rowhash import part_bounds

from ..capture import read_capture
from ..errors import PayloadError
from ..fetch import key_chunks
from ..planner import label
from .local import LocalRows

# Sub-ranges a request: a part costs ~45 bytes of JSON, a listed object ~28. Splitting a
# range of r objects into PARTS costs PARTS * 45 bytes; listing it r * 28: below about
# PARTS * 45 / 28 objects, listing is the cheaper (docs/benchmarks.md has the figures).
PARTS = 16
LEAF_ROWS = 24
# Small ranges listed a request, from a remote that takes ``ranges`` (protocol 3): at
# most LEAF_ROWS objects each, so 16 of them stay well under the remote's
# API_MAX_KEYS_PER_REQUEST (1,000 by default) and its MAX_RANGES (64).
LEAVES_PER_REQUEST = 16


@dataclass
class ModelVerdict:
    """What the verification of one model found."""

    model: str
    remote_count: int = 0
    local_count: int = 0
    changed: list = field(default_factory=list)  # remote pks: both have it, content differs
    missing: list = field(default_factory=list)  # remote pks the replica lacks
    extra: list = field(default_factory=list)  # remote pks the remote no longer has
    pending: int = 0  # changed at the remote after the replica's cursor: the next sync's
    requests: int = 0

    @property
    def differing(self):
        return len(self.changed) + len(self.missing) + len(self.extra)

    @property
    def equal(self):
        return not self.differing

    def describe(self):
        if self.equal:
            text = f"{self.model}: equal ({self.local_count} objects)"
        else:
            kinds = [
                f"{n} {what}"
                for n, what in (
                    (len(self.changed), "changed here"),
                    (len(self.missing), "missing here"),
                    (len(self.extra), "no longer at the remote"),
                )
                if n
            ]
            text = f"{self.model}: {self.differing} objects differ ({', '.join(kinds)})"
        if self.pending:
            text += f"; {self.pending} changed at the remote since the last sync"
        return text

    def as_json(self, listed=100):
        return {
            "model": self.model,
            "equal": self.equal,
            "differing": self.differing,
            "changed": self.changed[:listed],
            "missing": self.missing[:listed],
            "extra": self.extra[:listed],
            "pending": self.pending,
        }


@dataclass(frozen=True)
class Since:
    """What the remote counts as pending: changed by transaction ``changed_since`` or
    later (change capture), or else after the time ``after`` (the clock)."""

    after: datetime | None = None
    changed_since: int | None = None
    batched: bool = False  # the remote lists several ranges a request (protocol 3)

    def params(self):
        if self.changed_since is not None:
            return {"changed_since": self.changed_since}
        return {"after": self.after.isoformat()} if self.after is not None else {}


def pending_since(database, manifest, client):
    """The replica's cursor, as the hashes endpoint takes it: its capture cursor where
    the remote is the one it was taken from and takes ``changed_since`` (protocol 3),
    else its last sync's time."""
    protocol = manifest.get("protocol")
    batched = isinstance(protocol, int) and protocol >= 3
    if batched and database.capture_cursor is not None:
        capture = read_capture(manifest, client)
        if capture is not None and capture.identity == database.remote_identity:
            return Since(changed_since=database.capture_cursor, batched=True)
    return Since(after=database.sync_cursor, batched=batched)


class RemoteRows:
    """The remote's side: its checksums and hashes endpoints for one model."""

    def __init__(self, client, entry):
        self.client = client
        self.entry = entry
        self.requests = 0

    def checksums(self, low, high, parts):
        self.requests += 1
        body = self.client.get_json(
            self.entry["checksums_url"], {"from": low, "to": high, "parts": parts}
        )
        try:
            return {
                int(part): (int(count), str(checksum), int(first), int(last))
                for part, count, checksum, first, last in body["parts"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"{self.client}: malformed checksums of a range: {exc}") from exc

    def hashes(self, low=None, high=None, pks=None, since=Since(), ranges=None):
        """{pk: (hash, whether it is pending)} of [low, high], ``pks`` or ``ranges``; a
        key the remote deleted since ``since`` (a tombstone): (None, True)."""
        if pks is not None:
            params = {"pks": ",".join(map(str, pks))}
        elif ranges is not None:
            params = {"ranges": ",".join(f"{a}-{b}" for a, b in ranges)}
        else:
            params = {"from": low, "to": high}
        params.update(since.params())
        self.requests += 1
        body = self.client.get_json(self.entry["hashes_url"], params)
        try:
            rows = {}
            for row in body:
                pending = len(row) > 2 and row[2] == 1
                if row[1] is None and not pending:
                    raise ValueError(f"object {row[0]} has no hash")
                rows[int(row[0])] = (None if row[1] is None else str(row[1]), pending)
            return rows
        except (IndexError, TypeError, ValueError) as exc:
            raise PayloadError(f"{self.client}: malformed hashes of a range: {exc}") from exc


def verify_model(database, model, client, entry, since):
    """The ModelVerdict of ``model``: rows up to ``since`` (a Since: the replica's
    cursor) compared."""
    remote = RemoteRows(client, entry)
    local = LocalRows(database, model)
    verdict = ModelVerdict(label(model))
    leaves = differing_leaves(remote, local, verdict)
    found = Found()
    step = LEAVES_PER_REQUEST if since.batched else 1
    for i in range(0, len(leaves), step):
        batch = leaves[i : i + step]
        theirs = (
            remote.hashes(ranges=batch, since=since)
            if since.batched
            else remote.hashes(*batch[0], since=since)
        )
        ours = {}
        for low, high in batch:
            ours.update(local.hashes(low, high))
        compare(theirs, ours, found)
    keys = sorted({*found.changed, *found.missing, *found.extra})
    if keys:
        # Once more, the objects that differ: what changed meanwhile is not a divergence.
        again = Found()
        for chunk in key_chunks(keys):
            compare(remote.hashes(pks=chunk, since=since), local.hashes(pks=chunk), again)
        found.changed = sorted(set(found.changed) & set(again.changed))
        found.missing = sorted(set(found.missing) & set(again.missing))
        found.extra = sorted(set(found.extra) & set(again.extra))
        found.pending += again.pending
    verdict.changed, verdict.missing, verdict.extra = found.changed, found.missing, found.extra
    verdict.pending = found.pending
    verdict.requests = remote.requests
    return verdict


def differing_leaves(remote, local, verdict):
    """The small key ranges [(low, high)] whose checksums differ, by bisection."""
    leaves, todo, first = [], [(0, MAX_KEY)], True
    while todo:
        low, high = todo.pop()
        theirs = remote.checksums(low, high, PARTS)
        ours = local.checksums(low, high, PARTS)
        if first:
            verdict.remote_count = sum(p[0] for p in theirs.values())
            verdict.local_count = sum(p[0] for p in ours.values())
            first = False
        bounds = part_bounds(low, high, PARTS)
        for part in sorted(set(theirs) | set(ours)):
            a, b = theirs.get(part), ours.get(part)
            if a is not None and b is not None and a[:2] == b[:2]:
                continue
            present = [p for p in (a, b) if p is not None]
            sub_low = max(bounds[part][0], min(p[2] for p in present))
            sub_high = min(bounds[part][1], max(p[3] for p in present))
            remote_count = a[0] if a is not None else 0
            if remote_count <= LEAF_ROWS or sub_low == sub_high:
                leaves.append((sub_low, sub_high))
            else:
                todo.append((sub_low, sub_high))
    return sorted(leaves)


@dataclass
class Found:
    changed: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    pending: int = 0


def compare(theirs, ours, found):
    """Add to ``found`` what differs between the remote's hashes and ours."""
    for pk in sorted(set(theirs) | set(ours)):
        mine = ours.get(pk)
        if pk not in theirs:
            found.extra.append(pk)
            continue
        hash_, pending = theirs[pk]
        if mine == hash_:
            continue  # equal, or deleted at the remote (a tombstone) and here too
        if pending:
            found.pending += 1  # changed or deleted since the cursor: the next sync's
        elif mine is None:
            found.missing.append(pk)
        else:
            found.changed.append(pk)
