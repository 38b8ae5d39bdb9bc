"""REST semantics of the sandbox: routing, verbs, subresources, dry-run, tables, watch.

Transport-free: ``Api.handle`` takes a parsed ``Request`` and returns a
``Response`` (or a ``WatchStream`` the HTTP edge writes out chunk by chunk),
so the socket code in ``http.py`` stays small.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import apply as ssa
from . import discovery, openapi, patch, protobuf, reviews
from .errors import (
    ApiError,
    Cause,
    bad_request,
    invalid,
    method_not_allowed,
    path_not_found,
    unsupported_media_type,
)
from .impersonation import Acting, Impersonation
from .kinds import POD, SELF_SUBJECT_REVIEW
from .pods import STREAM_SUBRESOURCES, PodLogs, log_container, no_containers, select_log
from .resources import PRIMITIVE_MERGE_LISTS, ResourceRegistry, ResourceType
from .selectors import Requirement, labels_match, parse_field_selector, parse_label_selector
from .store import Store, WatchEvent, now_rfc3339
from .tables import TABLE_CONTENT_TYPE, to_table
from .validation import invalid_value

JSON = dict[str, Any]

PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
PATCH_TYPES = [patch.JSON_PATCH, patch.MERGE_PATCH, patch.STRATEGIC_MERGE_PATCH]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    impersonate_groups: tuple[str, ...] = ()  # one Impersonate-Group header each (a dict keeps one)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def json_body(self) -> Any:
        """The body as JSON (protobuf bodies of built-in kinds are decoded too); 415 for other encodings."""
        if not self.body:
            return None
        content_type = self.header("content-type").split(";")[0].strip().lower()
        if content_type == protobuf.PROTOBUF:
            return protobuf.decode_object(self.body, content_type)
        if content_type not in ("", "application/json", "*/*", *PATCH_TYPES):
            raise unsupported_media_type(content_type, ["application/json"])
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body of the request could not be decoded as JSON: {exc}") from exc


@dataclass
class Response:
    status: int
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WatchStream:
    """A streamed watch: the HTTP edge writes each yielded event as one JSON line. A ``None`` is a tick of
    a quiet watch (at most one per ``Api.watch_poll``): nothing to send, the edge checks the client is still
    there, and ends the watch if it hung up, as the API server's request ends when its connection closes."""

    events: Iterator[JSON | None]
    content_type: str = "application/json"


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _set_managed(obj: JSON, managed: list[JSON]) -> None:
    """``metadata.managedFields``, left out when no manager owns anything (as the API server writes it)."""
    if managed:
        _meta(obj)["managedFields"] = managed
    else:
        _meta(obj).pop("managedFields", None)


def _wants(accept: str, kind: str) -> bool:
    """Whether the Accept header asks for ``as=<kind>;g=meta.k8s.io`` in any of its media ranges."""
    for media in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in media.split(";")[1:] if "=" in p}
        if params.get("as") == kind and params.get("g") == "meta.k8s.io":
            return True
    return False


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _verb(req: Request, route: Route) -> str:
    """The API verb of a request on a resource (what discovery's ``verbs`` lists)."""
    if req.method == "GET":
        return "get" if route.name else "watch" if _bool(req.query.get("watch")) else "list"
    if req.method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(req.method, req.method.lower())


@dataclass(frozen=True)
class Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


