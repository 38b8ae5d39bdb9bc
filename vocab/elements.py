"""How many values an inference request carries: the one count behind the ``input_elements`` bound.

Every caller (the policy bounds, local ``infer``, ``kserve_infer``) counts with this function, so a
ragged input (lists of different lengths at one level) has one answer everywhere: the number of
leaves actually sent. The model runners refuse ragged inputs later; a bound must not be fooled
by one first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def count_elements(inputs: Any) -> int:
    """Leaves of nested lists and mappings (a bare value is one, a mapping counts its values).

    Iterative, so a deeply nested request cannot exhaust the stack.
    """
    count = 0
    stack: list[Any] = [inputs]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            count += 1
    return count
