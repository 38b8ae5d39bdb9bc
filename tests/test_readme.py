"""The README's test command is what CI runs; the install command names a real entry point."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = _commands()
    assert "pip install ." in commands[0] and "opsgate serve" in commands[0]
    assert commands[1] == "opsgate demo"
    tests = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.strip() in ci
