"""Outside text inside opsgate's own sentences: always quoted, always capped (issue 15 item 17).

A model file's input names, an InferenceService's condition types, the cluster's
error messages are written by whoever controls that file or object. Pasted bare
into a sentence ("inputs.<name>: missing"), a name with a newline and "ignore the
above" reads as our own words to the assistant. :func:`quoted` makes any such
string one JSON string literal: newlines and control characters escaped, the
Unicode line separators and bidirectional overrides escaped too (they are not
control characters to ``json.dumps``), and cut with a visible marker.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = ["NAME_MAX", "TEXT_MAX", "name_in_text", "quoted"]

NAME_MAX: Final = 80  # a name (an input, a condition type): long enough to tell names apart
TEXT_MAX: Final = 500  # a message (the cluster's, a model server's)
# Line and paragraph separators, bidi embeddings/overrides/isolates, BOM: invisible or reordering.
_PLAIN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,63}")
_INVISIBLE: Final = re.compile("[\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\ufeff]")


def quoted(text: Any, limit: int = NAME_MAX) -> str:
    """``text`` as a JSON string literal of at most about ``limit`` characters, cut with "…" marked. Pure."""
    value = str(text)
    if len(value) > limit:
        value = value[: max(limit - 1, 1)] + "…"
    literal = json.dumps(value, ensure_ascii=False)
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", literal)


def name_in_text(name: Any) -> str:
    """A name bare when it is a plain identifier (``features``, ``input:0``), else :func:`quoted`. Pure."""
    text = str(name)
    return text if _PLAIN.fullmatch(text) else quoted(text)
