"""The install's compact key sets and maps behave as Python's sets and dicts do."""

import random

import pytest

from dbsync.engine.keysets import KeyMap, KeySet


def key_streams(rng):
    """Keys as a sync meets them: ascending runs, gaps, re-fetched stragglers, and the
    odd key no run can hold."""
    dense = list(range(1, 2000))
    gappy = sorted(rng.sample(range(1, 10**6), 3000))
    mixed = dense[:500] + [rng.randrange(1, 500) for _ in range(50)] + dense[900:]
    odd = [5, 2**63 - 1, 7, 2**64, 6, 1]
    shuffled = rng.sample(range(1, 3000), 2999)
    return [dense, gappy, mixed, odd, shuffled, []]


@pytest.mark.parametrize("seed", range(5))
def test_keyset_is_a_set(seed):
    rng = random.Random(seed)
    for keys in key_streams(rng):
        compact = KeySet(keys)
        expected = set(keys)
        assert len(compact) == len(expected)
        assert set(compact) == expected
        probes = list(expected)[:200] + [rng.randrange(0, 10**6) for _ in range(500)]
        for key in probes + [-1, 0, 2**63 - 1, 2**64, 2**70]:
            assert (key in compact) == (key in expected), key
        for other in key_streams(rng):
            other_set = set(other)
            assert sorted(compact.difference(KeySet(other))) == sorted(expected - other_set)
            assert sorted(compact.difference(other_set)) == sorted(expected - other_set)
            assert set(KeySet.from_sorted(list(keys))) == expected
            union = KeySet(keys)
            union.update(KeySet(other))
            assert set(union) == expected | other_set and len(union) == len(expected | other_set)


@pytest.mark.parametrize("seed", range(5))
def test_add_new_says_whether_a_key_was_new(seed):
    rng = random.Random(seed)
    for keys in key_streams(rng):
        compact, expected = KeySet(), set()
        for key in keys + keys[: len(keys) // 3]:  # each stream, then some keys again
            assert compact.add_new(key) == (key not in expected), key
            expected.add(key)
        assert set(compact) == expected and len(compact) == len(expected)


def test_keyset_stays_small_for_ascending_keys():
    keys = KeySet(range(1, 1_000_001))
    assert len(keys.starts) == 1 and not keys.extra
    listed = KeySet.from_sorted([*range(1, 500_001), *range(500_002, 1_000_001)])
    assert list(listed.runs()) == [(1, 500_001), (500_002, 1_000_001)]
    assert len(listed) == 999_999
    assert 1 in keys and 1_000_000 in keys and 1_000_001 not in keys


@pytest.mark.parametrize("seed", range(5))
def test_keymap_is_a_dict(seed):
    rng = random.Random(seed)
    for keys in key_streams(rng):
        compact, expected = KeyMap(), {}
        local = rng.randrange(1, 1000)
        for key in keys:
            if key in expected:
                continue
            # Local keys mostly step by one, with jumps as a sequence pool gives them.
            local += 1 if rng.random() < 0.9 else rng.randrange(2, 50)
            compact[key] = expected[key] = local
        assert len(compact) == len(expected)
        for key, value in expected.items():
            assert compact[key] == value
        for key in [0, -3, 10**7, 2**64]:
            if key not in expected:
                assert compact.get(key) is None and key not in compact
                with pytest.raises(KeyError):
                    compact[key]
        assert set(compact.keys()) == set(expected)
        assert compact.max_value() == max(expected.values(), default=0)


def test_keys_met_ahead_of_their_turn_keep_the_rest_compact():
    """An object referred to before its dump line (a forward reference) gets its local
    key early; the objects before it in the dump still form one run."""
    mapping, seen = KeyMap(), KeySet()
    mapping[900_000] = 5
    seen.add(900_000)
    for key in range(1, 900_000):
        mapping[key] = key + 10
        seen.add(key)
    assert len(mapping.remote) == 2 and not mapping.extra
    assert len(seen.starts) == 1 and not seen.extra and len(seen) == 900_000
    assert mapping[900_000] == 5 and mapping[899_999] == 900_009


def test_keymap_from_runs():
    mapping = KeyMap.from_runs([(1, 100, 3), (10, 5, 2)])
    assert [mapping.get(k) for k in (1, 2, 3, 4, 10, 11, 12)] == [100, 101, 102, None, 5, 6, None]
    assert len(mapping) == 5


@pytest.mark.django_db
@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [(5, 100), (6, 101), (7, 102)],  # one run
        [(1, 10), (2, 12), (3, 11)],  # dense both sides, not one run
        [(1, 10), (2, 11), (3, 12), (7, 13), (8, 2), (9, 3)],
        # Same distance, not contiguous: (1, 11) and (3, 13) are no run with (2, 5).
        [(1, 11), (2, 5), (3, 13)],
        [(5, 100), (6, 102), (7, 101), (8, 103), (2**62, 104)],
    ],
)
def test_key_maps_are_read_from_the_database_exactly(pairs):
    from dbsync.engine.install import Installer
    from dbsync.engine.planner import make_plan
    from dbsync.engine.result import SyncResult
    from dbsync.models import Database
    from hcore.models import StationType

    database = Database.objects.create(name="r", hostname="r.example.org")
    other = Database.objects.create(name="o", hostname="o.example.org")
    for original, local in pairs:
        StationType.objects.create(pk=local, original_id=original, original_db=database)
        # Another remote's objects are not this one's.
        StationType.objects.create(pk=local + 1000, original_id=original, original_db=other)
    installer = Installer(database, make_plan("hcore"), {}, SyncResult(remote="r"))
    installer.load_keymaps()
    loaded = installer.loaded["hcore.stationtype"]
    assert len(loaded) == len(pairs)
    assert {k: loaded[k] for k in loaded.keys()} == dict(pairs)
