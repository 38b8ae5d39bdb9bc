"""The names a policy speaks: principals, roles, namespaces, tools and actions, and what makes each valid.

The loader checks rule fields with these, and the decider checks every request with them before
deciding, so a name Casbin would misread (a principal spelled like a role, a namespace holding
``*``) is refused in one place with one sentence.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from opsgate.vocab.names import is_dns1123_label

__all__ = [
    "ACTIONS",
    "EFFECTS",
    "EVERYONE",
    "MAX_PRINCIPAL_LEN",
    "NO_NAMESPACE",
    "ROLE_PREFIX",
    "RULE_ACTIONS",
    "clip",
    "request_problem",
    "validate_namespace",
    "validate_principal",
]

ROLE_PREFIX: Final = "role:"
EVERYONE: Final = "role:everyone"
"""The implicit role every principal holds (a string literal in the matcher)."""
NO_NAMESPACE: Final = "-"
"""The domain of tools that target no namespace (whoami, list_models, infer)."""
ACTIONS: Final = ("read", "write")
RULE_ACTIONS: Final = ("read", "write", "*")
EFFECTS: Final = ("allow", "deny")
MAX_PRINCIPAL_LEN: Final = 253

_TOOL_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# ',' splits a policy line, '*' is a pattern, quotes and brackets are read
# specially by Casbin's own CSV tokenizer (so its tools would see another rule).
_PRINCIPAL_FORBIDDEN: Final = frozenset("*,\"'`()[]")


def key_match(key: str, pattern: str) -> bool:
    """Casbin's ``keyMatch``: ``key`` equals ``pattern``, or starts with what comes before its first ``*``.

    The same function as ``casbin.util.key_match`` (tests/policies/test_policy_fast.py holds them to each
    other), here so that deciding, loading and linting the shipped model never import Casbin."""
    star = pattern.find("*")
    if star == -1:
        return key == pattern
    if len(key) > star:
        return key[:star] == pattern[:star]
    return key == pattern[:star]


def validate_principal(name: str) -> str:
    """Return ``name`` if it can be a Casbin subject, else raise ValueError naming the rule.

    Why: in Casbin a subject spelled like a role *is* that role (``g(x, x)``
    holds), ``*`` and ``,`` act as a pattern or split a policy line, and every
    distinct subject grows the role manager's cache.
    """
    if not isinstance(name, str):
        raise ValueError("principal must be a string")
    if not name:
        raise ValueError("principal must not be empty")
    if len(name) > MAX_PRINCIPAL_LEN:
        raise ValueError(f"principal must be at most {MAX_PRINCIPAL_LEN} characters, got {len(name)}")
    if name.casefold().startswith(ROLE_PREFIX):
        raise ValueError("principal must not start with 'role:' (that prefix names roles)")
    for ch in name:
        if ch in _PRINCIPAL_FORBIDDEN:
            raise ValueError(f"principal must not contain {ch!r}")
        if ch.isspace():
            raise ValueError("principal must not contain whitespace")
        category = unicodedata.category(ch)
        if category[0] in ("C", "Z"):
            raise ValueError(f"principal must not contain control or invisible characters (U+{ord(ch):04X})")
    return name


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a Kubernetes namespace name or ``-``, else raise ValueError.

    Why: a request domain holding ``*`` would match patterns as if it were
    one, and every distinct domain grows Casbin's per-domain role cache.
    """
    if not isinstance(namespace, str):
        raise ValueError("namespace must be a string")
    if namespace != NO_NAMESPACE and not is_dns1123_label(namespace):
        raise ValueError(
            f"namespace {clip(namespace)!r} is not a Kubernetes namespace name "
            "(lower-case letters, digits and '-', at most 63) or '-'"
        )
    return namespace


def clip(text: str, limit: int = 80) -> str:
    """Shorten untrusted text before it goes into a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def request_problem(principal: str, namespace: str, tool: str, action: str) -> str | None:
    """Why a request cannot be decided as asked, or None when it is well-formed."""
    try:
        validate_principal(principal)
        validate_namespace(namespace)
    except ValueError as exc:
        return str(exc)
    if not isinstance(tool, str) or not _TOOL_RE.match(tool):
        return f"tool {clip(str(tool))!r} is not a tool name"
    if action not in ACTIONS:
        return f"action must be read or write, got {clip(str(action))!r}"
    return None

