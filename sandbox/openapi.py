"""OpenAPI v2 and v3 documents with real schemas, for ``kubectl explain`` and clients that read them (pure).

Built-in kinds get their schema from the ``kubernetes`` Python client's
models (``openapi_types`` and ``attribute_map`` give each field's JSON name
and type, recursively; pydantic's field info gives descriptions), so nothing
here is a hand-written copy of the Kubernetes API. A kind registered with a
``schema`` (a CRD's ``openAPIV3Schema``, KServe's InferenceService) is served
with that one, ``metadata`` pointing at ObjectMeta as the API server does for
CRDs.

Each group version's v3 document lists the kinds' paths with the
``fieldValidation`` query parameter, so kubectl leaves validation to the
server. ``/openapi/v2`` is the same schemas in one Swagger 2.0 document, in
JSON only: client-go asks for it as protobuf, which is answered 406, and
kubectl 1.37 reads v3 anyway.

Differences from a real API server's documents: schema names are
``io.k8s.sandbox.<group>.<version>.<Kind>``; the client's models do not keep
the description of a field whose type is another model (the description of
that type is shown instead) and mark such fields required too eagerly, so
``required`` is only given for scalar and list fields; formats such as int32
and int64 are not told apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import typing
from collections.abc import Iterable
from typing import Any

from .resources import ResourceRegistry, ResourceType

JSON = dict[str, Any]

SCHEMA_PREFIX = "io.k8s.sandbox"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_CLASS_NAME = re.compile(r"^(?P<group>[A-Z][a-z]+)?V(?P<version>\d+(?:(?:alpha|beta)\d+)?)(?P<name>[A-Z]\w*)$")
_LIST = re.compile(r"^List\[(?P<item>.+)\]$")
_DICT = re.compile(r"^Dict\[str, (?P<value>.+)\]$")
_SCALARS: dict[str, JSON] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "float": {"type": "number", "format": "double"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "bytes": {"type": "string", "format": "byte"},
}


def _client() -> Any:
    import kubernetes.client  # the models only; imported on first use (it is a large package)

    return kubernetes.client


def model_class(group: str, version: str, kind: str) -> type | None:
    """The Python client's model of a kind (``CoreV1Event`` for core Events, ``V1Deployment``...)."""
    client = _client()
    prefix = version[:1].upper() + version[1:]
    names = [f"Core{prefix}{kind}", f"{prefix}{kind}"] if not group else [f"{prefix}{kind}"]
    for name in names:
        cls = getattr(client, name, None)
        if isinstance(cls, type) and hasattr(cls, "openapi_types"):
            return cls
    return None


def schema_name(cls: type) -> str:
    """``V1DeploymentSpec`` -> ``io.k8s.sandbox.v1.DeploymentSpec`` (kubectl shows the part after the last dot)."""
    match = _CLASS_NAME.match(cls.__name__)
    if match is None:
        return f"{SCHEMA_PREFIX}.{cls.__name__}"
    group = f"{match['group'].lower()}." if match["group"] else ""
    return f"{SCHEMA_PREFIX}.{group}v{match['version']}.{match['name']}"


def _description(text: str | None) -> str:
    return " ".join((text or "").split())


def _class_description(cls: type) -> str:
    doc = (cls.__doc__ or "").split("Attributes:")[0]
    return _description(doc)


def _is_int_or_string(annotation: Any) -> bool:
    """pydantic's ``Union[int, str]`` (with Strict metadata) is the API's IntOrString."""
    args = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
            for a in typing.get_args(annotation)}
    return int in args and str in args


