"""What `pip install opsgate` ships: every subpackage folder under the package-dir mapping, and its data files.

The editable install finds subpackages by path, so the tests pass even when a wheel would leave one out;
this holds pyproject's explicit `packages` list to the folders.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f)["tool"]["setuptools"]
    return table


def test_every_folder_with_an_init_is_a_shipped_package() -> None:
    setuptools = _setuptools()
    folders: set[str] = set()
    for package, folder in setuptools["package-dir"].items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            folders.add(".".join((package, *relative.parts)))
    assert set(setuptools["packages"]) == folders


def test_package_data_globs_match_files() -> None:
    setuptools = _setuptools()
    for package, globs in setuptools["package-data"].items():
        folder = ROOT / setuptools["package-dir"][package]
        for pattern in globs:
            assert list(folder.glob(pattern)), (package, pattern)
