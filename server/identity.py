"""Who the assistant acts for.

Over stdio there is no login: the principal comes from configuration, else the
OS user. The client's self-reported name and version are recorded, never trusted.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Literal

from opsgate.policies.engine import validate_principal


@dataclass(frozen=True)
class Identity:
    principal: str
    source: Literal["config", "os-user"]
    os_user: str


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def resolve_identity(configured: str | None) -> Identity:
    """Raises ValueError when the OS user cannot serve as a principal (e.g. contains a space)."""
    os_user = _os_user()
    if configured is not None:
        return Identity(principal=validate_principal(configured), source="config", os_user=os_user)
    return Identity(principal=validate_principal(os_user), source="os-user", os_user=os_user)
