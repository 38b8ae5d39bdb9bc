"""Reading ``bounds.toml``: the bounds of each subject and the protected namespaces, with the line to fix.

The loader reads the file; this module turns its bytes into :class:`~opsgate.policies.bounds.SubjectBounds`
per subject and the ``[protected]`` namespaces, and says in one line which bounds file applies
(:func:`bounds_note`), for lint, doctor and whoami.

    [subject."role:operator"]
    max_replicas = 10
    [protected]
    namespaces = ["kube-system", "kube-public", "kube-node-lease"]
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from .bounds import SubjectBounds
from .errors import BoundsError

__all__ = ["BOUNDS_FILE", "DEFAULT_PROTECTED", "bounds_lines", "bounds_note", "parse_bounds", "parse_protected"]

BOUNDS_FILE: Final = "bounds.toml"

# Namespaces protected when no bounds file says otherwise: the cluster's own.
# Only ``[protected] namespaces = [...]`` in a bounds.toml changes the list
# (``namespaces = []`` turns protection off, explicitly).
DEFAULT_PROTECTED: Final = ("kube-system", "kube-public", "kube-node-lease")

_HEADER_RE: Final = re.compile(
    r"""^\s*\[\s*subject\s*\.\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*\]\s*(?:#.*)?$"""
)
_TABLE_RE: Final = re.compile(r"^\s*\[")
_KEY_RE: Final = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TOML_LINE_RE: Final = re.compile(r"\(at line (\d+)")


def bounds_lines(text: str) -> dict[tuple[str, str | None], int]:
    """Where each ``[subject."X"]`` table (key None) and each key inside it is written.

    For messages only: TOML itself is parsed by tomllib, which keeps no lines.
    """
    found: dict[tuple[str, str | None], int] = {}
    subject: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_RE.match(line)
        if header:
            subject = next(g for g in header.groups() if g is not None)
            found.setdefault((subject, None), number)
            continue
        if _TABLE_RE.match(line):
            subject = None
            continue
        key = _KEY_RE.match(line)
        if key and subject is not None:
            found.setdefault((subject, key.group(1)), number)
    return found


def parse_bounds(path: Path, data: bytes) -> dict[str, SubjectBounds]:
    """Parse a bounds file; BoundsError names the line when it can."""
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise BoundsError(path, data[: exc.start].count(b"\n") + 1, "not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE_RE.search(str(exc))
        line = int(found.group(1)) if found else None
        if line is None and "end of document" in str(exc):
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        raise BoundsError(path, line, str(exc)) from exc
    unknown = set(doc) - {"subject", "protected"}
    if unknown:
        raise BoundsError(path, None, f"unknown table(s) {sorted(unknown)}; bounds go under [subject.\"<name>\"]")
    subjects = doc.get("subject", {})
    if not isinstance(subjects, dict):
        raise BoundsError(path, None, "[subject] must be a table of subjects")
    lines = bounds_lines(text)
    bounds: dict[str, SubjectBounds] = {}
    for subject, table in subjects.items():
        try:
            bounds[subject] = SubjectBounds.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            key = str(first["loc"][0]) if first["loc"] else None
            line = lines.get((subject, key)) or lines.get((subject, None))
            raise BoundsError(path, line, f'subject "{subject}": {where}: {first["msg"]}') from exc
    return bounds


def parse_protected(path: Path, data: bytes) -> tuple[str, ...]:
    """``[protected] namespaces = [...]``: where writes need a rule that names the namespace itself.

    Left out (no table, or no key), the cluster's own namespaces
    (:data:`DEFAULT_PROTECTED`): protection is switched off only by writing
    ``namespaces = []``, never by forgetting the table.
    """
    doc = tomllib.loads(data.decode("utf-8"))  # parse_bounds has already checked the file reads
    table = doc.get("protected", {})
    if not isinstance(table, dict) or set(table) - {"namespaces"}:
        raise BoundsError(path, None, "[protected] takes one key: namespaces = [\"kube-system\", ...]")
    if "namespaces" not in table:
        return DEFAULT_PROTECTED
    names = table["namespaces"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() and "*" not in n for n in names):
        raise BoundsError(path, None, "[protected] namespaces must be a list of namespace names (no patterns)")
    return tuple(names)



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

