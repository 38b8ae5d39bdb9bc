"""opsgate's access policy: who may call which tool where, and with which arguments.

The gate loads one :class:`Policy` at start (:func:`load_policy` or
:func:`default_policy`, loader.py) and asks it :meth:`Policy.decide` for every
tool call (decider.py); a reload loads a new Policy and swaps it in whole.
Beside them: ``bounds`` (what a call tells the policy, :class:`BoundAttrs`,
and the limits per subject), ``bounds_file`` (reading bounds.toml),
``ratelimit`` (the token bucket behind ``rate_limit_per_minute``), ``lint``
(``opsgate policy check``) and ``table`` (``opsgate policy test``).
"""

from .bounds import BoundAttrs, BoundName, SubjectBounds
from .decider import Decision, EffectiveGrant, Policy
from .errors import BoundsError, PolicyError, SourceError, TableError
from .loader import POLICY_FILE, SHIPPED_DIR, default_policy, load_policy
from .names import ACTIONS, EVERYONE, NO_NAMESPACE, validate_namespace, validate_principal
from .rules import Rule

__all__ = [
    "ACTIONS",
    "EVERYONE",
    "NO_NAMESPACE",
    "POLICY_FILE",
    "SHIPPED_DIR",
    "BoundAttrs",
    "BoundName",
    "BoundsError",
    "Decision",
    "EffectiveGrant",
    "Policy",
    "PolicyError",
    "Rule",
    "SourceError",
    "SubjectBounds",
    "TableError",
    "default_policy",
    "load_policy",
    "validate_namespace",
    "validate_principal",
]
