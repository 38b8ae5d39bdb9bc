"""How many values an inference request carries: the one count behind the ``input_elements`` bound.

Every caller (the policy bounds, local ``infer``, ``kserve_infer``) counts with this function, so a
ragged input (lists of different lengths at one level) has one answer everywhere: the number of
leaves actually sent. The model runners refuse ragged inputs later; a bound must not be fooled
by one first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: What holds values rather than being one (JSON gives lists and dicts; callers may pass tuples).
_CONTAINERS: Final = (list, tuple, dict)


def count_elements(inputs: Any) -> int:
    """Leaves of nested lists and mappings (a bare value is one, a mapping counts its values).

    Iterative, so a deeply nested request cannot exhaust the stack.
    """
    count = 0
    stack: list[Any] = [inputs]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            item = list(item.values())
        elif not isinstance(item, list | tuple):
            count += 1
            continue
        # A row of numbers is counted in one pass; only nested containers go on the stack (100k values: ~3 ms).
        nested = [v for v in item if isinstance(v, _CONTAINERS)]
        count += len(item) - len(nested)
        stack.extend(nested)
    return count
