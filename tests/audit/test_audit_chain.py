"""Pure hash-chain primitives: canonical bytes, record hashes, sealing."""

from __future__ import annotations

import hashlib
import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsgate.audit import GENESIS_HASH, canonical, record_hash, seal
from opsgate.audit.chain import loads, seal_line


def test_genesis_hash_is_64_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_canonical_is_rfc8785() -> None:
    # Sorted keys (by UTF-16 code units), no whitespace, ECMAScript number forms, minimal escapes.
    obj = {"b": [1, 2.5, 1e21, 1e-7, 100.0], "a": 'é\n"', "\u20ac": True, "\U0001f600": None, "A": {}}
    assert canonical(obj) == ('{"A":{},"a":"é\\n\\"","b":[1,2.5,1e+21,1e-7,100],"€":true,"😀":null}'.encode())


def test_canonical_accepts_any_mapping() -> None:
    assert canonical(MappingProxyType({"b": 1, "a": 2})) == b'{"a":2,"b":1}'


@pytest.mark.parametrize(
    "bad",
    [{"x": float("nan")}, {"x": float("inf")}, {"x": 2**53}, {"x": object()}, {1: "non-string key"}],
)
def test_canonical_rejects_what_json_cannot_carry_exactly(bad: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        canonical(bad)


def test_integral_float_beyond_2_53_reads_back_canonically() -> None:
    # rfc8785 writes 2.0**53 as an integer literal that a plain json.loads turns into an
    # int rfc8785 refuses; loads() reads it as the double it was, so the line re-canonicalises.
    line = canonical({"x": 2.0**53})
    assert line == b'{"x":9007199254740992}'
    assert canonical(loads(line)) == line
    with pytest.raises(ValueError):
        canonical(json.loads(line))


@pytest.mark.parametrize("text", ['{"x":NaN}', '{"x":Infinity}', '{"x":-Infinity}', "{"])
def test_loads_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_seal_line_orders_keys_like_rfc8785() -> None:
    body = {"\U0001f600": 1, "\uff61": 2, "a": 3, "z": 4, "hash_": 5, "has": 6, "prev0": 7, "se": 8}
    record, line = seal_line(body, 1, GENESIS_HASH)
    assert line == canonical(record)


@pytest.mark.parametrize("bad", [{1: "x"}, {"x": float("nan")}, {"x": {2: 3}}, {"\ud800": 1}])
def test_seal_refuses_what_cannot_be_serialised(bad: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        seal(bad, 1, GENESIS_HASH)


def test_record_hash_ignores_hash_key_only() -> None:
    record = {"seq": 1, "prev": GENESIS_HASH, "x": "y"}
    expected = hashlib.sha256(canonical(record)).hexdigest()
    assert record_hash(record) == expected
    assert record_hash({**record, "hash": "whatever"}) == expected
    assert record_hash({**record, "x": "z"}) != expected


def test_seal_adds_chain_fields() -> None:
    body = {"stage": "decision", "tool": "scale"}
    first = seal(body, 1, GENESIS_HASH)
    assert first == {**body, "seq": 1, "prev": GENESIS_HASH, "hash": record_hash(first)}
    assert body == {"stage": "decision", "tool": "scale"}  # the input is not modified
    second = seal(body, 2, first["hash"])
    assert second["prev"] == first["hash"] and second["hash"] != first["hash"]


@pytest.mark.parametrize("key", ["seq", "prev", "hash"])
def test_seal_refuses_a_body_with_chain_keys(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        seal({key: 1, "x": 2}, 1, GENESIS_HASH)


@pytest.mark.parametrize(("seq", "prev"), [(0, GENESIS_HASH), (True, GENESIS_HASH), (1, "abc"), (1, "F" * 64)])
def test_seal_refuses_bad_position(seq: Any, prev: str) -> None:
    with pytest.raises(ValueError):
        seal({"x": 1}, seq, prev)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15,
)


@given(st.dictionaries(st.text(max_size=6).filter(lambda k: k not in {"seq", "prev", "hash"}), json_values))
def test_canonical_line_round_trips_and_has_no_newline(body: dict[str, Any]) -> None:
    record, line = seal_line(body, 7, GENESIS_HASH)
    assert line == canonical(record)  # the one-pass line is exactly the canonical form
    assert record == seal(body, 7, GENESIS_HASH)
    assert record["hash"] == record_hash(record)
    assert b"\n" not in line  # one record is always one physical line
    parsed = loads(line)
    assert canonical(parsed) == line
    assert record_hash(parsed) == record["hash"]
