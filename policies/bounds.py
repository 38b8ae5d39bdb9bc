"""Bounds: limits a policy states next to a grant, checked after Casbin allows a call.

Casbin answers "may this subject call this tool here"; bounds answer "with these
arguments?". They live in ``bounds.toml`` beside the policy CSV, keyed by the
subject a grant names (a role or a principal); the bounds of the subject whose
rule allowed the call are the ones that apply, so every refusal names both.

    [subject."role:operator"]
    max_replicas = 10             # deploy and scale may not ask for more
    max_replicas_change = 5       # |new - current| in one call
    allow_scale_to_zero = false   # replicas 0 refused
    image_prefixes = ["registry.example.com/", "docker.io/library/"]
    models = ["iris", "fraud-*"]  # names or glob patterns (local and KServe)
    max_input_elements = 4096     # numbers in one inference request
    rate_limit_per_minute = 30    # mutating calls per principal (token bucket)

Each bound looks at one attribute the gate passes in ``attrs`` (see
:data:`BOUND_ATTRS`); a call that carries no such attribute is not touched by
that bound (``scale`` has no image). The one exception fails closed:
``max_replicas_change`` needs ``current_replicas`` beside ``replicas``, and a
call that asks for replicas without it is refused, because a limit on change
that cannot be measured must not pass silently. ``rate_limit_per_minute`` is
stateful and is applied by :class:`~opsgate.policies.ratelimit.RateLimiter`,
not here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "BOUNDS_FILE",
    "BOUND_ATTRS",
    "TOOL_ATTRS",
    "BoundsError",
    "SubjectBounds",
    "bounds_lines",
    "check_bounds",
    "count_input_elements",
    "parse_bounds",
]

BOUNDS_FILE: Final = "bounds.toml"

# Which call attribute each bound reads. rate_limit_per_minute reads none: it
# counts calls whose verb is "write".
BOUND_ATTRS: Final[Mapping[str, str]] = {
    "max_replicas": "replicas",
    "max_replicas_change": "replicas",
    "allow_scale_to_zero": "replicas",
    "image_prefixes": "image",
    "models": "model",
    "max_input_elements": "input_elements",
    "allow_url_override": "url_override",
}

# The attributes the gate supplies per tool (ToolSpec.bound_attrs); the lint
# uses it to find bounds on subjects that hold no tool taking that argument.
TOOL_ATTRS: Final[Mapping[str, frozenset[str]]] = {
    "deploy": frozenset({"replicas", "current_replicas", "image"}),
    "scale": frozenset({"replicas", "current_replicas"}),
    "infer": frozenset({"model", "input_elements"}),
    "kserve_infer": frozenset({"model", "input_elements", "url_override"}),
    "deploy_model": frozenset({"replicas", "current_replicas", "model"}),
}


class SubjectBounds(BaseModel):
    """The bounds of one subject; a field left out does not limit anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_replicas: int | None = Field(default=None, ge=0)
    max_replicas_change: int | None = Field(default=None, ge=0)
    allow_scale_to_zero: bool = True
    image_prefixes: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    max_input_elements: int | None = Field(default=None, ge=0)
    rate_limit_per_minute: int | None = Field(default=None, ge=1)
    # kserve_infer's `url` sends a request wherever the caller says: refused unless a subject opts in.
    allow_url_override: bool = False
    # Tools whose calls the user must confirm through the MCP client (elicitation);
    # a client that cannot ask gets a refusal, never a silent allow.
    confirm: tuple[str, ...] = ()

    @field_validator("image_prefixes", "models")
    @classmethod
    def _no_empty_entries(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not entry.strip() for entry in value):
            raise ValueError("entries must not be empty (an empty prefix or pattern would allow everything)")
        return value


class BoundsError(Exception):
    """A bounds file that cannot be used, with the line to fix when it is known."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message


_HEADER_RE: Final = re.compile(
    r"""^\s*\[\s*subject\s*\.\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*\]\s*(?:#.*)?$"""
)
_TABLE_RE: Final = re.compile(r"^\s*\[")
_KEY_RE: Final = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TOML_LINE_RE: Final = re.compile(r"\(at line (\d+)")


def bounds_lines(text: str) -> dict[tuple[str, str | None], int]:
    """Where each ``[subject."X"]`` table (key None) and each key inside it is written.

    For messages only: TOML itself is parsed by tomllib, which keeps no lines.
    """
    found: dict[tuple[str, str | None], int] = {}
    subject: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_RE.match(line)
        if header:
            subject = next(g for g in header.groups() if g is not None)
            found.setdefault((subject, None), number)
            continue
        if _TABLE_RE.match(line):
            subject = None
            continue
        key = _KEY_RE.match(line)
        if key and subject is not None:
            found.setdefault((subject, key.group(1)), number)
    return found


