"""Compact sets and maps of integer keys, for the install's bookkeeping.

An install keeps, for every replicated object, its remote key, its local key and
whether this run has seen or written it: millions of integers for a large remote.
As Python sets and dicts they cost tens of bytes each (docs/benchmarks.md); here
almost nothing, because keys come in ascending runs: dumps
and key listings are ordered by pk, and local keys come from a sequence. A
``KeySet`` is a list of runs ``[start, end)``; a ``KeyMap`` a list of runs in which
the remote and the local key both step by one. Keys that come out of order, or that
do not fit a 64-bit run, go to a plain set or dict on the side: any order works,
only less compactly.
"""

from array import array
from bisect import bisect_right
from itertools import islice
from operator import lt

# Keys are integers (dumps and listings are checked before their keys get here).
# Runs hold keys below this (array("q") must hold end = key + 1); larger keys, and
# anything that is not a non-negative integer, go to the side set or dict.
RUN_LIMIT = 2**63 - 2
# A key that arrives out of order is put into the runs in place, unless that moves
# more runs than this (then it goes to the side set, so that no order is quadratic).
MAX_SHIFT = 1 << 16


def _runnable(key):
    return type(key) is int and 0 <= key < RUN_LIMIT


class KeySet:
    """A set of integer keys, compact for ascending runs."""

    __slots__ = ("starts", "ends", "extra", "count", "hit_start", "hit_end")

    def __init__(self, keys=()):
        self.starts = array("q")
        self.ends = array("q")
        self.extra = set()
        self.count = 0
        # The run last found: keys are mostly looked up in order, so most lookups
        # fall in it. Runs only grow, so it never holds a key the set does not.
        self.hit_start = self.hit_end = 0
        for key in keys:
            self.add(key)

    @classmethod
    def from_runs(cls, runs):
        """A set from ``(start, end)`` pairs, ascending and not overlapping."""
        keys = cls()
        for start, end in runs:
            if keys.ends and start == keys.ends[-1]:
                keys.ends[-1] = end
            else:
                keys.starts.append(start)
                keys.ends.append(end)
            keys.count += end - start
        return keys

    @classmethod
    def from_sorted(cls, keys):
        """A set from a list of keys; fast (no key by key) when it is ascending, as a
        keys listing is: runs are found by halving wherever the keys are not dense."""
        if not keys or not all(map(lt, keys, islice(keys, 1, None))):
            return cls(keys)
        if not all(_runnable(k) for k in (keys[0], keys[-1])):
            return cls(keys)
        runs, pending = [], [(0, len(keys))]
        while pending:
            lo, hi = pending.pop()
            if keys[hi - 1] - keys[lo] == hi - lo - 1:  # ascending and dense: one run
                runs.append((keys[lo], keys[hi - 1] + 1))
            elif hi - lo <= 64:  # sparse here: key by key
                for key in keys[lo:hi]:
                    if runs and key == runs[-1][1]:
                        runs[-1] = (runs[-1][0], key + 1)
                    else:
                        runs.append((key, key + 1))
            else:
                mid = (lo + hi) // 2
                pending += [(mid, hi), (lo, mid)]  # the lower half first
        return cls.from_runs(runs)

    def add(self, key):
        ends = self.ends
        if ends and _runnable(key):
            last = ends[-1]
            if key == last:
                ends[-1] = key + 1
                self.count += 1
                return
            if key > last:
                self.starts.append(key)
                ends.append(key + 1)
                self.count += 1
                return
        elif not ends and _runnable(key) and not self.extra:
            self.starts.append(key)
            ends.append(key + 1)
            self.count += 1
            return
        if key in self:
            return
        self.count += 1
        if _runnable(key) and not self._add_inside(key):
            self.extra.add(key)
        elif not _runnable(key):
            self.extra.add(key)

    def add_new(self, key):
        """Add ``key``; return whether it was new (one call where the install asks
        both, key after key: an ascending key is new without a lookup)."""
        ends = self.ends
        if ends and _runnable(key):
            last = ends[-1]
            # A runnable key in ``extra`` is below the last run: these are new.
            if key == last:
                ends[-1] = key + 1
                self.count += 1
                return True
            if key > last:
                self.starts.append(key)
                ends.append(key + 1)
                self.count += 1
                return True
        if key in self:
            return False
        self.add(key)
        return True

    def _add_inside(self, key):
        """Put a key that is below the last run into the runs; False if that would
        shift too much (then it goes to the side set)."""
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, key) - 1  # the run before the key, or -1
        if i >= 0 and key == ends[i]:
            ends[i] = key + 1
            if i + 1 < len(starts) and starts[i + 1] == key + 1:
                ends[i] = ends[i + 1]
                del starts[i + 1]
                del ends[i + 1]
            return True
        if i + 1 < len(starts) and starts[i + 1] == key + 1:
            starts[i + 1] = key
            return True
        if len(starts) - i > MAX_SHIFT:
            return False
        starts.insert(i + 1, key)
        ends.insert(i + 1, key + 1)
        return True

    def update(self, keys):
        if isinstance(keys, KeySet):
            self._union(keys)
            return
        for key in keys:
            self.add(key)

    def _union(self, other):
        if not other.count:
            return
        if not self.count:
            self.starts, self.ends = array("q", other.starts), array("q", other.ends)
            self.extra, self.count = set(other.extra), other.count
            return
        if not self.extra and not other.extra and other.starts[0] >= self.ends[-1]:
            # ``other`` comes after every key here (a listing read a piece at a time):
            # its runs are appended, the first joined to the last one here if adjacent.
            first = 0
            if other.starts[0] == self.ends[-1]:
                self.ends[-1] = other.ends[0]
                first = 1
            self.starts.extend(other.starts[first:])
            self.ends.extend(other.ends[first:])
            self.count += other.count
            return
        runs = sorted(zip(self.starts + other.starts, self.ends + other.ends, strict=True))
        starts, ends = array("q"), array("q")
        for start, end in runs:
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        extra = self.extra | other.extra
        self.starts, self.ends, self.extra = starts, ends, set()
        self.hit_start = self.hit_end = 0
        self.count = sum(e - s for s, e in zip(starts, ends, strict=True))
        for key in extra:
            if not self._in_runs(key):
                self.extra.add(key)
                self.count += 1

    def _in_runs(self, key):
        if self.hit_start <= key < self.hit_end:
            return True
        ends = self.ends
        if not ends or key >= ends[-1] or not _runnable(key):
            return False
        i = bisect_right(self.starts, key) - 1
        if i >= 0 and key < ends[i]:
            self.hit_start, self.hit_end = self.starts[i], ends[i]
            return True
        return False

    def __contains__(self, key):
        return self._in_runs(key) or (bool(self.extra) and key in self.extra)

    def __len__(self):
        return self.count

    def __bool__(self):
        return self.count > 0

    def runs(self):
        return zip(self.starts, self.ends, strict=True)

    def __iter__(self):
        for start, end in self.runs():
            yield from range(start, end)
        yield from self.extra

    def difference(self, other):
        """The keys of this set that are not in ``other`` (a KeySet or any container)."""
        if not isinstance(other, KeySet):
            return [key for key in self if key not in other]
        gone = []
        for start, end in self.runs():
            # The runs of ``other`` that overlap [start, end), in order.
            i = max(bisect_right(other.starts, start) - 1, 0)
            at = start
            while at < end:
                if i < len(other.starts) and other.starts[i] < end:
                    o_start, o_end = other.starts[i], other.ends[i]
                    if o_end <= at:
                        i += 1
                        continue
                    gone.extend(k for k in range(at, min(o_start, end)) if k not in other.extra)
                    at = max(at, o_end)
                    i += 1
                else:
                    gone.extend(k for k in range(at, end) if k not in other.extra)
                    break
        gone.extend(key for key in self.extra if key not in other)
        return gone


