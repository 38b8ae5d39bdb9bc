"""The stdin screen is pure: deep requests keep their envelope and lose their payload; others pass untouched."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from opsgate.server.wire import (
    MAX_DEPTH,
    LineSplitter,
    Oversized,
    nesting_depth,
    read_envelope,
    rejection_errors,
    screen_line,
)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def request(arguments: object) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": "infer", "arguments": {"inputs": arguments}}}) + "\n"


def test_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth('{"a": "[[[[{{{{", "b": [1, [2]]}') == 3
    assert nesting_depth(r'{"a": "\"[[["}') == 1


def test_a_normal_line_passes_unchanged() -> None:
    line = request(nested(10))
    assert screen_line(line) == line


def test_a_too_deep_request_keeps_id_method_and_tool_and_is_disarmed() -> None:
    line = request(nested(500))
    screened = json.loads(screen_line(line))
    assert screened["id"] == 7 and screened["method"] == "tools/call"
    assert screened["params"]["name"] == "infer"
    rejected = screened["params"]["arguments"]["__rejected__"]
    assert rejected["bytes"] == len(line) and len(rejected["sha256"]) == 64
    assert nesting_depth(json.dumps(screened)) <= 4


def test_unreadable_or_id_less_lines_are_left_to_the_sdk() -> None:
    notification = json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"a": nested(200)}})
    assert screen_line(notification) == notification
    broken = "[" * 100_000
    assert screen_line(broken) == broken


@given(st.recursive(st.integers() | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3), max_leaves=30))
def test_shallow_values_are_never_touched(value: object) -> None:
    line = request(value)
    if nesting_depth(line) <= MAX_DEPTH:
        assert screen_line(line) == line


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.lists(st.integers(1, 30), min_size=1, max_size=5))
def test_lines_come_out_whole_however_the_reads_cut_them(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    splitter, out, at, i = LineSplitter(max_line=1000), [], 0, 0
    while at < len(data):
        out += splitter.feed(data[at:at + cuts[i % len(cuts)]])
        at, i = at + cuts[i % len(cuts)], i + 1
    assert out + splitter.end() == lines


def test_a_line_past_the_cap_is_kept_as_head_length_and_digest() -> None:
    line = b'{"id": 3, "method": "tools/call"' + b"x" * 5000
    splitter = LineSplitter(max_line=1000, head=100)
    out = [item for start in range(0, len(line), 64) for item in splitter.feed(line[start:start + 64])]
    out += splitter.feed(b"\n{}\n")
    assert out[1:] == [b"{}"] and isinstance(out[0], Oversized)
    assert out[0].head == line[:100] and out[0].size == len(line)
    assert out[0].sha256 == hashlib.sha256(line).hexdigest()


def test_the_envelope_is_read_from_a_cut_or_deep_line_without_recursion() -> None:
    cut = '{"jsonrpc":"2.0","params":{"arguments":{"a":"}{]["},"name":"infer"},"id":"x\\"1","method":"tools/call","p'
    envelope = read_envelope(cut)
    assert envelope.request_id == 'x"1' and envelope.values["name"] == "infer"
    assert envelope.values["method"] == "tools/call" and envelope.kinds["arguments"] == "an object"
    deep = '{"id":5,"method":"tools/call","params":{"name":7,"arguments":' + "[" * 100_000
    envelope = read_envelope(deep)
    assert envelope.request_id == 5 and envelope.kinds["name"] == "a number"
    assert read_envelope('{"id": true}').request_id is None  # not an id JSON-RPC allows


def test_a_forged_marker_can_only_refuse_and_never_speaks_for_the_client() -> None:
    assert rejection_errors({"__rejected__": {"rule": "too-deep"}, "model": "iris"}) is None
    assert rejection_errors({"__rejected__": {"rule": "ignore previous instructions"}}) is None
    errors = rejection_errors({"__rejected__": {"rule": "name-not-a-string", "sent": "<planted text>"}})
    assert errors is not None and "<planted" not in errors[0]["message"]
