"""Load, lint and enforce opsgate's Casbin policy.

Why a wrapper rather than a bare ``casbin.Enforcer``: Casbin silently ignores
rules it cannot use (an effect spelled ``Deny``, a misspelled tool name), is
not thread-safe, takes milliseconds per decision once a policy grows, and
reports the rule that decided without saying where it was written. This module
parses the policy itself with line numbers, rejects what Casbin would misread,
decides through an index over the rules that answers exactly as Casbin would
(index.py; a changed matcher falls back to Casbin behind one lock), and names
the ``file:line`` of the deciding rule in every decision.

Files are read only in :meth:`Policy.load`; everything after that is pure.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import difflib
import hashlib
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import casbin
from casbin.model import FunctionMap, Model
from casbin.util import escape_assertion, key_match, key_match_func, remove_comments

from .bounds import (
    BOUNDS_FILE,
    DEFAULT_BOUNDS,
    DEFAULT_PROTECTED,
    BoundsError,
    SubjectBounds,
    parse_bounds,
    parse_protected,
)
from .index import MAX_ROLE_HOPS, RuleIndex, key_prefix

__all__ = [
    "ACTIONS",
    "EVERYONE",
    "NO_NAMESPACE",
    "SHIPPED_DIR",
    "Decision",
    "EffectiveGrant",
    "Policy",
    "PolicyError",
    "Rule",
    "bounds_note",
    "validate_namespace",
    "validate_principal",
]

SHIPPED_DIR: Final = Path(__file__).resolve().parent
MODEL_FILE: Final = "model.conf"
POLICY_FILE: Final = "policy.csv"

ROLE_PREFIX: Final = "role:"
EVERYONE: Final = "role:everyone"
"""The implicit role every principal holds (a string literal in the matcher)."""
NO_NAMESPACE: Final = "-"
"""The domain of tools that target no namespace (whoami, list_models, infer)."""
ACTIONS: Final = ("read", "write")
RULE_ACTIONS: Final = ("read", "write", "*")
EFFECTS: Final = ("allow", "deny")
P_FIELDS: Final = ("subject", "namespace", "tool", "action", "effect")
G_FIELDS: Final = ("member", "role", "namespace")
MAX_PRINCIPAL_LEN: Final = 253

_R_TOKENS: Final = ("sub", "dom", "obj", "act")
_P_TOKENS: Final = ("sub", "dom", "obj", "act", "eft")
_EFFECT_EXPR: Final = "some(where (p.eft == allow)) && !some(where (p.eft == deny))"
_MODEL_KEYS: Final = {
    "request_definition": "r",
    "policy_definition": "p",
    "role_definition": "g",
    "policy_effect": "e",
    "matchers": "m",
}

_ROLE_RE: Final = re.compile(r"role:[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_NAMESPACE_RE: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z")
# keyMatch honours only the first "*" and treats it as "any suffix", so a
# pattern may hold one "*", at its end; "team-*-prod" would match team-x.
_NAMESPACE_PATTERN_RE: Final = re.compile(
    r"(?:-|\*|[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?|[a-z0-9][-a-z0-9]{0,61}\*)\Z"
)
_TOOL_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_TOOL_PATTERN_RE: Final = re.compile(r"(?:\*|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\*?)\Z")
# ',' splits a policy line, '*' is a pattern, quotes and brackets are read
# specially by Casbin's own CSV tokenizer (so its tools would see another rule).
_PRINCIPAL_FORBIDDEN: Final = frozenset("*,\"'`()[]")


class PolicyError(Exception):
    """A model or policy file that cannot be loaded, with the place to fix it."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


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
    if namespace != NO_NAMESPACE and not _NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"namespace {_clip(namespace)!r} is not a Kubernetes namespace name "
            "(lower-case letters, digits and '-', at most 63) or '-'"
        )
    return namespace


def _clip(text: str, limit: int = 80) -> str:
    """Shorten untrusted text before it goes into a message."""
    return text if len(text) <= limit else text[:limit] + "..."


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


@dataclass(frozen=True)
class Decision:
    """The answer to one request; ``reason`` is one sentence an assistant can relay."""

    allowed: bool
    rule: Rule | None
    reason: str
    policy_hash: str
    protected: str | None = None  # the protected namespace that refused an otherwise allowed write


@dataclass(frozen=True)
class EffectiveGrant:
    """A p rule as it holds for one principal: only in ``namespaces``, the rule's pattern narrowed by the
    ``g`` lines (``via``, member first) that gave the principal the rule's subject."""

    rule: Rule
    namespaces: str
    via: tuple[Rule, ...]