class SchemaBuilder:
    """Collects the schemas a set of kinds refers to, under ``ref_prefix`` (v3 or v2 style)."""

    def __init__(self, ref_prefix: str, *, v3: bool) -> None:
        self.ref_prefix = ref_prefix
        self.v3 = v3
        self.schemas: dict[str, JSON] = {}

    def ref(self, name: str) -> JSON:
        return {"$ref": f"{self.ref_prefix}{name}"}

    def model(self, cls: type) -> str:
        """Add ``cls`` (and what it refers to) once; return its schema name."""
        name = schema_name(cls)
        if name in self.schemas:
            return name
        self.schemas[name] = {}  # a placeholder, so recursive models stop here
        properties: JSON = {}
        required: list[str] = []
        fields = getattr(cls, "model_fields", {})
        for attr, type_text in cls.openapi_types.items():  # type: ignore[attr-defined]
            json_name = cls.attribute_map[attr]  # type: ignore[attr-defined]
            info = fields.get(attr)
            annotation = info.annotation if info is not None else None
            prop = self.field(str(type_text), annotation)
            description = _description(info.description if info is not None else None)
            if not description and "$ref" in prop and isinstance(getattr(_client(), str(type_text), None), type):
                description = _class_description(getattr(_client(), str(type_text)))  # the client keeps no other
            if description:
                prop = {"allOf": [prop], "description": description} if "$ref" in prop and self.v3 else {
                    **prop, "description": description}
            properties[json_name] = prop
            if info is not None and info.is_required() and "$ref" not in prop and "allOf" not in prop:
                required.append(json_name)
        # A type's description goes on the fields that refer to it (the client keeps none of their own), and on
        # the kinds themselves (``kind``): kubectl would otherwise print it twice.
        schema: JSON = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        self.schemas[name] = schema
        return name

    def field(self, type_text: str, annotation: Any) -> JSON:
        """The schema of one field from the client's type text (``List[V1Container]``, ``Dict[str, str]``...)."""
        if type_text in _SCALARS:
            return dict(_SCALARS[type_text])
        if type_text == "object":
            if _is_int_or_string(annotation):
                # As kube-openapi defines it: oneOf in v3 (kubectl explain then shows <IntOrString>), a string in v2.
                alternatives: JSON = ({"oneOf": [{"type": "integer"}, {"type": "string"}]} if self.v3
                                      else {"type": "string", "format": "int-or-string"})
                self.schemas.setdefault(INT_OR_STRING, {
                    **alternatives, "description": "IntOrString is a type that can hold an int32 or a string.",
                })
                return self.ref(INT_OR_STRING)
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        match = _LIST.match(type_text)
        if match:
            return {"type": "array", "items": self.field(match["item"], None)}
        match = _DICT.match(type_text)
        if match:
            return {"type": "object", "additionalProperties": self.field(match["value"], None)}
        cls = getattr(_client(), type_text, None)
        if isinstance(cls, type) and hasattr(cls, "openapi_types"):
            return self.ref(self.model(cls))
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

    def kind(self, rt: ResourceType) -> str | None:
        """Add the schema of a served kind, marked with its group-version-kind; None if none is known."""
        gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
        if rt.schema is not None:
            schema = copy.deepcopy(rt.schema())
            meta_cls = getattr(_client(), "V1ObjectMeta", None)
            if isinstance(meta_cls, type):
                meta = self.ref(self.model(meta_cls))
                schema.setdefault("properties", {})["metadata"] = (
                    {"allOf": [meta], "description": "Standard object's metadata."} if self.v3 else meta)
            name = f"{SCHEMA_PREFIX}.{rt.group or 'core'}.{rt.version}.{rt.kind}"
            self.schemas[name] = schema
        else:
            cls = model_class(rt.group, rt.version, rt.kind)
            if cls is None:
                return None
            name = self.model(cls)
            self.schemas[name]["description"] = _class_description(cls)
        self.schemas[name] = {**self.schemas[name], "x-kubernetes-group-version-kind": [gvk]}
        return name


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _operations(rt: ResourceType, ref: JSON, *, v3: bool) -> dict[str, JSON]:
    """GET/PUT/PATCH/DELETE on an object and POST on its collection, listing ``fieldValidation``."""
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    params: list[JSON]
    ok: JSON
    if v3:
        params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for n in ("dryRun", "fieldManager", "fieldValidation")]
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
    else:
        params = [{"name": n, "in": "query", "type": "string", "uniqueItems": True}
                  for n in ("dryRun", "fieldManager", "fieldValidation")]
        ok = {"200": {"description": "OK", "schema": ref}}
    prefix = f"/{_gv_path(rt.group, rt.version)}/" + ("namespaces/{namespace}/" if rt.namespaced else "")
    op: JSON = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": ok}
    item: JSON = {verb: {**op, "x-kubernetes-action": action}
                  for verb, action in (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))}
    return {f"{prefix}{rt.plural}/{{name}}": item,
            f"{prefix}{rt.plural}": {"post": {**op, "x-kubernetes-action": "post"}}}


def _document(types_: Iterable[ResourceType], *, v3: bool) -> JSON:
    builder = SchemaBuilder("#/components/schemas/" if v3 else "#/definitions/", v3=v3)
    paths: JSON = {}
    for rt in types_:
        name = builder.kind(rt)
        ref = builder.ref(name) if name else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        if "create" in rt.verbs or "get" in rt.verbs:
            paths.update(_operations(rt, ref, v3=v3))
    info = {"title": "Kubernetes (opsgate sandbox)", "version": "v1"}
    if v3:
        return {"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": builder.schemas}}
    return {"swagger": "2.0", "info": info, "paths": paths, "definitions": builder.schemas}


_V3: dict[tuple[int, ...], tuple[tuple[ResourceType, ...], JSON, str]] = {}
_V2: dict[tuple[int, ...], tuple[tuple[ResourceType, ...], JSON]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def _key(types_: Iterable[ResourceType]) -> tuple[ResourceType, ...]:
    return tuple(sorted(types_, key=lambda rt: (rt.group, rt.version, rt.plural)))


def _v3_cached(served: tuple[ResourceType, ...]) -> tuple[JSON, str]:
    """Built once per set of served types (the cache holds the types, so their ids stay theirs)."""
    ids = tuple(id(rt) for rt in served)
    with _CACHE_LOCK:
        hit = _V3.get(ids)
        if hit is None:
            if len(_V3) >= _CACHE_SIZE:  # tests register kinds of their own: keep the newest sets only
                del _V3[next(iter(_V3))]
            doc = _document(served, v3=True)
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
            hit = _V3[ids] = (served, doc, digest)
        return hit[1], hit[2]


def _v2_cached(served: tuple[ResourceType, ...]) -> JSON:
    ids = tuple(id(rt) for rt in served)
    with _CACHE_LOCK:
        hit = _V2.get(ids)
        if hit is None:
            if len(_V2) >= _CACHE_SIZE:
                del _V2[next(iter(_V2))]
            hit = _V2[ids] = (served, _document(served, v3=False))
        return hit[1]


def v3_index(registry: ResourceRegistry) -> JSON:
    """``/openapi/v3``: one document per group version, its URL carrying the document's hash (kubectl caches by it)."""
    paths: JSON = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            _, digest = _v3_cached(_key(registry.in_group_version(group, version)))
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def v3_document(registry: ResourceRegistry, group: str, version: str) -> JSON | None:
    served = registry.in_group_version(group, version)
    return _v3_cached(_key(served))[0] if served else None


def v2_document(registry: ResourceRegistry) -> JSON:
    return _v2_cached(_key(registry.all()))

