"""Impersonation and a small RBAC for impersonated users, as the API server does them.

A real API server lets a caller with the ``impersonate`` verb on ``users`` and ``groups`` act as
someone else (``Impersonate-User``, one ``Impersonate-Group`` header per group), then authorizes
the request as that user: opsgate's team server relies on it so the cluster's own RBAC decides too.
Here only the users in ``impersonators`` may impersonate (the kubeconfig's admin token's user by
default); an impersonated request is allowed by :class:`Rbac` when one is set (tests set one),
else by nobody's rules at all (every request allowed, as before). Refusals are the API server's
403 ``Status`` bodies, word for word. The last requests that impersonated someone are kept
(bounded) so tests can see exactly who the cluster was told the caller is.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import ApiError

#: Impersonated requests remembered for tests, newest last.
SEEN_MAX = 1000


@dataclass(frozen=True)
class Grant:
    """What a user or group may do: verbs on resources (``deployments``, ``deployments/scale``, ``*``) in
    namespaces (``*`` all); one RBAC rule of a RoleBinding, flattened."""

    verbs: frozenset[str]
    resources: frozenset[str] = frozenset({"*"})
    namespaces: frozenset[str] = frozenset({"*"})

    def allows(self, verb: str, resource: str, namespace: str | None) -> bool:
        base = resource.split("/", 1)[0]
        return (("*" in self.verbs or verb in self.verbs)
                and ("*" in self.resources or resource in self.resources or base in self.resources)
                and ("*" in self.namespaces or (namespace or "") in self.namespaces))


def grant(verbs: Iterable[str], resources: Iterable[str] = ("*",), namespaces: Iterable[str] = ("*",)) -> Grant:
    return Grant(frozenset(verbs), frozenset(resources), frozenset(namespaces))


@dataclass(frozen=True)
class Rbac:
    """Grants by user name and by group name; a request is allowed when one of its user's or groups' grants
    allows it (RBAC is additive: no deny)."""

    users: Mapping[str, tuple[Grant, ...]] = field(default_factory=dict)
    groups: Mapping[str, tuple[Grant, ...]] = field(default_factory=dict)

    def allows(self, user: str, groups: tuple[str, ...], verb: str, resource: str, namespace: str | None) -> bool:
        held = [*self.users.get(user, ()), *(g for name in groups for g in self.groups.get(name, ()))]
        return any(g.allows(verb, resource, namespace) for g in held)


@dataclass(frozen=True)
class Seen:
    """One impersonated request: who it acted as, and what it asked."""

    user: str
    groups: tuple[str, ...]
    verb: str
    path: str


@dataclass(frozen=True)
class Acting:
    user: str
    groups: tuple[str, ...]


class Impersonation:
    """Who may impersonate, the RBAC for impersonated users, and the impersonated requests seen."""

    def __init__(self, impersonators: Iterable[str]) -> None:
        self.impersonators = frozenset(impersonators)
        self.rbac: Rbac | None = None
        self._seen: deque[Seen] = deque(maxlen=SEEN_MAX)
        self._lock = threading.Lock()

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def acting_as(self, requester: str, user: str, groups: tuple[str, ...]) -> Acting | None:
        """The identity a request acts as, or None when it impersonates nobody; 403 when the requester may not."""
        if not user:
            if groups:
                raise ApiError(500, "InternalError", "Internal error occurred: requested "
                               f"{list(groups)} without impersonating a user")
            return None
        if requester not in self.impersonators:
            raise ApiError(403, "Forbidden", f'users "{user}" is forbidden: User "{requester}" cannot impersonate '
                           'resource "users" in API group "" at the cluster scope',
                           {"name": user, "kind": "users"})
        return Acting(user, groups)

    def authorize(self, acting: Acting, verb: str, resource: str, group: str, namespace: str | None,
                  name: str | None, path: str) -> None:
        """Record the request; raise the API server's 403 when the RBAC set for impersonated users refuses it."""
        with self._lock:
            self._seen.append(Seen(acting.user, acting.groups, verb, path))
        rbac = self.rbac
        if rbac is None or rbac.allows(acting.user, acting.groups, verb, resource, namespace):
            return
        base = resource.split("/", 1)[0]
        qualified = f"{base}.{group}" if group else base
        what = f'{qualified} "{name}"' if name else qualified
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        details: dict[str, str] = {"kind": base}
        if name:
            details["name"] = name
        if group:
            details["group"] = group
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{acting.user}" cannot {verb} resource '
                       f'"{resource}" in API group "{group}" {where}', dict(details))
