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
    storage_uri_prefixes = ["gs://models-prod/"]  # where deploy_model may load a model from
    max_input_elements = 4096     # numbers in one inference request
    rate_limit_per_minute = 30    # mutating calls per principal (token bucket)

Each bound looks at one attribute the gate passes in ``attrs`` (see
:data:`BOUND_ATTRS`); a call that carries no such attribute is not touched by
that bound (``scale`` has no image). Two exceptions fail closed:
``max_replicas_change`` needs ``current_replicas`` beside ``replicas``, and a
call that asks for replicas without it is refused, because a limit on change
that cannot be measured must not pass silently; and a ``storage_uri`` with a
scheme (``gs://``, ``http://``, ``file://``) is refused unless it starts with one
of ``storage_uri_prefixes``, for every subject, bounds or not (see
:data:`DEFAULT_BOUNDS`): a model is loaded from wherever the URI says, so,
as with ``allow_url_override``, an address the caller picks is opt-in.
``rate_limit_per_minute`` is
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
    "DEFAULT_BOUNDS",
    "DEFAULT_PROTECTED",
    "TOOL_ATTRS",
    "BoundsError",
    "SubjectBounds",
    "bounds_lines",
    "check_bounds",
    "count_input_elements",
    "parse_bounds",
    "storage_uri_problem",
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
    "storage_uri_prefixes": "storage_uri",
    "max_input_elements": "input_elements",
    "allow_url_override": "url_override",
}

# The attributes the gate supplies per tool (ToolSpec.bound_attrs); the lint
# uses it to find bounds on subjects that hold no tool taking that argument.
TOOL_ATTRS: Final[Mapping[str, frozenset[str]]] = {
    "deploy": frozenset({"replicas", "current_replicas", "image"}),
    "scale": frozenset({"replicas", "min_replicas", "current_replicas"}),
    "infer": frozenset({"model", "input_elements"}),
    # kserve_infer: also the storage URI of the service it calls (read from the cluster, tools/kserve.py)
    "kserve_infer": frozenset({"model", "input_elements", "url_override", "storage_uri"}),
    "deploy_model": frozenset({"replicas", "min_replicas", "current_replicas", "model", "storage_uri"}),
    # rollback: the state it restores (tools/bounded.py), checked before the write
    "rollback": frozenset({"replicas", "min_replicas", "image", "storage_uri"}),
}

# Namespaces protected when no bounds file says otherwise: the cluster's own.
# Only ``[protected] namespaces = [...]`` in a bounds.toml changes the list
# (``namespaces = []`` turns protection off, explicitly).
DEFAULT_PROTECTED: Final = ("kube-system", "kube-public", "kube-node-lease")

# "s3://" (the scheme alone) or "scheme://host/..." ending in "/": no user-info, no dot segments.
_URI_PREFIX_RE: Final = re.compile(r"^[a-z][a-z0-9+.-]*://(?:[^/@\s]*/(?:[^\s]*/)?)?\Z")
_SCHEME_RE: Final = re.compile(r"[a-z][a-z0-9+.-]{0,15}\Z")
_DOT_SEGMENT_RE: Final = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|%2e|%2f|%5c|\\", re.IGNORECASE)


