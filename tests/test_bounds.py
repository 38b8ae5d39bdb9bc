"""Bounds are pure: parsed from TOML, checked against a call's attributes."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsgate.policies.bounds import BoundsError, SubjectBounds, check_bounds, parse_bounds
from opsgate.policies.engine import Policy, PolicyError

OPERATOR = SubjectBounds(max_replicas=10, allow_scale_to_zero=False, image_prefixes=("registry.example.com/",))


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        ({"replicas": 10}, None),
        ({"replicas": 11}, "exceeds max_replicas 10"),
        ({"replicas": 0}, "scaling to zero"),
        ({"image": "registry.example.com/web:1"}, None),
        ({"image": "docker.io/evil/web:1"}, "not from an allowed registry"),
        ({}, None),
    ],
)
def test_check_bounds(attrs: dict[str, object], refused: str | None) -> None:
    reason = check_bounds("role:operator", OPERATOR, attrs)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason and "role:operator" in reason


@pytest.mark.parametrize(
    "text",
    ['[subject."role:x"]\nmax_replicas = -1\n', '[subject."role:x"]\nmax_pods = 3\n', "[limits]\n", "[subject\n"],
)
def test_bad_bounds_files_are_refused(text: str) -> None:
    with pytest.raises(BoundsError):
        parse_bounds(Path("bounds.toml"), text.encode())


def test_a_bad_bounds_file_stops_the_policy_load(tmp_path: Path) -> None:
    (tmp_path / "policy.csv").write_text("p, role:viewer, *, *, read, allow\n")
    (tmp_path / "bounds.toml").write_text('[subject."role:viewer"]\nmax_replicas = "many"\n')
    with pytest.raises(PolicyError) as info:
        Policy.load(tmp_path / "policy.csv")
    assert "bounds.toml" in str(info.value) and "max_replicas" in str(info.value)


def test_shipped_bounds_limit_operators() -> None:
    assert Policy.default().bounds["role:operator"].max_replicas == 10
