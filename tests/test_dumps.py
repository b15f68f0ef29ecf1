"""Reading dumps: our line layout, dumpdata's layout, and everything broken."""

import json

import pytest

from dbsync.dumps import dump_name, iter_objects, read_keys
from dbsync.errors import PayloadError

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
        ("[\n" + "[" * 100000 + "]" * 100000 + "\n]\n", "malformed"),
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