def parse_bounds(path: Path, data: bytes) -> dict[str, SubjectBounds]:
    """Parse a bounds file; BoundsError names the line when it can."""
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise BoundsError(path, "not UTF-8 text", data[: exc.start].count(b"\n") + 1) from exc
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE_RE.search(str(exc))
        line = int(found.group(1)) if found else None
        if line is None and "end of document" in str(exc):
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        raise BoundsError(path, str(exc), line) from exc
    unknown = set(doc) - {"subject", "protected"}
    if unknown:
        raise BoundsError(path, f"unknown table(s) {sorted(unknown)}; bounds go under [subject.\"<name>\"]")
    subjects = doc.get("subject", {})
    if not isinstance(subjects, dict):
        raise BoundsError(path, "[subject] must be a table of subjects")
    lines = bounds_lines(text)
    bounds: dict[str, SubjectBounds] = {}
    for subject, table in subjects.items():
        try:
            bounds[subject] = SubjectBounds.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            key = str(first["loc"][0]) if first["loc"] else None
            line = lines.get((subject, key)) or lines.get((subject, None))
            raise BoundsError(path, f'subject "{subject}": {where}: {first["msg"]}', line) from exc
    return bounds


def parse_protected(path: Path, data: bytes) -> tuple[str, ...]:
    """``[protected] namespaces = [...]``: where writes need a rule that names the namespace itself."""
    doc = tomllib.loads(data.decode("utf-8"))  # parse_bounds has already checked the file reads
    table = doc.get("protected", {})
    if not isinstance(table, dict) or set(table) - {"namespaces"}:
        raise BoundsError(path, "[protected] takes one key: namespaces = [\"kube-system\", ...]")
    names = table.get("namespaces", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() and "*" not in n for n in names):
        raise BoundsError(path, "[protected] namespaces must be a list of namespace names (no patterns)")
    return tuple(names)


def _int(value: Any) -> int | None:
    """An int attribute, or None (bool is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_bounds(subject: str, bounds: SubjectBounds, attrs: Mapping[str, Any]) -> str | None:
    """The reason the arguments break a bound, or None. Pure, so the gate and tests share it.

    ``attrs`` (all optional, see TOOL_ATTRS): ``replicas``, ``current_replicas``
    (the workload's replicas now; 0 when it is being created), ``image``,
    ``model``, ``input_elements``.
    """
    replicas = _int(attrs.get("replicas"))
    if replicas is not None:
        if bounds.max_replicas is not None and replicas > bounds.max_replicas:
            return f"replicas {replicas} exceeds max_replicas {bounds.max_replicas} for {subject}"
        if replicas == 0 and not bounds.allow_scale_to_zero:
            return f"scaling to zero is not allowed for {subject} (allow_scale_to_zero = false)"
        limit = bounds.max_replicas_change
        if limit is not None:
            current = _int(attrs.get("current_replicas"))
            if current is None:
                return (
                    f"max_replicas_change {limit} for {subject} cannot be checked: the current replica "
                    "count is unknown, so the call is refused rather than guessed"
                )
            change = abs(replicas - current)
            if change > limit:
                return (
                    f"changing replicas from {current} to {replicas} (by {change}) exceeds "
                    f"max_replicas_change {limit} for {subject}; change it in steps of at most {limit}"
                )
    image = attrs.get("image")
    prefixes = bounds.image_prefixes
    if isinstance(image, str) and prefixes is not None and not any(image.startswith(p) for p in prefixes):
        allowed = ", ".join(prefixes) or "none"
        return f"image {image!r} is not from an allowed registry for {subject} (allowed: {allowed})"
    model = attrs.get("model")
    models = bounds.models
    if isinstance(model, str) and models is not None and not any(fnmatchcase(model, p) for p in models):
        allowed = ", ".join(models) or "none"
        return f"model {model!r} is not one {subject} may call (allowed: {allowed})"
    elements = _int(attrs.get("input_elements"))
    if elements is not None and bounds.max_input_elements is not None and elements > bounds.max_input_elements:
        return (
            f"input of {elements} elements exceeds max_input_elements {bounds.max_input_elements} "
            f"for {subject}; send smaller batches"
        )
    return None


def count_input_elements(inputs: Any) -> int:
    """How many numbers an inference request carries: the ``input_elements`` attribute.

    Counts leaves of nested lists (a bare number is one), iteratively so a deeply
    nested request cannot exhaust the stack; a mapping counts its values.
    """
    count = 0
    stack: list[Any] = [inputs]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            count += 1
    return count
