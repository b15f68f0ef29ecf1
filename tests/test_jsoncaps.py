"""The capped JSON parse (dbsync.engine.jsoncaps): what it returns, what it refuses."""

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsync.engine.errors import PayloadError
from dbsync.engine.jsoncaps import Caps, MalformedJSON, iter_array, loads

FORCE_STREAM = Caps(items=10**9, depth=10**9)  # no text is short enough for orjson here
FORCE_STREAM.cannot_break = lambda text: False

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)  # yajl refuses -2**63 (the C long limit)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_both_parsers_give_the_value_json_gives(value):
    text = json.dumps(value).encode()
    assert loads(text, "doc") == loads(text, "doc", FORCE_STREAM) == json.loads(text)


def count_values(value):
    if isinstance(value, dict):
        return 1 + sum(count_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(v) for v in value)
    return 1


@pytest.mark.parametrize(
    "value", [[], {}, 1, [1, 2, 3], {"a": [1, {"b": None}], "c": "x"}, [[[]]], [{}] * 4]
)
def test_the_item_cap_counts_every_value_and_container(value):
    text = json.dumps(value).encode()
    n = count_values(value)
    for caps in (Caps(items=n, depth=10), FORCE_STREAM):
        assert loads(text, "doc", caps) == value
    with pytest.raises(PayloadError, match=f"doc: more than {n - 1} JSON values.*ITEMS"):
        loads(text, "doc", Caps(items=n - 1, depth=10))


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_the_depth_cap_counts_nested_containers(depth):
    text = b"[" * depth + b"]" * depth
    assert loads(text, "doc", Caps(items=100, depth=depth)) is not None
    with pytest.raises(PayloadError, match=f"nested deeper than {depth - 1} levels.*DEPTH"):
        loads(text, "doc", Caps(items=100, depth=depth - 1))


def test_brackets_inside_strings_are_not_nesting():
    text = json.dumps({"a": "[[[[{{{{"}).encode()
    assert loads(text, "doc", Caps(items=10, depth=1)) == {"a": "[[[[{{{{"}


def test_a_flood_of_tiny_objects_is_refused_at_the_cap_not_at_the_end():
    """A million empty objects: refused after the cap's worth, whatever follows
    (what follows is not even valid JSON, and is never reached)."""
    text = b"[" + b"{}," * 1_000_000 + b"!"
    with pytest.raises(PayloadError, match="more than 1000 JSON values"):
        loads(text, "manifest", Caps(items=1000, depth=32))


@pytest.mark.parametrize(
    "text", [b"", b"[1", b"[1] x", b'{"a":1}{"b":2}', b'"\xff"', b"{'a': 1}", b"nul"]
)
def test_malformed_json_is_named_as_such(text):
    for caps in (None, FORCE_STREAM):
        with pytest.raises(MalformedJSON, match="^doc: malformed JSON"):
            loads(text, "doc", caps)


def test_iter_array_yields_each_element_under_the_caps():
    """Values are counted per element; the depth counts the list around them."""
    caps = Caps(items=3, depth=3)
    assert list(iter_array(io.BytesIO(b'[1, {"a": [2]}, "s", []]'), "f", caps)) == [
        1,
        {"a": [2]},
        "s",
        [],
    ]
    with pytest.raises(PayloadError, match="f, element 2: more than 3 JSON values"):
        list(iter_array(io.BytesIO(b'[1, {"a": [2, 3]}]'), "f", caps))
    with pytest.raises(PayloadError, match="f, element 1: JSON nested deeper than 3"):
        list(iter_array(io.BytesIO(b"[[[[1]]]]"), "f", caps))


@pytest.mark.parametrize(
    "text, message",
    [
        (b"{}", "must be a JSON list"),
        (b"", "malformed JSON"),
        (b"[1, 2", "malformed JSON"),
        (b"[1] 2", "malformed JSON"),
    ],
)
def test_iter_array_refuses_what_is_not_one_list(text, message):
    with pytest.raises(PayloadError, match=message):
        list(iter_array(io.BytesIO(text), "f"))
