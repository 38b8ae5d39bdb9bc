"""The stdin screen is pure: deep requests keep their envelope and lose their payload; others pass untouched."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from opsgate.server.wire import MAX_DEPTH, nesting_depth, screen_line


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
