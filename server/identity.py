"""Who the assistant acts for: ``--principal``, else the cluster's SelfSubjectReview, else the OS user.

Over stdio there is no login. The principal comes, in this order, from
configuration (``--principal``), from the cluster's own answer to a
``SelfSubjectReview`` when a real cluster is configured (who its credentials
are to it), and from the OS user. The client's self-reported name and version
are recorded, never trusted.

When the cluster cannot answer (unreachable, too old for
``authentication.k8s.io/v1``, forbidden) or answers a name that cannot be a
principal, the OS user is used and the reason is logged: the same principal
as with no cluster at all, never a guess.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from opsgate.policies.names import validate_principal
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import Kube

log = structlog.get_logger("opsgate.identity")

Source = Literal["config", "cluster", "os-user"]

#: The probe at start-up waits this long at most (connect, read), whatever --kube-timeout-seconds says:
#: a dead cluster must not hold up a server that may only be used for local models.
PROBE_TIMEOUT: tuple[float, float] = (2.0, 5.0)


@dataclass(frozen=True)
class Identity:
    principal: str
    source: Source
    os_user: str
    note: str | None = None  # why the cluster's answer was not used, when it was asked


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cluster_username(kube: Kube) -> str:
    """The user name the cluster knows our credentials by (``kubectl auth whoami``). Raises ToolError."""
    from kubernetes.client import AuthenticationV1Api, V1SelfSubjectReview

    connect, read = (min(a, b) for a, b in zip(PROBE_TIMEOUT, kube.request_timeout, strict=True))
    review = kube.call(AuthenticationV1Api(kube.connect()).create_self_subject_review, V1SelfSubjectReview(),
                       what="ask the cluster who these credentials are (SelfSubjectReview)",
                       _request_timeout=(connect, read))
    status = review.get("status") if isinstance(review, dict) else None
    info = status.get("userInfo") if isinstance(status, dict) else None
    name = info.get("username") if isinstance(info, dict) else None
    if not isinstance(name, str) or not name:
        raise ToolError("the cluster's SelfSubjectReview names no user", code="api_error", rule="no-username")
    return name


def resolve_identity(configured: str | None, ask_cluster: Callable[[], str] | None = None) -> Identity:
    """``ask_cluster`` only when a real cluster is configured. Raises ValueError when the principal
    that applies cannot serve as one (a configured name, or an OS user with a space, say)."""
    os_user = _os_user()
    if configured is not None:
        return Identity(principal=validate_principal(configured), source="config", os_user=os_user)
    note = None
    if ask_cluster is not None:
        try:
            name = ask_cluster()
        except ToolError as exc:
            note = f"the cluster did not say who we are ({exc.message})"
        else:
            try:
                return Identity(principal=validate_principal(name), source="cluster", os_user=os_user)
            except ValueError as exc:
                note = f"the cluster's user name {name[:128]!r} cannot be a principal ({exc})"
        log.warning("principal_from_os_user", reason=note, os_user=os_user,
                    hint="set --principal to choose the principal yourself")
    return Identity(principal=validate_principal(os_user), source="os-user", os_user=os_user, note=note)
