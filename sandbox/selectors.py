"""Label and field selectors (pure).

Parses the ``labelSelector`` query string (equality- and set-based, as
``k8s.io/apimachinery/pkg/labels`` does), matches ``metav1.LabelSelector``
objects, and renders a LabelSelector as the string the ``scale`` subresource
reports in ``status.selector``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

JSON = dict[str, Any]


@dataclass(frozen=True)
class Requirement:
    """One term: ``key op values`` with op in =, !=, in, notin, exists, !."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "=="):
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        return False


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a ``labelSelector`` query value; 400 BadRequest on nonsense."""
    if not text:
        return []
    reqs: list[Requirement] = []
    for term in _split_terms(text):
        lowered = f" {term} "
        for op in (" notin ", " in "):
            if op in lowered:
                key, _, rest = term.partition(op.strip())
                rest = rest.strip()
                if not (rest.startswith("(") and rest.endswith(")")):
                    raise bad_request(f"unable to parse requirement: {term!r}: expected a set in parentheses")
                values = tuple(v.strip() for v in rest[1:-1].split(",") if v.strip())
                reqs.append(Requirement(key.strip(), op.strip(), values))
                break
        else:
            if "!=" in term:
                key, _, value = term.partition("!=")
                reqs.append(Requirement(key.strip(), "!=", (value.strip(),)))
            elif "==" in term:
                key, _, value = term.partition("==")
                reqs.append(Requirement(key.strip(), "=", (value.strip(),)))
            elif "=" in term:
                key, _, value = term.partition("=")
                reqs.append(Requirement(key.strip(), "=", (value.strip(),)))
            elif term.startswith("!"):
                reqs.append(Requirement(term[1:].strip(), "!"))
            else:
                reqs.append(Requirement(term, "exists"))
    for req in reqs:
        if not req.key or any(c in req.key for c in " ()!=,"):
            raise bad_request(f"unable to parse requirement: invalid label key {req.key!r}")
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in reqs)


def selector_requirements(selector: JSON | None) -> list[Requirement]:
    """A ``metav1.LabelSelector`` (matchLabels + matchExpressions) as requirements."""
    if not selector:
        return []
    reqs = [Requirement(k, "=", (str(v),)) for k, v in sorted((selector.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(str(expr.get("operator")), "")
        reqs.append(Requirement(str(expr.get("key", "")), op, tuple(str(v) for v in expr.get("values") or [])))
    return reqs


def selector_matches(selector: JSON | None, labels: Mapping[str, str] | None) -> bool:
    """Whether a LabelSelector selects these labels; an empty selector selects everything."""
    return labels_match(selector_requirements(selector), labels)


def selector_string(selector: JSON | None) -> str:
    """Render a LabelSelector the way ``metav1.LabelSelectorAsSelector(...).String()`` does."""
    parts: list[str] = []
    for req in sorted(selector_requirements(selector), key=lambda r: r.key):
        if req.op == "=":
            parts.append(f"{req.key}={req.values[0]}")
        elif req.op in ("in", "notin"):
            parts.append(f"{req.key} {req.op} ({','.join(sorted(req.values))})")
        elif req.op == "exists":
            parts.append(req.key)
        elif req.op == "!":
            parts.append(f"!{req.key}")
    return ",".join(parts)


FieldGetter = Callable[[JSON], str]


def parse_field_selector(text: str | None, fields: Mapping[str, FieldGetter]) -> Callable[[JSON], bool]:
    """Parse ``fieldSelector`` (=, ==, != on the supported fields) into a predicate."""
    if not text:
        return lambda _obj: True
    terms: list[tuple[FieldGetter, bool, str]] = []
    for term in _split_terms(text):
        if "!=" in term:
            name, _, value = term.partition("!=")
            equal = False
        elif "==" in term:
            name, _, value = term.partition("==")
            equal = True
        elif "=" in term:
            name, _, value = term.partition("=")
            equal = True
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        getter = fields.get(name.strip())
        if getter is None:
            raise bad_request(f'field label not supported: {name.strip()}')
        terms.append((getter, equal, value.strip()))

    def predicate(obj: JSON) -> bool:
        return all((getter(obj) == value) == equal for getter, equal, value in terms)

    return predicate
