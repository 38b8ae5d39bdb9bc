"""One policy line: the ``p``/``g`` rule as written, parsed and checked field by field.

The loader and ``opsgate policy check`` parse with :func:`parse_line`, so the line a server refuses
to load and the line the lint reports are refused in the same words.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from opsgate.vocab.names import is_dns1123_label

from .errors import PolicyError
from .names import EFFECTS, NO_NAMESPACE, ROLE_PREFIX, RULE_ACTIONS, clip, key_match, validate_principal

__all__ = ["G_FIELDS", "P_FIELDS", "Rule", "parse_line", "parse_policy"]

P_FIELDS: Final = ("subject", "namespace", "tool", "action", "effect")
G_FIELDS: Final = ("member", "role", "namespace")

_ROLE_RE: Final = re.compile(r"role:[A-Za-z0-9][A-Za-z0-9_.-]*\Z")

# keyMatch honours only the first "*" and treats it as "any suffix", so a
# pattern may hold one "*", at its end; "team-*-prod" would match team-x.
_NAMESPACE_PREFIX_RE: Final = re.compile(r"[a-z0-9][-a-z0-9]{0,61}\Z")
_TOOL_PATTERN_RE: Final = re.compile(r"(?:\*|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\*?)\Z")


@dataclass(frozen=True)
class Rule:
    """One policy line as loaded, with where it came from (``policy.csv:12``)."""

    ptype: str
    fields: tuple[str, ...]
    source: str

    @property
    def text(self) -> str:
        """The rule as written in a policy file, e.g. ``p, role:viewer, *, *, read, allow``."""
        return ", ".join((self.ptype, *self.fields))


def _check_subject(value: str, what: str) -> None:
    if value.startswith(ROLE_PREFIX):
        if not _ROLE_RE.match(value):
            raise ValueError(
                f"{what} {value!r} is not a role name (role: then letters, digits, '_', '.', '-')"
            )
        return
    try:
        validate_principal(value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r}: {exc}") from None


def _namespace_pattern_ok(value: str) -> bool:
    """A namespace name, a prefix ending in one ``*``, ``*`` for all, or ``-`` for no namespace."""
    if value in (NO_NAMESPACE, "*"):
        return True
    if value.endswith("*"):
        return _NAMESPACE_PREFIX_RE.match(value[:-1]) is not None
    return is_dns1123_label(value)


def _check_namespace_pattern(value: str) -> None:
    if not _namespace_pattern_ok(value):
        raise ValueError(
            f"namespace {value!r} must be a namespace name, a prefix pattern ending in one '*' "
            "(team-*), '*' for all, or '-' for tools without a namespace"
        )


def _check_tool(value: str, known_tools: Collection[str] | None) -> None:
    if not _TOOL_PATTERN_RE.match(value):
        raise ValueError(f"tool {value!r} must be a tool name, a prefix pattern ending in one '*', or '*'")
    if known_tools is None or value == "*" or value in known_tools:
        return
    if value.endswith("*"):
        if not any(key_match(tool, value) for tool in known_tools):
            raise ValueError(f"tool pattern {value!r} matches no known tool")
        return
    hint = difflib.get_close_matches(value, list(known_tools), n=1)
    suffix = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"unknown tool {value!r}{suffix}")


def _check_p(fields: tuple[str, ...], known_tools: Collection[str] | None) -> None:
    sub, dom, obj, act, eft = fields
    _check_subject(sub, "subject")
    _check_namespace_pattern(dom)
    _check_tool(obj, known_tools)
    if act not in RULE_ACTIONS:
        raise ValueError(f"action must be read, write or *, got {act!r}")
    if eft not in EFFECTS:
        if eft.lower() in EFFECTS:
            raise ValueError(
                f"effect must be exactly {eft.lower()!r} in lower case: Casbin silently ignores {eft!r}"
            )
        raise ValueError(f"effect must be allow or deny, got {eft!r}")


def _check_g(fields: tuple[str, ...]) -> None:
    member, role, dom = fields
    _check_subject(member, "member")
    if not role.startswith(ROLE_PREFIX):
        raise ValueError(f"the second field of a g rule must be a role (role:NAME), got {role!r}")
    _check_subject(role, "role")
    _check_namespace_pattern(dom)


def parse_line(raw: str, known_tools: Collection[str] | None = None) -> tuple[str, tuple[str, ...]] | None:
    """Parse one policy line into (ptype, fields), None for a blank or comment line.

    Raises ValueError saying what is wrong; the callers add file and line.
    """
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    if "#" in line:
        raise ValueError("a '#' comment must be on its own line, not after a rule")
    if '"' in line:
        raise ValueError("quoted fields are not supported")
    parts = tuple(part.strip() for part in line.split(","))
    ptype, fields = parts[0], parts[1:]
    names: tuple[str, ...]
    if ptype == "p":
        names = P_FIELDS
    elif ptype == "g":
        names = G_FIELDS
    else:
        raise ValueError(f"a rule starts with p or g, got {clip(ptype)!r}")
    if len(fields) != len(names):
        shape = ", ".join((ptype, *(n.upper() for n in names)))
        raise ValueError(f"a {ptype} rule has {len(names)} fields ({shape}), got {len(fields)}")
    for name, value in zip(names, fields, strict=True):
        if not value:
            raise ValueError(f"{name} is empty")
    if ptype == "p":
        _check_p(fields, known_tools)
    else:
        _check_g(fields)
    return ptype, fields


def parse_policy(path: Path, text: str, known_tools: Collection[str] | None) -> list[tuple[Rule, int]]:
    """Parse and check one policy CSV into (rule, line) pairs; every problem names its line."""
    rules: list[tuple[Rule, int]] = []
    name = path.name
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            parsed = parse_line(raw, known_tools)
        except ValueError as exc:
            raise PolicyError(path, number, str(exc)) from None
        if parsed is not None:
            rules.append((Rule(parsed[0], parsed[1], f"{name}:{number}"), number))
    return rules