class Api:
    """Routes a request to discovery or to a resource verb on the store."""

    def __init__(self, registry: ResourceRegistry, store: Store, server_address: Callable[[], str],
                 users: Mapping[str, str] | None = None) -> None:
        self.registry = registry
        self.store = store
        self.server_address = server_address
        self.users: Mapping[str, str] = users or {}  # bearer token -> user name; others are anonymous
        self.watch_poll = 1.0  # seconds: how often a quiet watch looks for new events and for a client gone
        # seconds between BOOKMARK events of a watch that asked for them (allowWatchBookmarks): the API
        # server's watch cache sends one about every minute and one 2 s before the watch's timeout
        self.watch_bookmark_seconds = 60.0
        self._apply_schemas: dict[str, ssa.Schema] = {}  # per kind, for server-side apply
        self.pod_logs = PodLogs()  # the stand-in kubelet writes here, ``pods/log`` reads
        self.impersonation = Impersonation(self.users.values())  # the named users (the admin token's) may impersonate

    # --- routing ---------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | WatchStream:
        try:
            return self._handle(req)
        except ApiError as exc:
            return Response(exc.code, exc.status())

    def _handle(self, req: Request) -> Response | WatchStream:
        acting = self.impersonation.acting_as(self._user_of(req), req.header("impersonate-user"),
                                              req.impersonate_groups)
        path = "/" + req.path.strip("/")
        if path in ("/healthz", "/livez", "/readyz"):
            return Response(200, "ok", "text/plain")
        if path == "/version":
            return Response(200, discovery.version_info())
        if path == "/api":
            return Response(200, discovery.api_versions(self.server_address()))
        if path == "/apis":
            return Response(200, discovery.api_group_list(self.registry))
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        if parts == ["openapi", "v2"]:
            return self._openapi_v2(req)
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 2 and parts[0] == "apis":
            if len(parts) == 2:
                doc = discovery.api_group(self.registry, parts[1])
                if doc is None:
                    raise path_not_found()
                return Response(200, doc)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise path_not_found()
        if not rest:
            if req.method != "GET":
                raise method_not_allowed(req.method)
            doc = discovery.resource_list(self.registry, group, version)
            if doc is None:
                raise path_not_found()
            return Response(200, doc)
        route = self._route(group, version, rest)
        if acting is not None:
            resource = route.rt.plural + (f"/{route.subresource}" if route.subresource else "")
            self.impersonation.authorize(acting, _verb(req, route), resource, group, route.namespace, route.name,
                                         path)
        return self._dispatch(req, route, acting)

    def _openapi(self, parts: list[str]) -> Response:
        if not parts:
            return Response(200, openapi.v3_index(self.registry))
        doc = None
        if parts[0] == "api" and len(parts) == 2:
            doc = openapi.v3_document(self.registry, "", parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            doc = openapi.v3_document(self.registry, parts[1], parts[2])
        if doc is None:
            raise path_not_found()
        return Response(200, doc)

    def _openapi_v2(self, req: Request) -> Response:
        """The Swagger 2.0 document, as JSON; 406 to a client that takes only protobuf (client-go's ask)."""
        accept = req.header("accept").lower()
        if accept and "json" not in accept and "*/*" not in accept:
            raise ApiError(406, "NotAcceptable", "only the following media types are accepted: application/json")
        return Response(200, openapi.v2_document(self.registry))

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = self.registry.lookup(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise path_not_found()
        rt = self.registry.lookup(group, version, rest[0])
        if rt is None:
            raise path_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rt.namespaced and namespace is None and name is not None:
            raise path_not_found()
        if sub is not None and not (
            (sub == "status" and rt.status_subresource) or (sub == "scale" and rt.scale is not None)
            or (sub in STREAM_SUBRESOURCES and rt.key == POD.key)
        ):
            raise path_not_found()
        return Route(rt, namespace, name, sub)

    def _dispatch(self, req: Request, route: Route, acting: Acting | None = None) -> Response | WatchStream:
        method = req.method
        if route.subresource in STREAM_SUBRESOURCES:
            return self._pod_stream(req, route)
        if route.subresource is None and _verb(req, route) not in route.rt.verbs:
            raise method_not_allowed(method)  # as for componentstatuses (get, list) or namespaces' deletecollection
        if route.name is None:
            if method == "GET":
                if _bool(req.query.get("watch")):
                    return self._watch(req, route)
                return self._list(req, route)
            if method == "POST":
                if route.rt.namespaced and route.namespace is None:
                    raise method_not_allowed(method)
                if route.rt is SELF_SUBJECT_REVIEW:
                    return self._self_subject_review(req, acting)
                if route.rt.key in reviews.REVIEW_KEYS:
                    return Response(201, reviews.answer(route.rt, req.json_body(), self._ns(route)))
                return self._create(req, route)
            if route.rt is SELF_SUBJECT_REVIEW or route.rt.key in reviews.REVIEW_KEYS:
                raise method_not_allowed(method)
            if method == "DELETE":
                return self._delete_collection(req, route)
            raise method_not_allowed(method)
        if route.subresource == "scale":
            return self._scale(req, route)
        if method == "GET":
            return self._get(req, route)
        if method == "PUT":
            return self._replace(req, route)
        if method == "PATCH":
            return self._patch(req, route)
        if method == "DELETE" and route.subresource is None:
            return self._delete(req, route)
        raise method_not_allowed(method)

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _dry_run(req: Request, body: Any = None) -> bool:
        values = [v for v in req.query.get("dryRun", "").split(",") if v]
        if isinstance(body, dict) and isinstance(body.get("dryRun"), list):
            values += [str(v) for v in body["dryRun"]]
        for value in values:
            if value != "All":
                raise bad_request(f'Invalid dry run value: "{value}": supported values: "All"')
        return bool(values)

    @staticmethod
    def _ns(route: Route) -> str:
        return route.namespace or ""

    def _render(self, req: Request, route: Route, obj: JSON, status: int = 200) -> Response:
        accept = req.header("accept")
        if _wants(accept, "Table"):
            rv = str(_meta(obj).get("resourceVersion", ""))
            include = req.query.get("includeObject", "Metadata")
            table = to_table(route.rt, [obj], resource_version=rv, include_object=include)
            return Response(status, table, TABLE_CONTENT_TYPE)
        if _wants(accept, "PartialObjectMetadata"):
            partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": _meta(obj)}
            return Response(status, partial)
        return Response(status, obj)

    def _check_body(self, route: Route, body: Any, *, name: str | None) -> JSON:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        rt = route.rt
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version not in (None, "", rt.api_version):
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.api_version})"
            )
        if kind not in (None, "", rt.kind):
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise bad_request("metadata must be a JSON object")
        meta = meta or {}
        ns = meta.get("namespace")
        if rt.namespaced and ns and route.namespace and ns != route.namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if name is not None and meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        return body

    # --- verbs -----------------------------------------------------------------------------

    def _selectors(self, req: Request, rt: ResourceType) -> tuple[list[Requirement], Callable[[JSON], bool]]:
        fields: dict[str, Callable[[JSON], str]] = {
            "metadata.name": lambda o: str(_meta(o).get("name", "")),
            "metadata.namespace": lambda o: str(_meta(o).get("namespace", "")),
            **rt.field_selectors,
        }
        return parse_label_selector(req.query.get("labelSelector")), parse_field_selector(
            req.query.get("fieldSelector"), fields
        )

    def _list(self, req: Request, route: Route) -> Response:
        labels, fields = self._selectors(req, route.rt)
        try:
            limit = int(req.query.get("limit") or 0)
        except ValueError as exc:
            raise bad_request(f"invalid limit: {req.query.get('limit')}") from exc
        result = self.store.list_objects(
            route.rt,
            route.namespace,
            labels=labels,
            fields=fields,
            limit=limit,
            continue_token=req.query.get("continue", ""),
        )
        accept = req.header("accept")
        if _wants(accept, "Table"):
            table = to_table(
                route.rt,
                result.items,
                resource_version=result.resource_version,
                continue_token=result.continue_token,
                include_object=req.query.get("includeObject", "Metadata"),
            )
            return Response(200, table, TABLE_CONTENT_TYPE)
        meta: JSON = {"resourceVersion": result.resource_version}
        if result.continue_token:
            meta["continue"] = result.continue_token
            meta["remainingItemCount"] = result.remaining
        items: list[JSON] = result.items
        if _wants(accept, "PartialObjectMetadataList"):
            items = [
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": _meta(o)} for o in items
            ]
            return Response(
                200,
                {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items},
            )
        return Response(
            200, {"kind": route.rt.list_kind_name, "apiVersion": route.rt.api_version, "metadata": meta, "items": items}
        )

    def _get(self, req: Request, route: Route) -> Response:
        obj = self.store.get(route.rt, self._ns(route), route.name or "")
        return self._render(req, route, obj)

    def _pod_stream(self, req: Request, route: Route) -> Response:
        """``pods/log``: the stand-in kubelet's lines as text/plain; exec, attach, portforward: a 400 saying why.

        ``follow`` answers what there is and ends (no process will ever write more)."""
        sub = route.subresource or ""
        if req.method not in (("GET",) if sub == "log" else ("GET", "POST")):
            raise method_not_allowed(req.method)
        pod = self.store.get(route.rt, self._ns(route), route.name or "")
        if sub != "log":
            raise no_containers(route.name or "", sub)
        if _bool(req.query.get("previous")):
            container = req.query.get("container") or ""
            raise bad_request(f'previous terminated container "{container}" in pod "{route.name}" not found')
        container = log_container(pod, req.query.get("container"))
        lines = self.pod_logs.read(self._ns(route), route.name or "", container)
        return Response(200, select_log(lines, req.query, time.time()), "text/plain")

    def _user_of(self, req: Request) -> str:
        """Who the request's bearer token is: a user the sandbox was given, else anonymous."""
        scheme, _, token = req.header("authorization").partition(" ")
        user = self.users.get(token) if scheme.lower() == "bearer" else None
        return user if user is not None else "system:anonymous"

    def _self_subject_review(self, req: Request, acting: Acting | None = None) -> Response:
        """Who the request's bearer token is (or whom it impersonates): a user the sandbox was given, else
        anonymous, as on a cluster that allows anonymous requests. Nothing is stored, and the body (kubectl
        sends it as protobuf) carries nothing to read: a SelfSubjectReview has no spec."""
        user = self._user_of(req)
        info: JSON = (
            {"username": acting.user, "groups": [*acting.groups, "system:authenticated"]}
            if acting is not None
            else {"username": user, "groups": ["system:authenticated"]}
            if user != "system:anonymous"
            else {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
        )
        review = {
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "status": {"userInfo": info},
        }
        return Response(201, review)

    def _create(self, req: Request, route: Route) -> Response:
        body = self._check_body(route, req.json_body(), name=None)
        dry_run = self._dry_run(req)
        self._no_force(req)
        managed = self._managed_update(req, route)(None, body)
        obj = self.store.create(route.rt, body, namespace=self._ns(route), dry_run=dry_run, managed_fields=managed)
        return self._render(req, route, obj, 201)

    def _replace(self, req: Request, route: Route) -> Response:
        body = self._check_body(route, req.json_body(), name=route.name)
        dry_run = self._dry_run(req)
        record = self._managed_update(req, route)

        def replace(cur: JSON) -> JSON:
            new = copy.deepcopy(body)
            _set_managed(new, record(cur, new))
            return new

        obj = self.store.update(
            route.rt, self._ns(route), route.name or "", replace, subresource=route.subresource or "", dry_run=dry_run
        )
        return self._render(req, route, obj)

    def _patcher(self, req: Request, rt: ResourceType) -> Callable[[JSON], Any]:
        """The function applying this request's patch to a current object, by Content-Type."""
        content_type = req.header("content-type").split(";")[0].strip().lower()
        body = req.json_body() if content_type in PATCH_TYPES else None
        if content_type == patch.MERGE_PATCH:
            if not isinstance(body, dict):
                raise bad_request("a merge patch must be a JSON object")
            return lambda cur: patch.merge_patch(cur, body)
        if content_type == patch.STRATEGIC_MERGE_PATCH:
            keys = rt.merge_keys
            if keys is None:
                raise unsupported_media_type(content_type, [patch.JSON_PATCH, patch.MERGE_PATCH])
            if not isinstance(body, dict):
                raise bad_request("a strategic merge patch must be a JSON object")
            return lambda cur: patch.strategic_merge(cur, body, keys, PRIMITIVE_MERGE_LISTS)
        if content_type == patch.JSON_PATCH:
            if not isinstance(body, list):
                raise bad_request("a json patch must be a JSON array of operations")
            return lambda cur: patch.json_patch(cur, body)
        accepted = [patch.JSON_PATCH, patch.MERGE_PATCH, patch.APPLY_PATCH]
        if rt.merge_keys is not None:
            accepted.append(patch.STRATEGIC_MERGE_PATCH)
        raise unsupported_media_type(content_type, accepted)

    def _patch(self, req: Request, route: Route) -> Response:
        if req.header("content-type").split(";")[0].strip().lower() == patch.APPLY_PATCH:
            return self._apply(req, route)
        self._no_force(req)
        apply = self._patcher(req, route.rt)
        dry_run = self._dry_run(req)
        record = self._managed_update(req, route)

        def patched(cur: JSON) -> Any:
            new = apply(cur)
            if isinstance(new, dict):
                _set_managed(new, record(cur, new))
            return new

        obj = self.store.update(
            route.rt, self._ns(route), route.name or "", patched, subresource=route.subresource or "", dry_run=dry_run
        )
        return self._render(req, route, obj)

    # --- managedFields and server-side apply ---------------------------------------------------

    @staticmethod
    def _no_force(req: Request) -> None:
        if "force" in req.query:
            raise invalid("PatchOptions", "meta.k8s.io", "", [
                Cause("force", "Forbidden: may not be specified for non-apply patch", "FieldValueForbidden")])

    @staticmethod
    def _ignored(route: Route) -> ssa.FieldSet:
        """Paths no manager of this endpoint owns: status on the main resource (when it has a status
        subresource), everything but status on ``/status``, as the kinds' reset-fields strategies say."""
        if route.subresource == "status":
            return ssa.IGNORED | {("f:metadata",), ("f:spec",)}
        if route.rt.status_subresource:
            return ssa.IGNORED | {("f:status",)}
        return ssa.IGNORED

    def _apply_schema(self, rt: ResourceType) -> ssa.Schema:
        """How lists and maps merge for this kind: its CRD schema, else the built-in types' table."""
        schema = self._apply_schemas.get(rt.key)
        if schema is None:
            schema = ssa.OpenAPISchema(rt.schema()) if rt.schema is not None else ssa.NAMES
            self._apply_schemas[rt.key] = schema
        return schema

    def _manager(self, req: Request, route: Route, operation: str) -> ssa.Manager:
        """Who writes: ``fieldManager``, else the User-Agent up to its first ``/`` (``prefixFromUserAgent``)."""
        name = req.query.get("fieldManager") or req.header("user-agent").split("/")[0][:128] or "unknown"
        return ssa.Manager(name, operation, route.rt.api_version, frozenset(), subresource=route.subresource or "")

    def _managed_update(self, req: Request, route: Route) -> Callable[[JSON | None, JSON], list[JSON]]:
        """The ``managedFields`` after an Update (create, PUT, patch, scale) from ``cur`` to ``new``.

        Fields are counted after defaulting, as the real server decodes (and defaults) a request before
        its field manager sees it. A request carrying its own non-empty ``managedFields`` sets them
        (``[{}]`` clears them); an empty or missing list keeps the stored ones."""
        who = self._manager(req, route, ssa.UPDATE)
        ignored = self._ignored(route)
        rt = route.rt
        schema = self._apply_schema(rt)
        now = now_rfc3339()

        def record(cur: JSON | None, new: JSON) -> list[JSON]:
            requested = _meta(new).get("managedFields")
            source = requested if isinstance(requested, list) and requested else (
                _meta(cur).get("managedFields") if cur is not None else None)
            managers = ssa.decode_managers(source)
            after = copy.deepcopy(new)
            if rt.defaulter is not None:
                rt.defaulter(after)
            return ssa.encode_managers(ssa.record_update(cur, after, managers, who, now, ignored, schema))

        return record

    def _apply(self, req: Request, route: Route) -> Response:
        """Server-side apply: merge the configuration, own its fields, 409 on others' fields unless
        ``force``; an object that does not exist is created (201)."""
        rt = route.rt
        if route.subresource == "scale":
            raise unsupported_media_type(patch.APPLY_PATCH, [patch.JSON_PATCH, patch.MERGE_PATCH])
        if not req.query.get("fieldManager"):
            raise invalid("PatchOptions", "meta.k8s.io", "", [
                Cause("fieldManager", "Required value: is required for apply patch", "FieldValueRequired")])
        force = _bool(req.query.get("force"))
        config = self._apply_config(req, route)
        dry_run = self._dry_run(req)
        who = self._manager(req, route, ssa.APPLY)
        ignored = self._ignored(route)
        schema = self._apply_schema(rt)
        now = now_rfc3339()

        def applied(cur: JSON | None) -> tuple[JSON, list[JSON]]:
            managers = ssa.decode_managers(_meta(cur).get("managedFields") if cur is not None else None)
            live = copy.deepcopy(cur) if cur is not None else None
            if live is not None:
                _meta(live).pop("managedFields", None)
            try:
                result, managers = ssa.apply(live, config, managers, who, now, force=force, ignored=ignored,
                                             schema=schema)
            except ssa.ApplyConflict as exc:
                causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {m.describe()}",
                           "field": ssa.path_string(p)} for m, p in exc.conflicts]
                raise ApiError(409, "Conflict", str(exc), {"causes": causes}) from None
            return result, ssa.encode_managers(managers)

        def mutate(cur: JSON) -> JSON:
            result, managed = applied(cur)
            _set_managed(result, managed)
            return result

        try:
            obj = self.store.update(
                rt, self._ns(route), route.name or "", mutate, subresource=route.subresource or "", dry_run=dry_run
            )
        except ApiError as exc:
            if exc.code != 404 or route.subresource or exc.details.get("name") != route.name:
                raise
            body, managed = applied(None)
            obj = self.store.create(rt, body, namespace=self._ns(route), dry_run=dry_run, managed_fields=managed)
            return self._render(req, route, obj, 201)
        return self._render(req, route, obj)

    def _apply_config(self, req: Request, route: Route) -> JSON:
        """The applied configuration (YAML or JSON), checked as the API server checks it."""
        try:
            config = yaml.safe_load(req.body.decode("utf-8")) if req.body else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding YAML: {exc}") from None
        if not isinstance(config, dict):
            raise bad_request("the request body must be an object (YAML or JSON)")
        rt = route.rt
        if config.get("apiVersion") != rt.api_version:
            raise bad_request(
                f"Incorrect version specified in apply patch. Specified patch version: {config.get('apiVersion') or ''}"
                f", expected: {rt.api_version}"
            )
        if config.get("kind") != rt.kind:
            raise bad_request(
                f"Incorrect kind specified in apply patch. Specified patch kind: {config.get('kind') or ''}"
                f", expected: {rt.kind}"
            )
        meta = config.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be set in an apply patch")
        if meta.get("managedFields") is not None:
            raise bad_request("metadata.managedFields must be nil")
        self._check_body(route, config, name=route.name)
        return config

    def _delete_options(self, req: Request) -> tuple[bool, JSON]:
        body = req.json_body() if req.body else None
        options = body if isinstance(body, dict) else {}
        return self._dry_run(req, options), options

    def _delete(self, req: Request, route: Route) -> Response:
        rt = route.rt
        name = route.name or ""
        if rt.key == "/namespaces" and name in PROTECTED_NAMESPACES:
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                {"name": name, "kind": "namespaces"},
            )
        dry_run, options = self._delete_options(req)
        preconditions = options.get("preconditions") or {}
        policy = req.query.get("propagationPolicy") or options.get("propagationPolicy") or ""
        if _bool(req.query.get("orphanDependents")) or options.get("orphanDependents") is True:
            policy = "Orphan"
        obj = self.store.delete(
            rt,
            self._ns(route),
            name,
            dry_run=dry_run,
            precondition_uid=preconditions.get("uid"),
            precondition_rv=preconditions.get("resourceVersion"),
            orphan=policy == "Orphan",
        )
        if rt.delete_returns_object:
            return Response(200, obj)
        details: JSON = {"name": name, "kind": rt.plural, "uid": _meta(obj).get("uid", "")}
        if rt.group:
            details["group"] = rt.group
        success = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        return Response(200, success)

    def _delete_collection(self, req: Request, route: Route) -> Response:
        labels, fields = self._selectors(req, route.rt)
        dry_run, _ = self._delete_options(req)
        listed = self.store.list_objects(route.rt, route.namespace, labels=labels, fields=fields)
        deleted = []
        for obj in listed.items:
            meta = _meta(obj)
            if route.rt.key == "/namespaces" and meta.get("name") in PROTECTED_NAMESPACES:
                continue
            try:
                deleted.append(
                    self.store.delete(route.rt, str(meta.get("namespace", "")), str(meta["name"]), dry_run=dry_run)
                )
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return Response(
            200,
            {
                "kind": route.rt.list_kind_name,
                "apiVersion": route.rt.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": deleted,
            },
        )

    # --- scale subresource ----------------------------------------------------------------

    @staticmethod
    def scale_view(rt: ResourceType, obj: JSON) -> JSON:
        """The ``autoscaling/v1`` Scale of an object (``status.selector`` as a selector string)."""
        assert rt.scale is not None
        meta = _meta(obj)
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": rt.scale.spec_replicas(obj)},
            "status": {"replicas": rt.scale.status_replicas(obj), "selector": rt.scale.selector(obj)},
        }

    def _scale(self, req: Request, route: Route) -> Response:
        rt = route.rt
        sub = rt.scale
        assert sub is not None
        name = route.name or ""
        if req.method == "GET":
            return Response(200, self.scale_view(rt, self.store.get(rt, self._ns(route), name)))
        if req.method == "PUT":
            body = req.json_body()
            if not isinstance(body, dict):
                raise bad_request("the request body must be a JSON object")
            if (body.get("metadata") or {}).get("name") not in (None, "", name):
                raise bad_request("the name of the object does not match the name on the URL")

            def new_scale(view: JSON) -> JSON:
                return body
        elif req.method == "PATCH":
            apply = self._patcher(req, rt)

            def new_scale(view: JSON) -> JSON:
                result = apply(view)
                if not isinstance(result, dict):
                    raise bad_request("the patched Scale is not a JSON object")
                return result
        else:
            raise method_not_allowed(req.method)
        dry_run = self._dry_run(req)
        if req.method == "PATCH":
            self._no_force(req)
        record = self._managed_update(req, route)

        def mutate(cur: JSON) -> JSON:
            old = copy.deepcopy(cur)
            scale = new_scale(self.scale_view(rt, cur))
            replicas = (scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    [invalid_value("spec.replicas", replicas, "must be greater than or equal to 0")],
                )
            rv = (scale.get("metadata") or {}).get("resourceVersion")
            sub.set_spec_replicas(cur, replicas)
            if rv:
                _meta(cur)["resourceVersion"] = rv
            _set_managed(cur, record(old, cur))
            return cur

        obj = self.store.update(rt, self._ns(route), name, mutate, dry_run=dry_run)
        return Response(200, self.scale_view(rt, obj))

    # --- watch -----------------------------------------------------------------------------

    def _watch(self, req: Request, route: Route) -> WatchStream:
        labels, fields = self._selectors(req, route.rt)
        rv_param = req.query.get("resourceVersion", "")
        send_initial = _bool(req.query.get("sendInitialEvents"))
        bookmarks = _bool(req.query.get("allowWatchBookmarks"))
        try:
            timeout = float(req.query.get("timeoutSeconds") or 1800)
            start_rv = int(rv_param) if rv_param not in ("", "0") else None
        except ValueError as exc:
            raise bad_request(f"invalid resourceVersion or timeoutSeconds: {exc}") from exc
        table = _wants(req.header("accept"), "Table")
        include_object = req.query.get("includeObject", "Metadata")
        rt = route.rt
        namespace = route.namespace

        def selected(obj: JSON | None) -> bool:
            if obj is None:
                return False
            if namespace is not None and _meta(obj).get("namespace") != namespace:
                return False
            return labels_match(labels, _meta(obj).get("labels")) and fields(obj)

        first = [True]

        def wrap(kind: str, obj: JSON) -> JSON:
            if table and kind != "BOOKMARK":
                rv = str(_meta(obj).get("resourceVersion", ""))
                obj = to_table(rt, [obj], resource_version=rv, include_object=include_object, with_definitions=first[0])
                first[0] = False
            return {"type": kind, "object": obj}

        def bookmark(rv: int | str) -> JSON:
            return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(rv)}}

        def next_bookmark(now: float, deadline: float) -> float:
            """About every ``watch_bookmark_seconds``, and 2 s before the timeout (the watch cache's rule)."""
            due = min(now + self.watch_bookmark_seconds, deadline - 2)
            return due if due > now else now + self.watch_bookmark_seconds

        def events() -> Iterator[JSON | None]:
            deadline = time.monotonic() + timeout
            cursor = start_rv
            if cursor is None or send_initial:
                listed = self.store.list_objects(rt, namespace, labels=labels, fields=fields)
                for obj in listed.items:
                    yield wrap("ADDED", obj)
                cursor = int(listed.resource_version)
                if send_initial:
                    yield wrap(
                        "BOOKMARK",
                        {
                            "kind": rt.kind,
                            "apiVersion": rt.api_version,
                            "metadata": {
                                "resourceVersion": listed.resource_version,
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    )
            now = time.monotonic()
            bookmark_at = next_bookmark(now, deadline) if bookmarks else float("inf")
            ticked = now  # when the edge last heard from this watch (an event or a tick)
            while not self.store.closed:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    return
                try:
                    batch = self.store.events_after(cursor, max(0.0, min(remaining, self.watch_poll,
                                                                         bookmark_at - now)))
                except ApiError as exc:
                    yield {"type": "ERROR", "object": exc.status()}
                    return
                for event in batch:
                    cursor = event.rv
                    if event.rt.key != rt.key:
                        continue
                    kind = self._event_type(event, selected)
                    if kind is not None:
                        ticked = time.monotonic()
                        yield wrap(kind, event.obj)
                now = time.monotonic()
                if now >= bookmark_at:  # what this watch has seen, events of other kinds included
                    bookmark_at = next_bookmark(now, deadline)
                    ticked = now
                    yield wrap("BOOKMARK", bookmark(cursor))
                elif now - ticked >= self.watch_poll:
                    ticked = now
                    yield None

        content_type = TABLE_CONTENT_TYPE if table else "application/json"
        return WatchStream(events(), content_type)

    @staticmethod
    def _event_type(event: WatchEvent, selected: Callable[[JSON | None], bool]) -> str | None:
        """Event type as seen through the selectors: leaving the selection is a DELETED, entering an ADDED."""
        now, before = selected(event.obj), selected(event.prev)
        if event.type == "MODIFIED":
            if now and before:
                return "MODIFIED"
            if now:
                return "ADDED"
            if before:
                return "DELETED"
            return None
        if event.type == "DELETED":
            return "DELETED" if before or now else None
        return event.type if now else None
