"""Shared fixtures, and the ``stdio`` marker put on every test that starts a real ``opsgate serve`` process."""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from tests import harness

# What starts a server: the harness's stdio client, or a command line running the server's module
# (["-m", "opsgate.server", ...], or that list written inside a launcher script).
_STARTERS: tuple[Callable[..., Any], ...] = (harness.serve, harness.serve_on)
_SERVER_MODULE = "opsgate.server"
_SERVER_COMMAND = re.compile(r"-m['\",\s]+opsgate\.server\b")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _codes(code: types.CodeType) -> list[types.CodeType]:
    """A function's code and the code of every function, lambda or comprehension nested in it."""
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += _codes(const)
    return found


def _starts_server(fn: Any, seen: set[int]) -> bool:
    """Does ``fn`` start a server, itself or through a helper of the test suite it names (followed by name)."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    names = vars(module) if module is not None else {}
    for part in _codes(code):
        if any(isinstance(c, str) and (c == _SERVER_MODULE or _SERVER_COMMAND.search(c)) for c in part.co_consts):
            return True
        if "tests.harness" in part.co_names and {"serve", "serve_on"} & set(part.co_names):
            return True  # imported inside the function: `from tests.harness import serve`
        for name in part.co_names:
            target = names.get(name)
            if any(target is starter for starter in _STARTERS):
                return True
            if callable(target) and str(getattr(target, "__module__", "")).startswith("tests") \
                    and _starts_server(target, seen):
                return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``stdio`` on each test whose function or fixtures start a server, so ``pytest -m "not stdio"`` is quick."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        seen: set[int] = set()
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_starts_server(fn, seen) for fn in (item.function, *fixtures)):
            item.add_marker(pytest.mark.stdio)
