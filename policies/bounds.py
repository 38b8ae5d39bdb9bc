"""Bounds: limits a policy states next to a grant, checked after Casbin allows a call.

Casbin answers "may this subject call this tool here"; bounds answer "with these
arguments?". They live in ``bounds.toml`` beside the policy CSV, keyed by the
subject a grant names (a role or a principal); the bounds of the subject whose
rule allowed the call are the ones that apply, so every refusal names both.

    [subject."role:operator"]
    max_replicas = 10             # deploy and scale may not ask for more
    allow_scale_to_zero = false   # replicas 0 refused
    image_prefixes = ["registry.example.com/", "docker.io/library/"]
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BOUNDS_FILE = "bounds.toml"


class SubjectBounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_replicas: int | None = Field(default=None, ge=0)
    allow_scale_to_zero: bool = True
    image_prefixes: tuple[str, ...] | None = None


class BoundsError(Exception):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def parse_bounds(path: Path, data: bytes) -> dict[str, SubjectBounds]:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BoundsError(path, str(exc)) from exc
    unknown = set(doc) - {"subject"}
    if unknown:
        raise BoundsError(path, f"unknown table(s) {sorted(unknown)}; bounds go under [subject.\"<name>\"]")
    subjects = doc.get("subject", {})
    if not isinstance(subjects, dict):
        raise BoundsError(path, "[subject] must be a table of subjects")
    bounds: dict[str, SubjectBounds] = {}
    for subject, table in subjects.items():
        try:
            bounds[subject] = SubjectBounds.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BoundsError(path, f'subject "{subject}": {where}: {first["msg"]}') from exc
    return bounds


def check_bounds(subject: str, bounds: SubjectBounds, attrs: Mapping[str, Any]) -> str | None:
    """The reason the arguments break a bound, or None. Pure, so the gate and tests share it."""
    replicas = attrs.get("replicas")
    if isinstance(replicas, int):
        if bounds.max_replicas is not None and replicas > bounds.max_replicas:
            return f"replicas {replicas} exceeds max_replicas {bounds.max_replicas} for {subject}"
        if replicas == 0 and not bounds.allow_scale_to_zero:
            return f"scaling to zero is not allowed for {subject} (allow_scale_to_zero = false)"
    image = attrs.get("image")
    prefixes = bounds.image_prefixes
    if isinstance(image, str) and prefixes is not None and not any(image.startswith(p) for p in prefixes):
        allowed = ", ".join(prefixes) or "none"
        return f"image {image!r} is not from an allowed registry for {subject} (allowed: {allowed})"
    return None
