"""The house rules a reviewer would otherwise check by hand: ``ruff`` and ``mypy --strict`` are clean.

Both are configured in pyproject.toml; CI runs them here, through the README's one test command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = BIN / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def test_ruff_is_clean() -> None:
    done = subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    """The package, tests and bench, as ``mypy`` alone checks them (pyproject's [tool.mypy]); a fresh cache."""
    done = subprocess.run([tool("mypy"), "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
