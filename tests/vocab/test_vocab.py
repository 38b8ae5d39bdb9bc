"""The shared vocabulary: one answer for names, replica ranges and element counts wherever they are asked."""

from __future__ import annotations

import pytest

from opsgate.vocab.elements import count_elements
from opsgate.vocab.limits import replica_range_ok
from opsgate.vocab.names import dns1123_problem, is_dns1123_label, is_dns1123_subdomain, is_qualified_name


@pytest.mark.parametrize(
    ("value", "label", "subdomain"),
    [
        ("web", True, True),
        ("a" * 63, True, True),
        ("a" * 64, False, True),
        ("a.b", False, True),
        ("a" * 254, False, False),
        ("Web", False, False),
        ("-web", False, False),
        ("web-", False, False),
        ("", False, False),
        ("web\n", False, False),  # Python's '$' would match before a final newline; Go's (the API server's) not
        ("a..b", False, False),
    ],
)
def test_names_agree_with_their_problems(value: str, label: bool, subdomain: bool) -> None:
    assert is_dns1123_label(value) is label
    assert is_dns1123_subdomain(value) is subdomain
    assert (dns1123_problem(value, "label") is None) is label
    assert (dns1123_problem(value, "subdomain") is None) is subdomain


def test_qualified_names() -> None:
    assert is_qualified_name("app.kubernetes.io_x-1")
    assert not is_qualified_name("_x") and not is_qualified_name("x" * 64) and not is_qualified_name("")


def test_replica_range() -> None:
    assert replica_range_ok(None, 3) and replica_range_ok(2, None) and replica_range_ok(3, 3)
    assert not replica_range_ok(4, 3)


@pytest.mark.parametrize(
    ("inputs", "count"),
    [
        ({"features": [[5.1, 3.5, 1.4, 0.2]]}, 4),
        ({"a": [[1, 2], [3, 4]], "b": 7}, 5),
        ({"a": 3.0, "b": [], "c": [[1, 2]]}, 3),
        ({"x": []}, 0),
        ({}, 0),
        (3.0, 1),
        # ragged: the values actually sent, not the first row's shape times the row count
        ({"x": [[1], [2, 3, 4, 5]]}, 5),
        ({"x": [[1, 2, 3, 4], [5]]}, 5),
        ({"x": [1, [2, [3, [4]]]]}, 4),
    ],
)
def test_count_elements(inputs: object, count: int) -> None:
    assert count_elements(inputs) == count


def test_count_elements_survives_deep_nesting() -> None:
    deep: list[object] = [1.0]
    for _ in range(50_000):
        deep = [deep]
    assert count_elements({"x": deep}) == 1


def test_dns1035_labels_start_with_a_letter() -> None:
    from opsgate.vocab.names import DNS1035_RE

    assert DNS1035_RE.fullmatch("iris-v2") and not DNS1035_RE.fullmatch("2iris") and not DNS1035_RE.fullmatch("iris-")
