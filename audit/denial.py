"""Which refusal a denied decision is: one rule that the gate, the telemetry and the report share.

Its own small module because the gate needs it at serve start and :mod:`opsgate.audit.query` (the
readers) is not imported until a call or a CLI read needs it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["denial_kind"]


def denial_kind(decision: Mapping[str, Any]) -> str:
    """Which refusal a denied decision record's ``decision`` is: policy, bound, rate-limit or confirmation.

    The gate names it so in the denied envelope (its rule), the telemetry in its attributes, the report in its
    denial table.
    """
    if decision.get("confirmation") is not None:
        return "confirmation"
    if str(decision.get("reason", "")).startswith("denied by rate limit"):
        return "rate-limit"
    if decision.get("bound") is not None:
        return "bound"
    return "policy"
