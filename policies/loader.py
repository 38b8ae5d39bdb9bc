"""Reading a policy from disk: the model, the CSV rules and bounds.toml, checked and hashed into one Policy.

Files are read here and nowhere else in ``policies``: :func:`load_policy` reads them once and
builds the immutable :class:`~opsgate.policies.decider.Policy` whole, so a reload is "load a new
one and swap it in". Any problem raises :class:`~opsgate.policies.errors.PolicyError` naming the
file and line; nothing is half-loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Final

from .bounds import SubjectBounds
from .bounds_file import BOUNDS_FILE, DEFAULT_PROTECTED, parse_bounds, parse_protected
from .decider import Policy
from .errors import BoundsError, PolicyError
from .rules import Rule, parse_line, parse_policy

__all__ = [
    "MODEL_FILE",
    "POLICY_FILE",
    "SHIPPED_DIR",
    "default_policy",
    "load_policy",
    "policy_files",
    "read_file",
    "with_rules",
]

SHIPPED_DIR: Final = Path(__file__).resolve().parent
MODEL_FILE: Final = "model.conf"
POLICY_FILE: Final = "policy.csv"


def read_file(path: Path) -> tuple[bytes, str]:
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


def load_policy(path: Path | str, *, known_tools: Collection[str] | None = None) -> Policy:
    """Load a policy folder (model.conf + every ``*.csv``, by name) or one ``.csv`` file.

    A ``bounds.toml`` beside the CSV files adds argument bounds (see bounds.py).
    Without one no argument bounds apply, and the cluster's own namespaces
    are protected all the same (:data:`~opsgate.policies.bounds_file.DEFAULT_PROTECTED`);
    ``bounds_path`` and :meth:`Policy.bounds_note` say which file, if any, applies.

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
    model_bytes, model_text = read_file(model_path)
    digest = hashlib.sha256(model_bytes)
    rules: dict[tuple[str, ...], Rule] = {}
    for csv_path in csv_paths:
        data, text = read_file(csv_path)
        digest.update(data)
        for rule, line in parse_policy(csv_path, text, known_tools):
            # Casbin's add_policies refuses a whole batch holding a rule it has.
            first = rules.setdefault((rule.ptype, *rule.fields), rule)
            if first is not rule:
                raise PolicyError(csv_path, line, f"duplicate of {first.source}")
    bounds: dict[str, SubjectBounds] = {}
    protected: tuple[str, ...] = DEFAULT_PROTECTED
    bounds_path: Path | None = csv_paths[0].parent / BOUNDS_FILE
    if bounds_path is not None and bounds_path.is_file():
        data, _ = read_file(bounds_path)
        digest.update(data)
        try:
            bounds = parse_bounds(bounds_path, data)
            protected = parse_protected(bounds_path, data)
        except BoundsError as exc:
            raise PolicyError(bounds_path, exc.line, exc.message) from exc
        csv_paths = [*csv_paths, bounds_path]
    else:
        bounds_path = None
    return Policy(
        model_path, model_text, rules.values(), (model_path, *csv_paths), digest.hexdigest(),
        bounds=bounds, protected=protected, bounds_path=bounds_path,
    )


def default_policy(*, known_tools: Collection[str] | None = None) -> Policy:
    """Load the shipped model.conf and policy.csv (read-only for everyone)."""
    return load_policy(SHIPPED_DIR / POLICY_FILE, known_tools=known_tools)


def with_rules(
    policy: Policy, lines: Iterable[tuple[int, str]], source: Path, *, known_tools: Collection[str] | None = None
) -> Policy:
    """A new Policy: ``policy``'s rules plus ``lines`` ((line number, text) read from ``source``), appended.

    For decision tables that bring their own assignments (``g, alice,
    role:operator, team-*``). A line equal to a rule already loaded is
    skipped, so a table runs against a policy that already holds it. The
    new hash covers the old one and the added lines.
    """
    known = {(rule.ptype, *rule.fields) for rule in policy.rules}
    added: list[Rule] = []
    digest = hashlib.sha256(policy.hash.encode())
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
    return Policy(
        policy.model_path, policy.model_text, (*policy.rules, *added), (*policy.sources, source), digest.hexdigest(),
        bounds=policy.bounds, protected=policy.protected, bounds_path=policy.bounds_path,
    )
