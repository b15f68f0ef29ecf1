"""Reading dumps: our line layout, dumpdata's layout, and everything broken."""

import json
import random

import pytest

from dbsync.engine.dumps import (
    KEYS_PIECE,
    dump_name,
    iter_objects,
    key_pieces,
    read_key_set,
    read_keys,
)
from dbsync.engine.errors import PayloadError

OBJ = {"model": "hcore.eventtype", "pk": 1, "fields": {"descr": "x"}}


def write(tmp_path, text, name="d.json"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_line_layout_and_dumpdata_layout_read_the_same(tmp_path):
    objs = [OBJ, dict(OBJ, pk=2)]
    ours = write(tmp_path, "[\n" + ",\n".join(json.dumps(o) for o in objs) + "\n]\n")
    indented = write(tmp_path, json.dumps(objs, indent=2), "i.json")
    one_line = write(tmp_path, json.dumps(objs), "o.json")
    assert list(iter_objects(ours)) == list(iter_objects(indented)) == objs
    assert list(iter_objects(one_line)) == objs
    assert list(iter_objects(write(tmp_path, "[\n]\n", "e.json"))) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("[\n" + json.dumps(OBJ) + ",\n", "truncated"),
        ("[\n" + json.dumps(OBJ) + ',\n{"model": "hcore.x",\n]\n', "line 3: malformed"),
        ("[\n" + json.dumps(OBJ) + "\n]\n{}\n", "after the closing bracket"),
        ("[\n" + json.dumps(dict(OBJ, pk=-3)) + "\n]\n", "invalid pk"),
        ("[\n" + json.dumps(dict(OBJ, pk="../x")) + "\n]\n", "invalid pk"),
        ("[\n" + json.dumps([1, 2]) + "\n]\n", "not a serialized object"),
        ("[\n" + "[" * 100000 + "]" * 100000 + "\n]\n", "nested deeper than 32"),
        (
            b'[\n{"model": "hcore.eventtype", "pk": 1, "fields": {"descr": "\xff"}}\n]\n',
            "malformed",
        ),
        ('{"model": "hcore.eventtype"}', "must be a JSON list"),
        ("", "malformed"),
    ],
)
def test_broken_dumps_are_refused_with_a_reason(tmp_path, text, message):
    with pytest.raises(PayloadError, match=message):
        list(iter_objects(write(tmp_path, text)))


def test_model_names_cannot_escape_the_work_folder():
    assert dump_name("hcore.station") == "hcore.station.json"
    for bad in ["../etc.passwd", "hcore/../x", "hcore.station/..", "a.b.c", "HCORE.X"]:
        with pytest.raises(PayloadError, match="unsafe model name"):
            dump_name(bad)


def test_key_listings(tmp_path):
    assert read_keys(write(tmp_path, "[1,2,\n3]")) == [1, 2, 3]
    for bad in ["[1,2", '[1, "2"]', "{}", "[true]"]:
        with pytest.raises(PayloadError):
            read_keys(write(tmp_path, bad))


LISTINGS = {
    "dense": list(range(1, 3000)),
    "gappy": [k for k in range(1, 5000) if k % 7 and k % 11],
    "shuffled": random.Random(5).sample(range(1, 4000), 2500),
    "large keys": [2**62, 2**62 + 1, 2**63 - 1],
    "one": [42],
    "none": [],
}


@pytest.mark.parametrize("size", [1, 2, 5, 64, 4096, KEYS_PIECE])
@pytest.mark.parametrize("layout", ["ours", "spaced", "compact"])
@pytest.mark.parametrize("kind", LISTINGS)
def test_key_listings_read_a_piece_at_a_time_give_the_whole(tmp_path, kind, layout, size):
    keys = LISTINGS[kind]
    text = {
        "ours": "[" + ",\n".join(map(str, keys)) + "]\n",
        "spaced": " \n[ " + " ,  ".join(map(str, keys)) + " ] \n\n",
        "compact": json.dumps(keys, separators=(",", ":")),
    }[layout]
    path = write(tmp_path, text)
    assert list(map(list, key_pieces(path, size))) and read_keys(path) == keys
    key_set = read_key_set(path)
    assert sorted(key_set) == sorted(keys) and len(key_set) == len(keys)
    if kind == "dense":
        assert len(key_set.starts) == 1  # one run, however many pieces it came in


@pytest.mark.parametrize("size", [1, 3, 4096])
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "must be a JSON list"),
        ("   \n", "must be a JSON list"),
        ("x[1]", "must be a JSON list"),
        ("{}", "must be a JSON list"),
        ("[1,,2]", "empty entry|malformed"),
        ("[,1]", "empty entry"),
        ("[1,2,]", "empty entry"),
        ("[1,2", "truncated"),
        ("[1,2]x", "truncated"),
        ("[1,2],[3]", "malformed"),
        ("[[1,2]]", "malformed|list of integers"),
        ('["1"]', "list of integers"),
        ("[1.5, 2]", "list of integers"),
        ("[null]", "list of integers"),
        ("[1," + " " * 5000 + "2]", "too long"),
    ],
)
def test_broken_key_listings_are_refused_whatever_the_piece_size(tmp_path, text, message, size):
    # (spaces are JSON, but more of them in one entry than a piece holds are refused:
    # a listing is never held whole)
    with pytest.raises(PayloadError, match=message):
        list(key_pieces(write(tmp_path, text), size))