class SubjectBounds(BaseModel):
    """The bounds of one subject; a field left out does not limit anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_replicas: int | None = Field(default=None, ge=0)
    max_replicas_change: int | None = Field(default=None, ge=0)
    allow_scale_to_zero: bool = True
    image_prefixes: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    # Where deploy_model (and a rollback) may point storageUri: URI prefixes ("gs://models/", "s3://"). A bare
    # model name (the models folder) needs none; any URI with a scheme is refused unless one of these starts it.
    storage_uri_prefixes: tuple[str, ...] = ()
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

    @field_validator("storage_uri_prefixes")
    @classmethod
    def _uri_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not _URI_PREFIX_RE.match(entry):
                raise ValueError(
                    f"{entry[:80]!r} is not a URI prefix: write a scheme (\"s3://\") or a scheme, host and "
                    "path ending in \"/\" (\"gs://bucket/models/\"); a host without \"/\" would also "
                    "match longer hosts (\"gs://bucket\" matches \"gs://bucket-evil\")"
                )
        return value


DEFAULT_BOUNDS: Final = SubjectBounds()
"""The bounds of a subject bounds.toml does not name: nothing limited, but url and storage URI overrides off."""


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
    """``[protected] namespaces = [...]``: where writes need a rule that names the namespace itself.

    Left out (no table, or no key), the cluster's own namespaces
    (:data:`DEFAULT_PROTECTED`): protection is switched off only by writing
    ``namespaces = []``, never by forgetting the table.
    """
    doc = tomllib.loads(data.decode("utf-8"))  # parse_bounds has already checked the file reads
    table = doc.get("protected", {})
    if not isinstance(table, dict) or set(table) - {"namespaces"}:
        raise BoundsError(path, "[protected] takes one key: namespaces = [\"kube-system\", ...]")
    if "namespaces" not in table:
        return DEFAULT_PROTECTED
    names = table["namespaces"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() and "*" not in n for n in names):
        raise BoundsError(path, "[protected] namespaces must be a list of namespace names (no patterns)")
    return tuple(names)


def _int(value: Any) -> int | None:
    """An int attribute, or None (bool is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_bounds(subject: str, bounds: SubjectBounds, attrs: Mapping[str, Any]) -> str | None:
    """The reason the arguments break a bound, or None. Pure, so the gate and tests share it.

    ``attrs`` (all optional, see TOOL_ATTRS): ``replicas`` (the most replicas
    asked for), ``min_replicas`` (the fewest, for an InferenceService's range),
    ``current_replicas`` (the workload's replicas now; 0 when it is being
    created), ``image`` or ``images`` (every image a write leaves), ``model``,
    ``storage_uri``, ``input_elements``. Messages name the bound, never the
    rejected value beyond a URI's scheme (it may carry a secret).
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
    low = _int(attrs.get("min_replicas"))
    if low == 0 and not bounds.allow_scale_to_zero:
        # An InferenceService's range is bounded at both ends: min_replicas 0 lets it scale to zero.
        return f"min_replicas 0 (scale to zero) is not allowed for {subject} (allow_scale_to_zero = false)"
    images = [attrs.get("image"), *(attrs.get("images") or ())]
    prefixes = bounds.image_prefixes
    for image in images:
        if isinstance(image, str) and prefixes is not None and not any(image.startswith(p) for p in prefixes):
            allowed = ", ".join(prefixes) or "none"
            return f"the image is not from an allowed registry for {subject} (allowed: {allowed})"  # never the value
    model = attrs.get("model")
    models = bounds.models
    if isinstance(model, str) and models is not None and not any(fnmatchcase(model, p) for p in models):
        allowed = ", ".join(models) or "none"
        return f"model {model!r} is not one {subject} may call (allowed: {allowed})"
    uri = attrs.get("storage_uri")
    if isinstance(uri, str):
        problem = storage_uri_problem(subject, bounds, uri)
        if problem is not None:
            return problem
    if attrs.get("url_override") is True and not bounds.allow_url_override:
        return f"a url override needs allow_url_override = true in bounds.toml for {subject}"
    elements = _int(attrs.get("input_elements"))
    if elements is not None and bounds.max_input_elements is not None and elements > bounds.max_input_elements:
        return (
            f"input of {elements} elements exceeds max_input_elements {bounds.max_input_elements} "
            f"for {subject}; send smaller batches"
        )
    return None


def storage_uri_problem(subject: str, bounds: SubjectBounds, uri: str) -> str | None:
    """Why ``storage_uri`` may not be loaded for this subject, or None. Pure.

    A bare name is a model in the models folder (``models`` applies to it as
    to the service name); anything with a scheme must start with one of
    ``storage_uri_prefixes`` and hold no dot segment, escaped slash or
    backslash that could climb out of the prefix.
    """
    scheme, sep, _ = uri.partition("://")
    if not sep:
        models = bounds.models
        if models is not None and not any(fnmatchcase(uri, p) for p in models):
            return f"storage_uri names a model {subject} may not serve (models: {', '.join(models) or 'none'})"
        return None
    shown = scheme if _SCHEME_RE.match(scheme) else "?"
    if _DOT_SEGMENT_RE.search(uri):
        return f"storage_uri ({shown}://...) holds a dot segment, an escaped slash or a backslash: refused"
    prefixes = bounds.storage_uri_prefixes
    if not any(uri.startswith(p) for p in prefixes):
        if not prefixes:
            return (
                f"storage_uri ({shown}://...) is not allowed for {subject}: a URI needs storage_uri_prefixes in "
                "bounds.toml (by default only a model name from the models folder)"
            )
        allowed = ", ".join(prefixes)
        return f"storage_uri ({shown}://...) is not under an allowed prefix for {subject} (allowed: {allowed})"
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
