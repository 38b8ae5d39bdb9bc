"""Where the files of one audit log live, beside the live file (names are pure; listing reads the directory).

``audit.jsonl``               the live segment, the only one written
``audit.jsonl.000001`` ...    rotated segments, numbered in the order they were closed
``audit.jsonl.checkpoints``   signed checkpoints, one a line
``audit.jsonl.hmac-key``      the local HMAC key, when no Ed25519 key is configured

The chain runs through the rotated segments in number order, then the live one.
Numbers have at least six digits and grow by one per rotation; a seventh digit
simply appears after 999999 (sorting is numeric, never by name).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["checkpoints_path", "hmac_key_path", "list_segments", "segment_number", "segment_path"]


def segment_path(live: Path, number: int) -> Path:
    """The rotated segment ``number`` of the log whose live file is ``live``."""
    if number < 1:
        raise ValueError("segment numbers start at 1")
    return live.with_name(f"{live.name}.{number:06d}")


def segment_number(live_name: str, name: str) -> int | None:
    """The number of a rotated segment's file name, or None if ``name`` is not one."""
    match = re.fullmatch(re.escape(live_name) + r"\.([0-9]{6,})", name)
    return int(match.group(1)) if match else None


def checkpoints_path(live: Path) -> Path:
    return live.with_name(live.name + ".checkpoints")


def hmac_key_path(live: Path) -> Path:
    return live.with_name(live.name + ".hmac-key")


def list_segments(live: Path) -> list[tuple[int, Path]]:
    """Rotated segments beside ``live``, by number. A missing directory has none."""
    try:
        names = os.listdir(live.parent)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        number = segment_number(live.name, name)
        if number is not None:
            found.append((number, live.with_name(name)))
    found.sort()
    return found
