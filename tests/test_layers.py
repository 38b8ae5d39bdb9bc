"""The import layers of the design card hold: `lint-imports` keeps every contract in pyproject.toml.

server is above the sandbox, tools, policies and audit; tools never import server; policies and audit import
neither; vocab imports nothing of ours; only the CLI and the built-in cluster import the sandbox.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_lint_imports_keeps_every_contract() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         "sys.exit(lint_imports_command())", "--no-cache"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_every_package_sits_in_a_layer() -> None:
    """A new top-level package cannot slip past the contracts: each one shipped is a root and has its layer."""
    project = _pyproject()
    shipped = set(project["tool"]["setuptools"]["package-dir"])
    linter = project["tool"]["importlinter"]
    assert set(linter["root_packages"]) == shipped
    layered: set[str] = set()
    for contract in linter["contracts"]:
        if contract["type"] == "layers":
            for layer in contract["layers"]:
                layered.update(name.strip() for name in layer.replace(":", "|").split("|"))
    assert layered == shipped


def test_typecheck_links_mirror_the_package_dir() -> None:
    """`mypy` sees opsgate.<name> through .typecheck/opsgate/<name>: one relative link to each shipped folder."""
    package_dir: dict[str, str] = _pyproject()["tool"]["setuptools"]["package-dir"]
    links = ROOT / ".typecheck" / "opsgate"
    expected = {name.removeprefix("opsgate."): folder for name, folder in package_dir.items()}
    assert {p.name for p in links.iterdir()} == set(expected)
    for name, folder in expected.items():
        link = links / name
        assert link.is_symlink() and link.readlink() == Path("..", "..", folder), link
        assert link.resolve() == (ROOT / folder).resolve()
