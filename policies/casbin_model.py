"""The Casbin model (``model.conf``): read with line numbers, checked against the shape opsgate decides with.

Casbin names neither file nor line for most model errors and looks matcher names up only while
evaluating, so a model is parsed here first: a wrong request or effect shape, an unknown function
or a glued ``&&`` is refused at load, naming its line. :func:`build_enforcer` also says whether the
matcher is the shipped one, so the decider may answer through its index instead of Casbin.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Any, Final

from .errors import PolicyError
from .names import NO_NAMESPACE, clip

__all__ = ["SHIPPED_MATCHER", "build_enforcer", "casbin_enforcer", "probe", "shipped_model_text"]

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
                path, start, f"expected '{_MODEL_KEYS[section]} = ...', got {clip(statement)!r}"
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


@functools.cache
def _shipped_matcher_tree() -> str:
    from casbin.util import escape_assertion

    return ast.dump(_matcher_ast(escape_assertion(SHIPPED_MATCHER)))


@functools.cache
def shipped_model_text() -> str:
    """The model.conf shipped beside this file, as read (tests load it through Casbin, build_enforcer's full path)."""
    return Path(__file__).with_name("model.conf").read_bytes().decode("utf-8").removeprefix("\ufeff")


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
    from casbin.model import FunctionMap

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
    return ast.dump(tree) == _shipped_matcher_tree()


def build_enforcer(model_path: Path, model_text: str) -> tuple[Any, int, bool]:
    """Build an empty Enforcer from the model text.

    Returns it, the matcher's line, and whether the matcher is the shipped one. The shipped model text
    itself is known good (tests/policies/test_policy_fast.py holds it to the full path below) and decided
    by the index, which needs no Casbin: for it the enforcer is None and Casbin is not even imported,
    which spares every start of the server its import.
    """
    if model_text == shipped_model_text():
        return None, _model_statements(model_path, model_text)["m"][1], True
    return casbin_enforcer(model_path, model_text)


def casbin_enforcer(model_path: Path, model_text: str) -> tuple[Any, int, bool]:
    """build_enforcer through Casbin: the model checked, loaded and probed, whatever its text."""
    import casbin
    from casbin.model import Model
    from casbin.util import escape_assertion, key_match_func, remove_comments

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
    probe(enforcer, model_path, matcher_line)
    if shipped and ast.dump(_matcher_ast(enforcer.model["m"]["m"].value)) != _shipped_matcher_tree():
        shipped = False  # Casbin read the statement differently from us: let Casbin decide
    return enforcer, matcher_line, shipped


def probe(enforcer: Any, model_path: Path, matcher_line: int) -> None:
    """Evaluate one request so a matcher that cannot run fails at load, not at decide."""
    try:
        enforcer.enforce_ex("opsgate-probe", NO_NAMESPACE, "opsgate-probe", "read")
    except Exception as exc:
        raise PolicyError(model_path, matcher_line, f"matcher fails to evaluate: {exc}") from exc