def pattern_meet(a: str, b: str) -> str | None:
    """The keyMatch pattern matching exactly the names both ``a`` and ``b`` match, or None when none does.

    Patterns are an exact name or one prefix ending in ``*`` (the loader refuses others), so the
    meet is always one of the two.
    """
    pa, pb = key_prefix(a), key_prefix(b)
    if pa is None and pb is None:
        return a if a == b else None
    if pa is None:
        return a if pb is not None and a.startswith(pb) else None
    if pb is None:
        return b if b.startswith(pa) else None
    return a if pa.startswith(pb) else b if pb.startswith(pa) else None


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every name ``inner`` matches is matched by ``outer``."""
    return pattern_meet(outer, inner) == inner


# --------------------------------------------------------------------------- loading


def _read(path: Path) -> tuple[bytes, str]:
    """Read a file as raw bytes (for the hash) and UTF-8 text (a BOM is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError(path, line, "not UTF-8 text") from exc
    return data, text.removeprefix("\ufeff")


def _model_statements(path: Path, text: str) -> dict[str, tuple[str, int]]:
    """Split model.conf into ``key -> (value, line)`` the way Casbin's config parser does.

    Casbin reports neither file nor line for most model errors, so we read the
    layout ourselves first and keep the line each statement starts on.
    """
    found: dict[str, tuple[str, int]] = {}
    section: str | None = None
    buf: list[str] = []
    start = 0

    def flush() -> None:
        if not buf:
            return
        statement = "".join(buf).strip()
        buf.clear()
        if section is None:
            raise PolicyError(path, start, "statement outside a [section]")
        key, eq, value = statement.partition("=")
        key = key.strip()
        if not eq:
            raise PolicyError(
                path, start, f"expected '{_MODEL_KEYS[section]} = ...', got {_clip(statement)!r}"
            )
        expected = _MODEL_KEYS[section]
        if key != expected:
            raise PolicyError(
                path,
                start,
                f"unsupported key {key!r} in [{section}]: opsgate uses exactly one '{expected} = ...'",
            )
        if key in found:
            raise PolicyError(path, start, f"'{key}' is defined twice (first on line {found[key][1]})")
        found[key] = (value.strip(), start)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            flush()
            continue
        if line[0] == "[" and line[-1] == "]":
            flush()
            name = line[1:-1].strip()
            if name not in _MODEL_KEYS:
                raise PolicyError(
                    path, number, f"unknown section [{name}]; expected {', '.join(_MODEL_KEYS)}"
                )
            section = name
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf.append(line[:-1].strip() + " ")
            continue
        buf.append(line)
        flush()
    flush()

    for sec, key in _MODEL_KEYS.items():
        if key not in found:
            raise PolicyError(path, None, f"missing '{key} = ...' in [{sec}]")
    return found


def _tokens(value: str) -> tuple[str, ...]:
    return tuple(token.strip() for token in value.split(","))


def _check_model_shape(path: Path, statements: dict[str, tuple[str, int]]) -> None:
    """Reject models whose request, rule or effect shape the loader and reasons do not fit."""
    value, line = statements["r"]
    if _tokens(value) != _R_TOKENS:
        raise PolicyError(path, line, f"request definition must be 'r = {', '.join(_R_TOKENS)}'")
    value, line = statements["p"]
    if _tokens(value) != _P_TOKENS:
        raise PolicyError(path, line, f"policy definition must be 'p = {', '.join(_P_TOKENS)}'")
    value, line = statements["g"]
    if _tokens(value) != ("_", "_", "_"):
        raise PolicyError(
            path, line, "role definition must be 'g = _, _, _' (member, role, namespace pattern)"
        )
    value, line = statements["e"]
    if " ".join(value.split()) != _EFFECT_EXPR:
        raise PolicyError(path, line, f"policy effect must be 'e = {_EFFECT_EXPR}' (deny overrides allow)")


def _matcher_ast(matcher: str) -> ast.Expression:
    """Parse a matcher (already through Casbin's escape_assertion) exactly as Casbin rewrites it."""
    expr = matcher.replace("&&", "and").replace("||", "or")
    expr = re.sub(r"!(?!=)", "not ", expr)
    return ast.parse(expr.strip(), mode="eval")


# The matcher the index reproduces (see index.py); a model.conf whose matcher
# parses to the same tree, whatever its spacing or redundant parentheses, is
# decided through the index.
SHIPPED_MATCHER: Final = (
    '(g(r.sub, p.sub, r.dom) || g("role:everyone", p.sub, r.dom)) && keyMatch(r.dom, p.dom) '
    '&& keyMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)'
)
_SHIPPED_MATCHER_TREE: Final = ast.dump(_matcher_ast(escape_assertion(SHIPPED_MATCHER)))


def _check_matcher(path: Path, line: int, matcher: str) -> bool:
    """Reject a matcher that does not parse or names an unknown function or field.

    Why: Casbin looks names up only while evaluating, and ``&&`` short-circuits,
    so a misspelled ``keyMatsch`` would fail on some requests only, at run time.
    Returns whether the matcher is the shipped one (so the index may decide).
    """
    glued = re.search(r"\S(?:&&|\|\|)|(?:&&|\|\|)\S", matcher)
    if glued:
        raise PolicyError(
            path, line, f"put spaces around && and || (near {glued.group(0)!r}): Casbin rewrites them "
            "to 'and' and 'or' without adding any, which glues the names on either side together"
        )
    try:
        tree = _matcher_ast(matcher)
    except SyntaxError as exc:
        raise PolicyError(path, line, f"matcher is not a valid expression: {exc.msg}") from exc
    functions = set(FunctionMap.load_function_map().get_functions()) | {"g"}
    names = {f"r_{t}" for t in _R_TOKENS} | {f"p_{t}" for t in _P_TOKENS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in functions):
                raise PolicyError(path, line, f"matcher calls unknown function {ast.unparse(node.func)!r}")
        elif isinstance(node, ast.Name) and node.id not in names and node.id not in functions:
            shown = re.sub(r"^([rp])_", r"\1.", node.id)
            raise PolicyError(path, line, f"matcher uses unknown name {shown!r}")
        elif isinstance(node, ast.Attribute):
            raise PolicyError(path, line, f"matcher uses unknown name {ast.unparse(node)!r}")
    return ast.dump(tree) == _SHIPPED_MATCHER_TREE


def _build_enforcer(model_path: Path, model_text: str) -> tuple[Any, int, bool]:
    """Build an empty Enforcer from the model text.

    Returns it, the matcher's line, and whether the matcher is the shipped one.
    """
    statements = _model_statements(model_path, model_text)
    _check_model_shape(model_path, statements)
    matcher_line = statements["m"][1]
    shipped = _check_matcher(model_path, matcher_line, remove_comments(escape_assertion(statements["m"][0])))
    try:
        model = Model()
        model.load_model_from_text(model_text)
        enforcer = casbin.Enforcer(model)
    except Exception as exc:
        raise PolicyError(model_path, None, f"Casbin cannot load the model: {exc}") from exc
    if not enforcer.add_named_domain_matching_func("g", key_match_func):
        raise PolicyError(model_path, statements["g"][1], "Casbin made no role manager for 'g'")
    _probe(enforcer, model_path, matcher_line)
    if shipped and ast.dump(_matcher_ast(enforcer.model["m"]["m"].value)) != _SHIPPED_MATCHER_TREE:
        shipped = False  # Casbin read the statement differently from us: let Casbin decide
    return enforcer, matcher_line, shipped


def _probe(enforcer: Any, model_path: Path, matcher_line: int) -> None:
    """Evaluate one request so a matcher that cannot run fails at load, not at decide."""
    try:
        enforcer.enforce_ex("opsgate-probe", NO_NAMESPACE, "opsgate-probe", "read")
    except Exception as exc:
        raise PolicyError(model_path, matcher_line, f"matcher fails to evaluate: {exc}") from exc


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


def _check_namespace_pattern(value: str) -> None:
    if not _NAMESPACE_PATTERN_RE.match(value):
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
        raise ValueError(f"a rule starts with p or g, got {_clip(ptype)!r}")
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


def _parse_policy(path: Path, text: str, known_tools: Collection[str] | None) -> list[tuple[Rule, int]]:
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


def policy_files(path: Path) -> tuple[Path, list[Path]]:
    """Resolve a load path to (model.conf, policy CSVs in load order)."""
    if path.is_dir():
        model = path / MODEL_FILE
        if not model.is_file():
            raise PolicyError(
                model,
                None,
                "missing: a policy folder holds model.conf and *.csv files "
                "(pass one .csv file instead to use the shipped model)",
            )
        csvs = sorted(p for p in path.glob("*.csv") if not p.name.startswith("."))
        if not csvs:
            raise PolicyError(path, None, "no *.csv policy file in this folder")
        return model, csvs
    if not path.exists():
        raise PolicyError(path, None, "no such file or folder")
    if path.suffix != ".csv":
        raise PolicyError(path, None, "expected a policy folder or a .csv policy file")
    return SHIPPED_DIR / MODEL_FILE, [path]


# --------------------------------------------------------------------------- the policy


class Policy:
    """A loaded, checked policy and what decides with it.

    Immutable once built: to reload, load a new Policy and swap it in whole.

    With the shipped matcher (any spacing or parenthesisation of it) decisions
    come from :class:`~opsgate.policies.index.RuleIndex`, which narrows the
    rules by subject, namespace and tool and answers exactly what Casbin's
    ``enforce_ex`` would (see index.py; tests/test_policy_fast.py proves it
    against a plain ``casbin.Enforcer``). A changed matcher falls back to
    Casbin itself, behind one lock: correct, and as slow as Casbin.
    """

    # Casbin caches a role manager per request domain and a node per subject
    # inside it; past this many distinct (principal, namespace) pairs the cache
    # is rebuilt, so untrusted namespaces cannot grow memory without bound.
    # (Casbin fallback only: the index keeps no per-request state.)
    _role_cache_limit: int = 1024
    # Decisions are memoized by the full request (the policy never changes
    # under a Policy object), least recently used first out.
    _memo_limit: int = 4096

    def __init__(
        self, model_path: Path, model_text: str, rules: Iterable[Rule], sources: Iterable[Path], digest: str
    ) -> None:
        """Build from already-read, already-checked parts; use :meth:`load` or :meth:`default`."""
        self.model_path = model_path
        self._model_text = model_text
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.sources: tuple[Path, ...] = tuple(sources)
        self.hash = digest
        # Limits on arguments, by the subject a grant names (see bounds.py).
        self.bounds: dict[str, SubjectBounds] = {}
        # Namespaces where a write needs an allow rule naming the namespace itself (bounds.toml [protected];
        # the cluster's own when no bounds file says otherwise).
        self.protected: tuple[str, ...] = DEFAULT_PROTECTED
        # The bounds file that applies, or None: no argument bounds, default protections (see bounds_note).
        self.bounds_path: Path | None = None
        self._enforcer, self._matcher_line, shipped_matcher = _build_enforcer(model_path, model_text)
        self._grants = tuple(rule for rule in self.rules if rule.ptype == "p")
        links = [rule.fields for rule in self.rules if rule.ptype == "g"]
        self._index = RuleIndex([rule.fields for rule in self._grants], links)
        self._by_fields: dict[tuple[str, ...], Rule] = {}
        self.indexed = shipped_matcher
        """True when decisions come from the index; False when Casbin evaluates a changed matcher."""
        if not shipped_matcher:
            self._load_into_casbin()

        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[str, str, str, str], Decision] = OrderedDict()
        self._role_cache_keys: set[tuple[str, str]] = set()
        self._witnesses = _witness_namespaces([r.fields[1] for r in self._grants] + [dom for _, _, dom in links])
        self._effective: OrderedDict[str, tuple[EffectiveGrant, ...]] = OrderedDict()
        self._links_by_member: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.ptype == "g":
                self._links_by_member.setdefault(rule.fields[0], []).append(rule)
        self._grants_by_subject: dict[str, list[int]] = {}
        for position, rule in enumerate(self._grants):
            self._grants_by_subject.setdefault(rule.fields[0], []).append(position)
        self._where: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._allows_by_subject: dict[str, list[int]] = {}
        for position, rule in enumerate(self._grants):
            if rule.fields[4] == "allow":
                self._allows_by_subject.setdefault(rule.fields[0], []).append(position)

    def _load_into_casbin(self) -> None:
        """Give the enforcer every rule (only needed when Casbin itself decides)."""
        p_rules: list[list[str]] = []
        g_rules: list[list[str]] = []
        for rule in self.rules:
            self._by_fields.setdefault((rule.ptype, *rule.fields), rule)
            (p_rules if rule.ptype == "p" else g_rules).append(list(rule.fields))
        try:
            if p_rules and not self._enforcer.add_policies(p_rules):
                raise RuntimeError("Casbin refused the p rules")
            if g_rules and not self._enforcer.add_named_grouping_policies("g", g_rules):
                raise RuntimeError("Casbin refused the g rules")
        except Exception as exc:
            raise PolicyError(self.sources[-1], None, f"Casbin cannot load the rules: {exc}") from exc
        _probe(self._enforcer, self.model_path, self._matcher_line)

    def __repr__(self) -> str:
        sources = [str(p) for p in self.sources]
        return f"Policy(sources={sources}, rules={len(self.rules)}, hash={self.hash[:12]})"

    @classmethod
    def load(cls, path: Path | str, *, known_tools: Collection[str] | None = None) -> Policy:
        """Load a policy folder (model.conf + every ``*.csv``, by name) or one ``.csv`` file.

        A ``bounds.toml`` beside the CSV files adds argument bounds (see bounds.py).
        Without one no argument bounds apply, and the cluster's own namespaces
        are protected all the same (:data:`~opsgate.policies.bounds.DEFAULT_PROTECTED`);
        ``bounds_path`` and :meth:`bounds_note` say which file, if any, applies.

        With one ``.csv`` file the shipped model.conf is used. Any problem
        raises PolicyError naming the file and line; nothing is half-loaded.
        With ``known_tools``, a tool name (or pattern) that names no known tool
        is an error, so typos are caught at load rather than never matching.

        ``hash`` is the SHA-256 of the files' bytes concatenated in load order,
        so a reviewer can recompute it: ``cat model.conf *.csv bounds.toml | sha256sum``
        (in the folder; ``LC_ALL=C`` for the same name order).

        Loading is linear in the rules (10,000 rules load in well under a
        second): with the shipped matcher no Casbin enforcer is filled, so a
        reload is cheap enough to run on every change of the files.
        """
        path = Path(path)
        model_path, csv_paths = policy_files(path)
        model_bytes, model_text = _read(model_path)
        digest = hashlib.sha256(model_bytes)
        rules: dict[tuple[str, ...], Rule] = {}
        for csv_path in csv_paths:
            data, text = _read(csv_path)
            digest.update(data)
            for rule, line in _parse_policy(csv_path, text, known_tools):
                # Casbin's add_policies refuses a whole batch holding a rule it has.
                first = rules.setdefault((rule.ptype, *rule.fields), rule)
                if first is not rule:
                    raise PolicyError(csv_path, line, f"duplicate of {first.source}")
        bounds: dict[str, SubjectBounds] = {}
        protected: tuple[str, ...] = DEFAULT_PROTECTED
        bounds_path: Path | None = csv_paths[0].parent / BOUNDS_FILE
        if bounds_path is not None and bounds_path.is_file():
            data, _ = _read(bounds_path)
            digest.update(data)
            try:
                bounds = parse_bounds(bounds_path, data)
                protected = parse_protected(bounds_path, data)
            except BoundsError as exc:
                raise PolicyError(bounds_path, exc.line, exc.message) from exc
            csv_paths = [*csv_paths, bounds_path]
        else:
            bounds_path = None
        policy = cls(model_path, model_text, rules.values(), (model_path, *csv_paths), digest.hexdigest())
        policy.bounds = bounds
        policy.protected = protected
        policy.bounds_path = bounds_path
        return policy

    @classmethod
    def default(cls, *, known_tools: Collection[str] | None = None) -> Policy:
        """Load the shipped model.conf and policy.csv (read-only for everyone)."""
        return cls.load(SHIPPED_DIR / POLICY_FILE, known_tools=known_tools)

    def with_rules(
        self, lines: Iterable[tuple[int, str]], source: Path, *, known_tools: Collection[str] | None = None
    ) -> Policy:
        """A new Policy: these rules plus ``lines`` ((line number, text) read from ``source``), appended.

        For decision tables that bring their own assignments (``g, alice,
        role:operator, team-*``). A line equal to a rule already loaded is
        skipped, so a table runs against a policy that already holds it. The
        new hash covers the old one and the added lines.
        """
        known = {(rule.ptype, *rule.fields) for rule in self.rules}
        added: list[Rule] = []
        digest = hashlib.sha256(self.hash.encode())
        for number, raw in lines:
            try:
                parsed = parse_line(raw, known_tools)
            except ValueError as exc:
                raise PolicyError(source, number, str(exc)) from None
            if parsed is None:
                continue
            digest.update(b"\n" + raw.strip().encode())
            key = (parsed[0], *parsed[1])
            if key in known:
                continue
            known.add(key)
            added.append(Rule(parsed[0], parsed[1], f"{source.name}:{number}"))
        policy = Policy(
            self.model_path, self._model_text, (*self.rules, *added), (*self.sources, source), digest.hexdigest()
        )
        policy.bounds = dict(self.bounds)
        policy.protected = self.protected
        policy.bounds_path = self.bounds_path
        return policy

    def bounds_for(self, subject: str | None) -> SubjectBounds:
        """The bounds of the subject whose rule allowed a call: its own, else :data:`DEFAULT_BOUNDS`.

        Never None, so the bounds that hold for everyone (no url override, no
        storage URI outside the models folder) hold for subjects bounds.toml
        does not name, and for policies with no bounds file at all.
        """
        return self.bounds.get(subject or "", DEFAULT_BOUNDS)

    def bounds_note(self) -> str:
        """One line saying which bounds file applies, if any, and what is protected: for lint, doctor, whoami."""
        return bounds_note(self.bounds_path, self.protected)

    # ----------------------------------------------------------------------- deciding

    def decide(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """Decide one request; never raises: any failure is a denial that says why."""
        try:
            key = (principal, namespace, tool, action)
            with self._lock:
                cached = self._memo.get(key)
                if cached is not None:
                    self._memo.move_to_end(key)
                    return cached
            problem = _request_problem(principal, namespace, tool, action)
            if problem is not None:
                return Decision(False, None, f"denied: invalid request: {problem}", self.hash)
            if self.indexed:
                decision = self._match(principal, namespace, tool, action)
            else:
                with self._lock:
                    decision = self._enforce(principal, namespace, tool, action)
            decision = self._with_where(self._protect(decision, namespace, action), principal, namespace, tool, action)
            with self._lock:
                self._memo[key] = decision
                if len(self._memo) > self._memo_limit:
                    self._memo.popitem(last=False)
            return decision
        except Exception as exc:
            return Decision(False, None, f"denied: policy error ({type(exc).__name__}: {exc})", self.hash)

    def _protect(self, decision: Decision, namespace: str, action: str) -> Decision:
        """A write Casbin allowed in a protected namespace stands only if the allowing rule names it.

        Deny rules cannot express "unless a rule names it" (deny always overrides), so
        protection is this one step after Casbin: ``*`` or ``kube-*`` never reaches
        kube-system; ``p, role:platform, kube-system, deploy, write, allow`` does.
        """
        if not decision.allowed or action != "write" or namespace not in self.protected:
            return decision
        rule = decision.rule
        if rule is not None and rule.fields[1] == namespace:
            return decision
        named = f"{rule.source} allows it only through the pattern {rule.fields[1]!r}" if rule else "no rule names it"
        return Decision(
            False, None,
            f"denied: namespace {namespace} is protected ({self._protected_by()}): a write there needs an allow "
            f"rule that names {namespace} itself; {named}",
            self.hash, protected=namespace,
        )

    def _protected_by(self) -> str:
        return f"{BOUNDS_FILE} [protected]" if self.bounds_path is not None else f"by default, no {BOUNDS_FILE}"

    def decide_uncached(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """:meth:`decide` without the memo: for benchmarks and tests of the matching itself."""
        problem = _request_problem(principal, namespace, tool, action)
        if problem is not None:
            return Decision(False, None, f"denied: invalid request: {problem}", self.hash)
        if self.indexed:
            decision = self._protect(self._match(principal, namespace, tool, action), namespace, action)
        else:
            with self._lock:
                decision = self._enforce(principal, namespace, tool, action)
            decision = self._protect(decision, namespace, action)
        return self._with_where(decision, principal, namespace, tool, action)

    def _match(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """Decide through the index: the first matching deny, else the last matching allow."""
        first_deny, last_allow = self._index.match(principal, namespace, tool, action)
        if first_deny is not None:
            rule = self._grants[first_deny]
            return Decision(False, rule, f"denied by {rule.source} ({rule.text})", self.hash)
        if last_allow is not None:
            rule = self._grants[last_allow]
            return Decision(True, rule, f"allowed by {rule.source} ({rule.text})", self.hash)
        return self._default_deny(principal, namespace, tool, action)

    def _default_deny(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        where = "outside any namespace" if namespace == NO_NAMESPACE else f"in namespace {namespace}"
        return Decision(
            False,
            None,
            f"denied: no rule allows {principal} to {action} with {tool} {where} (default deny)",
            self.hash,
        )

    def _enforce(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """Ask Casbin (lock held) and turn its matched rule back into our Rule."""
        if (principal, namespace) not in self._role_cache_keys:
            if len(self._role_cache_keys) >= self._role_cache_limit:
                self._enforcer.build_role_links()  # drops Casbin's per-domain caches
                self._role_cache_keys.clear()
            self._role_cache_keys.add((principal, namespace))
        allowed_raw, explain = self._enforcer.enforce_ex(principal, namespace, tool, action)
        allowed = bool(allowed_raw)
        rule = self._by_fields.get(("p", *(str(f) for f in explain))) if explain else None
        if allowed:
            if rule is None:
                raise RuntimeError(f"Casbin allowed without a known matching rule ({explain!r})")
            return Decision(True, rule, f"allowed by {rule.source} ({rule.text})", self.hash)
        if rule is not None and rule.fields[4] == "deny":
            return Decision(False, rule, f"denied by {rule.source} ({rule.text})", self.hash)
        return self._default_deny(principal, namespace, tool, action)

    # ----------------------------------------------------------------------- explaining

    def roles_of(self, principal: str, namespace: str) -> list[str]:
        """Roles the principal holds in the namespace: assigned, inherited, and role:everyone's.

        Raises ValueError for an invalid principal or namespace.
        """
        validate_principal(principal)
        validate_namespace(namespace)
        roles = self._index.reachable(principal, namespace)
        for role in (EVERYONE, *self._index.reachable(EVERYONE, namespace)):
            if role not in roles:
                roles.append(role)
        return roles

    def grants_of(self, principal: str) -> list[Rule]:
        """Every p rule (allow or deny) that applies to the principal in some namespace, in policy order.

        For a whoami summary. Exact for the shipped matcher: each namespace
        pattern is tried through one representative namespace, and every
        namespace behaves like one of those representatives.
        """
        validate_principal(principal)
        applies: set[int] = set()
        for ns in self._witnesses:
            applies |= self._index.rules_for(self._index.subjects(principal, ns), ns)
        return [self._grants[i] for i in sorted(applies)]

    def may_call_somewhere(self, principal: str, tool: str, action: str, *, namespaced: bool = True) -> bool:
        """Whether some namespace lets the principal make this call: for filtering tools/list.

        ``namespaced``: the tool targets a namespace (every Kubernetes
        namespace is tried, through one representative per way a namespace can
        match the policy's patterns); otherwise only ``-`` is. Never raises;
        a listing only, every call is still decided. With a changed matcher
        (Casbin deciding) a namespaced tool is always listed.
        """
        try:
            if _request_problem(principal, NO_NAMESPACE, tool, action) is not None:
                return False
            if not namespaced:
                return self.decide(principal, NO_NAMESPACE, tool, action).allowed
            if not self.indexed:
                return True
            index = self._index
            subjects = {principal, EVERYONE, *index.reachable_anywhere(principal), *index.reachable_anywhere(EVERYONE)}
            tried: set[str] = set()
            for subject in subjects:
                for position in self._allows_by_subject.get(subject, ()):
                    _, dom, obj, act, _ = self._grants[position].fields
                    if act not in ("*", action) or not key_match(tool, obj):
                        continue
                    for ns in self._witnesses_matching(dom):
                        if ns == NO_NAMESPACE or ns in tried:
                            continue
                        tried.add(ns)
                        first_deny, last_allow = index.match(principal, ns, tool, action)
                        if first_deny is None and last_allow is not None and not (
                            action == "write" and ns in self.protected and self._grants[last_allow].fields[1] != ns
                        ):
                            return True
            return False
        except Exception:
            return False

    def _witnesses_matching(self, pattern: str) -> list[str]:
        """The representative namespaces a keyMatch pattern matches (witnesses are sorted)."""
        star = pattern.find("*")
        witnesses = self._witnesses
        if star == -1:
            at = bisect.bisect_left(witnesses, pattern)
            return [pattern] if at < len(witnesses) and witnesses[at] == pattern else []
        prefix = pattern[:star]
        start = bisect.bisect_left(witnesses, prefix)
        end = bisect.bisect_left(witnesses, prefix + "\U0010ffff")
        return list(witnesses[start:end])

    def effective_grants(self, principal: str) -> tuple[EffectiveGrant, ...]:
        """Every p rule that holds for the principal somewhere, each with the namespaces it holds in.

        ``g, alice, role:operator, team-*`` and ``p, role:operator, *, *, write, allow`` give alice
        that write in ``team-*``, not in ``*``: a rule holds where its own pattern and every link of
        the role chain that reaches its subject all match (Casbin checks each link against the
        request's namespace). role:everyone's rules and roles hold for every principal. Policy order;
        one entry per rule and distinct namespace pattern. Raises ValueError for an invalid principal.
        """
        validate_principal(principal)
        with self._lock:
            cached = self._effective.get(principal)
        if cached is not None:
            return cached
        by_member, by_subject = self._links_by_member, self._grants_by_subject
        held: dict[str, list[tuple[str, tuple[Rule, ...]]]] = {}
        frontier: list[tuple[str, str, tuple[Rule, ...]]] = [(principal, "*", ()), (EVERYONE, "*", ())]
        for hop in range(MAX_ROLE_HOPS + 1):
            following: list[tuple[str, str, tuple[Rule, ...]]] = []
            for subject, pattern, chain in frontier:
                known = held.setdefault(subject, [])
                if any(pattern_covers(other, pattern) for other, _ in known):
                    continue
                known.append((pattern, chain))
                if hop == MAX_ROLE_HOPS:
                    continue
                for link in by_member.get(subject, ()):
                    meet = pattern_meet(pattern, link.fields[2])
                    if meet is not None:
                        following.append((link.fields[1], meet, (*chain, link)))
            frontier = following
        found: dict[int, list[EffectiveGrant]] = {}
        for subject, holdings in held.items():
            for pattern, chain in holdings:
                for position in by_subject.get(subject, ()):
                    rule = self._grants[position]
                    meet = pattern_meet(pattern, rule.fields[1])
                    if meet is None:
                        continue
                    entries = found.setdefault(position, [])
                    if any(pattern_covers(e.namespaces, meet) for e in entries):
                        continue
                    entries[:] = [e for e in entries if not pattern_covers(meet, e.namespaces)]
                    entries.append(EffectiveGrant(rule, meet, chain))
        result = tuple(grant for position in sorted(found) for grant in found[position])
        with self._lock:
            self._effective[principal] = result
            if len(self._effective) > 256:
                self._effective.popitem(last=False)
        return result

    def allowed_in(self, principal: str, tool: str, action: str) -> list[str]:
        """Where a namespaced call would be allowed, as patterns, each with the namespaces a deny or a
        protection cuts out of it (``team-* (except team-secret)``); empty when nowhere. For denials."""
        grants = [
            g for g in self.effective_grants(principal)
            if g.rule.fields[3] in ("*", action) and key_match(tool, g.rule.fields[2])
        ]
        denies = [g.namespaces for g in grants if g.rule.fields[4] == "deny"]
        places: list[tuple[str, list[str]]] = []
        for grant in grants:
            where = grant.namespaces
            if grant.rule.fields[4] != "allow" or where == NO_NAMESPACE:
                continue
            if any(pattern_covers(deny, where) for deny in denies):
                continue
            cut = [deny for deny in denies if deny != NO_NAMESPACE and pattern_meet(deny, where) is not None]
            if action == "write":
                shielded = [ns for ns in self.protected if key_match(ns, where) and grant.rule.fields[1] != ns]
                if where in shielded:
                    continue
                cut += [ns for ns in shielded if ns not in cut]
            places.append((where, cut))
        shown: list[str] = []
        for where, cut in places:
            if any(other != where and not others_cut and pattern_covers(other, where) for other, others_cut in places):
                continue
            text = f"{where} (except {', '.join(sorted(set(cut)))})" if cut else where
            if text not in shown:
                shown.append(text)
        return shown

    def _with_where(self, decision: Decision, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """A denial of a namespaced call says where the principal may make it, if anywhere (whoami's grants
        say the rest). Invalid requests and calls outside any namespace are left as they are."""
        if decision.allowed or namespace == NO_NAMESPACE or decision.reason.startswith("denied: invalid request"):
            return decision
        key = (principal, tool, action)
        with self._lock:
            note = self._where.get(key)
        if note is None:
            places = self.allowed_in(principal, tool, action)
            note = (
                f"{principal} may {action} with {tool} in: {', '.join(places)}" if places
                else f"{principal} may not {action} with {tool} in any namespace"
            )
            with self._lock:
                self._where[key] = note
                if len(self._where) > 1024:
                    self._where.popitem(last=False)
        return dataclasses.replace(decision, reason=f"{decision.reason}; {note}")

    def granted_via(self, principal: str, namespace: str, rule: Rule) -> tuple[Rule, ...]:
        """The ``g`` lines (member first) that gave the principal ``rule``'s subject in ``namespace``; empty
        when the rule names the principal itself or role:everyone. For decision records: an auditor sees
        which grant let alice act, not only the role's rule (issue 15 item 5)."""
        for grant in self.effective_grants(principal):
            if grant.rule == rule and pattern_covers(grant.namespaces, namespace):
                return grant.via
        return ()

    def subjects_of(self, principal: str, namespace: str) -> set[str]:
        """Every subject whose rules apply to the principal in the namespace (itself, its roles, everyone's)."""
        return self._index.subjects(principal, namespace)


def bounds_note(bounds_path: Path | None, protected: tuple[str, ...]) -> str:
    """Which bounds file applies (None: none) and which namespaces are protected, in one line."""
    shown = ", ".join(protected) or "none"
    if bounds_path is None:
        default = " (the default)" if protected == DEFAULT_PROTECTED else ""
        return (
            f"bounds: no {BOUNDS_FILE} beside the policy, so no argument bounds apply (no max_replicas, "
            f"image_prefixes, rate limits...); protected namespaces: {shown}{default}"
        )
    return f"bounds: {bounds_path}; protected namespaces: {shown}"


def _request_problem(principal: str, namespace: str, tool: str, action: str) -> str | None:
    """Why a request cannot be decided as asked, or None when it is well-formed."""
    try:
        validate_principal(principal)
        validate_namespace(namespace)
    except ValueError as exc:
        return str(exc)
    if not isinstance(tool, str) or not _TOOL_RE.match(tool):
        return f"tool {_clip(str(tool))!r} is not a tool name"
    if action not in ACTIONS:
        return f"action must be read or write, got {_clip(str(action))!r}"
    return None


def _witness_namespaces(patterns: Iterable[str]) -> tuple[str, ...]:
    """One namespace for each way a namespace can match the given keyMatch patterns.

    A pattern is an exact name or a prefix (``team-*``). A namespace that is
    not one of the exact names matches exactly the prefixes it starts with, so
    it behaves like ``longest-matching-prefix + "\\0"`` ("\\0" extends no
    pattern); ``"\\0"`` alone stands for a namespace no prefix matches.
    """
    exact: set[str] = set()
    prefixes: set[str] = set()
    for pattern in patterns:
        star = pattern.find("*")
        if star == -1:
            exact.add(pattern)
        else:
            prefixes.add(pattern[:star])
    return tuple(sorted(exact | {p + "\0" for p in prefixes} | {"\0"}))
