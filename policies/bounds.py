"""Bounds: what a call tells the policy (:class:`BoundAttrs`), the limits a subject has, and the one check.

Casbin answers "may this subject call this tool here"; bounds answer "with these
arguments?". They live in ``bounds.toml`` beside the policy CSV (read by
bounds_file.py), keyed by the subject a grant names (a role or a principal); the
bounds of the subject whose rule allowed the call are the ones that apply, so
every refusal names both.

    [subject."role:operator"]
    max_replicas = 10             # deploy and scale may not ask for more
    max_replicas_change = 5       # |new - current| in one call
    allow_scale_to_zero = false   # replicas 0 refused
    image_prefixes = ["registry.example.com/", "docker.io/library/"]
    models = ["iris", "fraud-*"]  # names or glob patterns (local and KServe)
    storage_uri_prefixes = ["gs://models-prod/"]  # where deploy_model may load a model from
    max_input_elements = 4096     # numbers in one inference request
    rate_limit_per_minute = 30    # mutating calls per principal (token bucket)
    read_rate_limit_per_minute = 600  # reads that reach the cluster or a model server, per principal
    allow_gitops_owned_writes = false # direct writes to objects Argo CD or Flux reconcile from Git (emergency)

A tool tells the policy what a call asks for as one typed :class:`BoundAttrs`
(the gate builds it from the arguments; a tool builds one more on the read that
guards its write), and declares which of its fields it ever sets
(``ToolSpec.bounded``), so the lint knows which bounds can reach which tool.
Each bound reads the attributes :data:`BOUND_READS` names; a call that carries
none of them is not touched by that bound (``scale`` has no image). Two
exceptions fail closed: ``max_replicas_change`` needs ``current_replicas`` beside
``replicas``, and a call that asks for replicas without it is refused, because a
limit on change that cannot be measured must not pass silently; and a
``storage_uri`` with a scheme (``gs://``, ``http://``, ``file://``) is refused
unless it starts with one of ``storage_uri_prefixes``, for every subject, bounds
or not (see :data:`DEFAULT_BOUNDS`): a model is loaded from wherever the URI
says, so, as with ``allow_url_override``, an address the caller picks is opt-in.
``rate_limit_per_minute`` and ``read_rate_limit_per_minute`` are stateful and
are applied by :class:`~opsgate.policies.ratelimit.RateLimiter`, not here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "BOUND_NAMES",
    "BOUND_READS",
    "DEFAULT_BOUNDS",
    "BoundAttrs",
    "BoundName",
    "SubjectBounds",
    "check_bounds",
    "storage_uri_problem",
]

BoundName = Literal[
    "replicas", "min_replicas", "current_replicas", "images", "model", "storage_uri", "input_elements", "url_override",
    "gitops_owned",
]
"""The attributes a call can tell the policy: the fields of :class:`BoundAttrs`."""
BOUND_NAMES: Final[tuple[BoundName, ...]] = get_args(BoundName)


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundAttrs:
    """What one call tells the policy's bounds; a field left at its default tells nothing.

    Built by the gate from the arguments (``ToolSpec.bound_attrs``, plus ``current_state`` when a
    bound needs the world), and by a tool from the read that guards its write (a rollback's restored
    revision), through ``CallContext.check_bounds``: both go to :func:`check_bounds`.
    """

    replicas: int | None = None
    """The most replicas asked for (an InferenceService: the top of its range)."""
    min_replicas: int | None = None
    """The fewest replicas asked for (an InferenceService's range: 0 scales to zero)."""
    current_replicas: int | None = None
    """The workload's replicas now, 0 when it is being created; None when unknown."""
    images: tuple[str, ...] = ()
    """Every image the write leaves running that is the caller's doing."""
    model: str | None = None
    """The model (or InferenceService) the call names."""
    storage_uri: str | None = None
    """Where the model a service serves is loaded from (a bare name: the models folder)."""
    input_elements: int | None = None
    """How many values an inference request carries."""
    url_override: bool = False
    """The caller picked the address the request goes to."""
    gitops_owned: bool = False
    """The object a direct write changes is reconciled from Git (Argo CD, Flux): told by the tool on its read."""

    def given(self) -> frozenset[BoundName]:
        """The fields this call sets (those not at their default)."""
        return frozenset(name for name in BOUND_NAMES if getattr(self, name) != _DEFAULTS[name])

    def but(self, other: BoundAttrs) -> BoundAttrs:
        """These attributes with every field ``other`` sets taken from ``other``."""
        return dataclasses.replace(self, **{name: getattr(other, name) for name in other.given()})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BoundAttrs:
        """From JSON a person wrote (a decision table's attributes), as leniently as the gate reads calls:
        a value of the wrong type tells nothing (``true`` is not a count), ``image`` is one of ``images``,
        and a key that is no attribute is ignored."""
        image, images = data.get("image"), data.get("images")
        given = [image, *(images if isinstance(images, list | tuple) else ())]
        return cls(
            replicas=_int(data.get("replicas")),
            min_replicas=_int(data.get("min_replicas")),
            current_replicas=_int(data.get("current_replicas")),
            images=tuple(i for i in given if isinstance(i, str)),
            model=_str(data.get("model")),
            storage_uri=_str(data.get("storage_uri")),
            input_elements=_int(data.get("input_elements")),
            url_override=data.get("url_override") is True,
            gitops_owned=data.get("gitops_owned") is True,
        )


_DEFAULTS: Final[Mapping[str, Any]] = {f.name: f.default for f in dataclasses.fields(BoundAttrs)}

# Which attributes each bound reads (the rate limits read none: rate_limit_per_minute counts calls whose
# verb is "write", read_rate_limit_per_minute reads that leave the server, open_world). The lint uses it
# with the tools' declared attributes to find bounds that reach no tool.
BOUND_READS: Final[Mapping[str, frozenset[BoundName]]] = {
    "max_replicas": frozenset({"replicas"}),
    "max_replicas_change": frozenset({"replicas"}),
    "allow_scale_to_zero": frozenset({"replicas", "min_replicas"}),
    "image_prefixes": frozenset({"images"}),
    # a bare storage URI is a model from the models folder: `models` bounds it as it bounds a name
    "models": frozenset({"model", "storage_uri"}),
    "storage_uri_prefixes": frozenset({"storage_uri"}),
    "max_input_elements": frozenset({"input_elements"}),
    "allow_url_override": frozenset({"url_override"}),
    "allow_gitops_owned_writes": frozenset({"gitops_owned"}),
}

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
    # Reads that reach the cluster or a model server (ToolSpec verb "read" and open_world), per principal:
    # one looping agent cannot flood the API server. Local reads (whoami, list_models, infer) are not counted.
    read_rate_limit_per_minute: int | None = Field(default=None, ge=1)
    # kserve_infer's `url` sends a request wherever the caller says: refused unless a subject opts in.
    allow_url_override: bool = False
    # A direct write to an object Argo CD or Flux reconciles from Git is refused (the reconciler would revert it,
    # or it drifts from Git unseen) unless a subject opts in: an emergency, recorded as gitops_override.
    allow_gitops_owned_writes: bool = False
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

def _int(value: Any) -> int | None:
    """An int attribute, or None (bool is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def check_bounds(subject: str, bounds: SubjectBounds, attrs: BoundAttrs) -> str | None:
    """The reason the call breaks a bound of ``subject``, or None. Pure: the gate, the tools' re-check on
    their guarding read (``CallContext.check_bounds``) and decision tables all call this one function.

    Messages name the bound, never the rejected value beyond a URI's scheme (it may carry a secret).
    """
    if attrs.url_override and not bounds.allow_url_override:
        # An address the caller picks is a request from inside the cluster's network: opt-in only.
        return f"a url override needs allow_url_override = true in bounds.toml for {subject}"
    if attrs.gitops_owned and not bounds.allow_gitops_owned_writes:
        return f"a direct write to what Git owns needs allow_gitops_owned_writes = true in bounds.toml for {subject}"
    replicas = _int(attrs.replicas)
    if replicas is not None:
        if bounds.max_replicas is not None and replicas > bounds.max_replicas:
            return f"replicas {replicas} exceeds max_replicas {bounds.max_replicas} for {subject}"
        if replicas == 0 and not bounds.allow_scale_to_zero:
            return f"scaling to zero is not allowed for {subject} (allow_scale_to_zero = false)"
        limit = bounds.max_replicas_change
        if limit is not None:
            current = _int(attrs.current_replicas)
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
    if _int(attrs.min_replicas) == 0 and not bounds.allow_scale_to_zero:
        # An InferenceService's range is bounded at both ends: min_replicas 0 lets it scale to zero.
        return f"min_replicas 0 (scale to zero) is not allowed for {subject} (allow_scale_to_zero = false)"
    prefixes = bounds.image_prefixes
    if prefixes is not None:
        for image in attrs.images:
            if not any(image.startswith(p) for p in prefixes):
                allowed = ", ".join(prefixes) or "none"  # never the image itself
                return f"the image is not from an allowed registry for {subject} (allowed: {allowed})"
    model, models = attrs.model, bounds.models
    if model is not None and models is not None and not any(fnmatchcase(model, p) for p in models):
        allowed = ", ".join(models) or "none"
        return f"model {model!r} is not one {subject} may call (allowed: {allowed})"
    if attrs.storage_uri is not None:
        problem = storage_uri_problem(subject, bounds, attrs.storage_uri)
        if problem is not None:
            return problem
    elements = _int(attrs.input_elements)
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

