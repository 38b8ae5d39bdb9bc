"""opsgate's access policy: the Casbin model, the shipped default policy, and the engine.

The gate builds one :class:`Policy` at start (``Policy.load(path)`` or
``Policy.default()``) and asks it :meth:`Policy.decide` for every tool call.
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