class KeyMap:
    """remote key -> local key, compact where both ascend together."""

    __slots__ = ("remote", "local", "lengths", "extra", "count", "hit")

    def __init__(self):
        self.remote = array("q")
        self.local = array("q")
        self.lengths = array("q")
        self.extra = {}
        self.count = 0
        self.hit = (0, 0, 0)  # (start, end, local start) of the run last found

    @classmethod
    def from_runs(cls, runs):
        """A map from ``(first remote key, first local key, length)``, by remote key."""
        mapping = cls()
        for remote, local, length in runs:
            mapping.remote.append(remote)
            mapping.local.append(local)
            mapping.lengths.append(length)
            mapping.count += length
        return mapping

    def get(self, key, default=None):
        start, end, local = self.hit
        if start <= key < end:
            return local + key - start
        if not self.count:
            return default
        if self.extra:
            value = self.extra.get(key)
            if value is not None:
                return value
        if not _runnable(key):
            return default
        i = bisect_right(self.remote, key) - 1
        if i >= 0:
            start = self.remote[i]
            length = self.lengths[i]
            if key < start + length:
                self.hit = (start, start + length, self.local[i])
                return self.local[i] + key - start
        return default

    def __getitem__(self, key):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key):
        return self.get(key) is not None

    def __setitem__(self, key, value):
        """Map a key not mapped yet (keys are mapped once)."""
        remote = self.remote
        if _runnable(key) and _runnable(value):
            if remote:
                last = remote[-1] + self.lengths[-1]
                if key == last and value == self.local[-1] + self.lengths[-1]:
                    self.lengths[-1] += 1
                    self.count += 1
                    return
                if key >= last:
                    self._append(key, value)
                    return
            elif not self.extra:
                self._append(key, value)
                return
        if key in self:
            raise ValueError(f"key {key} is mapped already")
        self.count += 1
        if not (_runnable(key) and _runnable(value) and self._set_inside(key, value)):
            self.extra[key] = value

    def _set_inside(self, key, value):
        """Put a key below the last run into the runs (False: it would shift too much)."""
        remote, local, lengths = self.remote, self.local, self.lengths
        i = bisect_right(remote, key) - 1  # the run before the key, or -1
        if i >= 0 and key == remote[i] + lengths[i] and value == local[i] + lengths[i]:
            lengths[i] += 1
            return True
        j = i + 1
        if j < len(remote) and key + 1 == remote[j] and value + 1 == local[j]:
            remote[j], local[j] = key, value
            lengths[j] += 1
            return True
        if len(remote) - j > MAX_SHIFT:
            return False
        remote.insert(j, key)
        local.insert(j, value)
        lengths.insert(j, 1)
        return True

    def _append(self, key, value):
        self.remote.append(key)
        self.local.append(value)
        self.lengths.append(1)
        self.count += 1

    def __len__(self):
        return self.count

    def keys(self):
        """The remote keys, as a KeySet."""
        keys = KeySet.from_runs((r, r + n) for r, n in zip(self.remote, self.lengths, strict=True))
        keys.update(self.extra)
        return keys

    def max_value(self, default=0):
        ends = (v + n - 1 for v, n in zip(self.local, self.lengths, strict=True))
        return max(*ends, *self.extra.values(), default, default)
