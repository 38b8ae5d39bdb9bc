"""opsgate's access policy: the Casbin model, the shipped default policy, and the engine.

The gate builds one :class:`Policy` at start (``Policy.load(path)`` or
``Policy.default()``) and asks it :meth:`Policy.decide` for every tool call;
a reload builds a new Policy and swaps it in whole. Beside it: ``bounds``
(argument limits per subject), ``ratelimit`` (the token bucket behind
``rate_limit_per_minute``), ``lint`` (``opsgate policy check``) and ``table``
(``opsgate policy test``).
"""

from .engine import (
    ACTIONS,
    EVERYONE,
    NO_NAMESPACE,
    SHIPPED_DIR,
    Decision,
    Policy,
    PolicyError,
    Rule,
    validate_namespace,
    validate_principal,
)

__all__ = [
    "ACTIONS",
    "EVERYONE",
    "NO_NAMESPACE",
    "SHIPPED_DIR",
    "Decision",
    "Policy",
    "PolicyError",
    "Rule",
    "validate_namespace",
    "validate_principal",
]
