"""The one connection to a Kubernetes cluster per server, and the one door every API call goes through.

``kubernetes`` is imported only when the first call needs it (0.34 s at import;
the server must answer ``initialize`` fast). Connection settings are read once,
at that first use, into one ``ApiClient`` whose urllib3 pool is shared by all
worker threads.

Every API call goes through :meth:`Kube.call`, which

- passes a (connect, read) timeout, 3 s / 10 s by default, so a cluster that
  does not answer fails the call in seconds, and lets urllib3 retry only the
  connect step once (never a read: a retried write could be applied twice);
- asks for the raw response (``_preload_content=False``) and returns the JSON
  as dicts: the tools reason about API objects as the server sends them, and
  skip the generated models' per-field conversion on every response;
- sends the call id as the ``Audit-ID`` request header, which a real API
  server keeps in its own audit log, so a reviewer can join the two logs;
- when the server impersonates (:class:`Impersonation`), sends who the call is
  for (:func:`acting_for`) as ``Impersonate-User`` and ``Impersonate-Group``,
  per request, never on the shared client, so the cluster's RBAC decides too;
- maps ``ApiException`` to :class:`KubeApiError` (code ``api_error``, with the
  HTTP status and the reason/message/causes of the API's Status body) and
  socket-level failures to :class:`ClusterUnreachable`
  (code ``cluster_unreachable``, naming the server URL).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from opsgate import telemetry

from .errors import ToolError
from .inline import no_wait
from .structs.patches import guard_broken
from .untrusted import TEXT_MAX, name_in_text, quoted

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api

    from .informer import ReadCache

__all__ = [
    "CONFLICT_ATTEMPTS", "DEFAULT_TIMEOUT", "JSON_PATCH", "MAX_CONCURRENT_CALLS", "ActingFor", "ClusterUnreachable",
    "Impersonation", "Kube", "KubeApiError", "KubeTarget", "acting_for", "api_error", "cluster_refusal",
    "guarded_patch", "impersonation_headers", "retry_on_conflict",
]

DEFAULT_TIMEOUT: Final = (3.0, 10.0)
FIELD_MANAGER: Final = "opsgate"
JSON_PATCH: Final = "application/json-patch+json"
#: Calls in flight to one cluster at most (the server's thread limiter for cluster calls), and so the
#: connections kept open to it: urllib3's default pool of 10 dropped and reopened the rest with a warning.
MAX_CONCURRENT_CALLS: Final = 32
_MESSAGE_MAX: Final = 1000
_WRITE_PREFIXES: Final = ("create_", "patch_", "replace_", "delete_")


class KubeTarget(BaseModel):
    """Which cluster to talk to. Nothing set: the default kubeconfig ($KUBECONFIG or ~/.kube/config)."""

    model_config = ConfigDict(extra="forbid")

    kubeconfig: Path | None = Field(default=None, description="kubeconfig file; None: $KUBECONFIG or ~/.kube/config.")
    context: str | None = Field(default=None, description="kubeconfig context; None: its current-context.")
    in_cluster: bool = Field(default=False, description="Use the pod's service account (in-cluster config).")
    sandbox_url: str | None = Field(default=None, description="URL of an opsgate sandbox cluster (no auth, no TLS).")


@dataclass(frozen=True)
class ActingFor:
    """Whom a cluster request is made for: the gate's principal and groups for the call running."""

    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Impersonation:
    """Send the caller as ``Impersonate-User`` and one ``Impersonate-Group`` per group, so the cluster's RBAC
    applies to the person, not only opsgate's account. A group is the caller's policy subject without the
    policy's prefix (``group:platform`` -> ``platform``), then ``group_prefix`` (the cluster's, e.g. ``oidc:``)."""

    group_prefix: str = ""
    policy_prefix: str = "group:"


# Set by the gate around a call (contextvars follow the call into its worker threads: anyio copies them).
_ACTING_FOR: ContextVar[ActingFor | None] = ContextVar("opsgate_acting_for", default=None)


@contextmanager
def acting_for(who: ActingFor | None) -> Iterator[None]:
    """Cluster requests made inside run for ``who`` (when the Kube impersonates)."""
    token = _ACTING_FOR.set(who)
    try:
        yield
    finally:
        _ACTING_FOR.reset(token)


def _header_spellings(name: str, count: int) -> list[str]:
    """``count`` spellings of one header name differing only in case. The client hands urllib3 a plain dict,
    which holds one value a key; HTTP names are case-insensitive, so each spelling is one more header line,
    and the API server reads them all as one repeated header (as client-go sends Impersonate-Group)."""
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    out = []
    for n in range(count):
        chars = list(name)
        for bit, at in enumerate(letters):
            if n >> bit & 1:
                chars[at] = chars[at].swapcase()
        out.append("".join(chars))
    return out


#: Groups sent at most (the token's first ones): 2**15 spellings are possible, a header block is not.
MAX_IMPERSONATED_GROUPS: Final = 64


@lru_cache(maxsize=256)
def impersonation_headers(impersonation: Impersonation, who: ActingFor) -> dict[str, str]:
    """Pure: the request headers that make the cluster act as ``who`` (cached: callers copy, never change it)."""
    headers = {"Impersonate-User": who.user}
    groups = who.groups[:MAX_IMPERSONATED_GROUPS]
    for spelling, group in zip(_header_spellings("Impersonate-Group", len(groups)), groups, strict=True):
        headers[spelling] = impersonation.group_prefix + group.removeprefix(impersonation.policy_prefix)
    return headers


class KubeApiError(ToolError):
    """The API server refused or failed a request; ``status`` is the HTTP status, ``reason`` the Status reason.

    ``audit_id`` is the ``Audit-Id`` the server answered with (ours, echoed, on a real API server):
    the key to this request in the cluster's own audit log.
    """

    def __init__(self, message: str, *, status: int, reason: str | None, rule: str, field: str | None = None,
                 causes: list[dict[str, str]] | None = None, audit_id: str | None = None) -> None:
        super().__init__(message, code="api_error", field=field, rule=rule, status=status, causes=causes)
        self.status: int = status
        self.reason = reason
        self.audit_id = audit_id


T = TypeVar("T")
JSON = dict[str, Any]

#: Tries of one guarded write before a conflict is reported: enough to outlast a burst of another
#: writer's changes, few enough that a call never spins (backoff totals under half a second).
CONFLICT_ATTEMPTS: Final = 4
_BACKOFF_S: Final = (0.05, 0.1, 0.2)


def retry_on_conflict(attempt: Callable[[], T], *, what: str, kind: str,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``attempt`` (read, decide, one guarded write) until it is not overtaken, at most CONFLICT_ATTEMPTS times.

    A conflict (HTTP 409, or a guard that no longer holds: see :func:`guarded_patch`) means someone
    changed what the call depends on between its read and its write, so nothing of ours was
    applied: read and decide again after a short, growing, jittered pause. The last conflict is
    reported, still with nothing applied.
    """
    for tries in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return attempt()
        except KubeApiError as exc:
            if exc.status != 409 and exc.rule != "conflict":
                raise
            if tries == CONFLICT_ATTEMPTS:
                raise KubeApiError(
                    f"{what}: the {kind} was changed by someone else while this call was changing it, "
                    f"{tries} times in a row (HTTP {exc.status} {exc.reason or 'Conflict'}); nothing was applied "
                    "by this call. Read it again and retry.",
                    status=exc.status, reason=exc.reason, rule="conflict",
                ) from exc
            base = _BACKOFF_S[min(tries, len(_BACKOFF_S)) - 1]
            sleep(base * (0.5 + random.random() / 2))
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- guards on what a write depends on


def guarded_patch(kube: Kube, fn: Callable[..., Any], *args: Any, ops: list[JSON], reread: Callable[[], JSON],
                  what: str, audit_id: str | None, dry_run: str | None) -> Any:
    """Send one JSON Patch whose leading ops are guards (structs.patches.guard); a failed guard becomes a conflict.

    On a 422 the object is read again: if a guard no longer holds, the write was overtaken
    (nothing applied) and a ``conflict`` is raised for :func:`retry_on_conflict`; otherwise the 422
    is the API's real refusal and is raised as it came.
    """
    try:
        return kube.call(fn, *args, ops, dry_run=dry_run, _content_type=JSON_PATCH, what=what, audit_id=audit_id)
    except KubeApiError as exc:
        if exc.status != 422 or not guard_broken(reread(), ops):
            raise
        raise KubeApiError(
            f"{what}: changed by someone else since it was read (a guard of the patch failed: HTTP 422); "
            "nothing was applied by this call",
            status=422, reason=exc.reason, rule="conflict", audit_id=exc.audit_id,
        ) from exc


class ClusterUnreachable(ToolError):
    """No HTTP answer: connection refused or dropped, TLS failure, or a timeout."""

    def __init__(self, message: str, *, server: str, rule: str) -> None:
        super().__init__(message, code="cluster_unreachable", rule=rule)
        self.server = server


_RULES: Final[dict[int, str]] = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    409: "conflict", 410: "gone", 415: "unsupported-media-type", 422: "invalid", 429: "too-many-requests",
}


def _clip(text: str, limit: int = _MESSAGE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def api_error(status: int, http_reason: str | None, body: str | None, what: str,
              audit_id: str | None = None) -> KubeApiError:
    """A KubeApiError from an HTTP error answer; reads the Kubernetes ``Status`` body when there is one.

    Pure, so the mapping is testable without a cluster: 422 names the first invalid field and
    lists every cause; a 409 ``AlreadyExists`` is told apart from a stale-write ``Conflict``.
    """
    status_body: dict[str, Any] = {}
    if body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                status_body = parsed
        except ValueError:
            pass
    reason = status_body.get("reason") or http_reason or ""
    message = str(status_body.get("message") or (body or "").strip() or http_reason or "no message")
    details = status_body.get("details") if isinstance(status_body.get("details"), dict) else {}
    causes = [
        {k: str(c[k]) for k in ("field", "reason", "message") if c.get(k)}
        for c in (details or {}).get("causes") or [] if isinstance(c, dict)
    ]
    if status == 409 and reason == "AlreadyExists":
        rule = "already-exists"
    elif status >= 500:
        rule = "server-error"
    else:
        rule = _RULES.get(status, f"http-{status}")
    # The Status text is the cluster's (an admission webhook's, a proxy's): quoted and capped in our
    # sentence, never spliced in as our own words (issue 15 item 17).
    text = f"{what}: the API answered {status} {name_in_text(reason or '-')}: {quoted(message, TEXT_MAX)}"
    if status == 422 and causes:
        listed = "; ".join(f"{name_in_text(c.get('field', '?'))}: {quoted(c.get('message', c.get('reason', '')))}"
                           for c in causes[:5])
        if not (len(causes) == 1 and causes[0].get("message", "") in message):
            text += f" (causes: {listed}{'; …' if len(causes) > 5 else ''})"
    fields = [c["field"] for c in causes if "field" in c]
    return KubeApiError(_clip(text), status=status, reason=reason or None, rule=rule,
                        field=_clip(fields[0], 256) if fields else None, causes=causes, audit_id=audit_id)


def cluster_refusal(error: KubeApiError, user: str) -> KubeApiError:
    """A 403 to a request made as ``user`` (impersonated): the cluster's RBAC refused the person, which is not
    opsgate's policy; rule ``cluster-rbac`` says so, and the message says whom the cluster judged. When the
    cluster refused opsgate's own account the ``impersonate`` verb, that is a setup fault, said as one."""
    if "cannot impersonate" in error.message:
        return KubeApiError(
            _clip(f"the cluster does not let opsgate's account impersonate {name_in_text(user)} (it needs the "
                  f"impersonate verb on users and groups): {error.message}"),
            status=403, reason=error.reason, rule="impersonation-forbidden", audit_id=error.audit_id,
        )
    return KubeApiError(
        _clip(f"the cluster's RBAC refused {name_in_text(user)} (opsgate's policy allowed the call): {error.message}"),
        status=403, reason=error.reason, rule="cluster-rbac", field=error.field, causes=error.causes,
        audit_id=error.audit_id,
    )


@lru_cache(maxsize=1)
def _configuration_class() -> type[Configuration]:
    """The client's Configuration, minus a cost per request: with a token user the kubeconfig loader's
    refresh hook assigns the same host again before every request, and each assignment re-reads the
    proxy settings from the whole environment (40 us). The proxy is only read when the ApiClient builds
    its connection pool, so assigning an unchanged host again can keep the proxy it already has."""
    from kubernetes.client import Configuration as Base

    base_host: property = vars(Base)["host"]  # the client's getter, and its setter that re-resolves the proxy

    class Configuration(Base):
        @property
        def host(self) -> str:
            return str(base_host.__get__(self))

        @host.setter
        def host(self, value: str) -> None:
            if value != self.__dict__.get("_base_path") or self.__dict__.get("server_index") is not None:
                base_host.__set__(self, value)

    return Configuration


def traced_request(request: Callable[..., Any]) -> Callable[..., Any]:
    """The client's REST ``request`` with a CLIENT span (HTTP conventions) and W3C ``traceparent`` on the
    request, so an API server that traces joins the caller's trace."""

    def traced(method: str, url: str, headers: Mapping[str, str] | None = None, *args: Any, **kwargs: Any) -> Any:
        with telemetry.http_span(method.upper(), url, "kubernetes") as span:
            sent = dict(headers or {})
            telemetry.inject(sent)
            response = request(method, url, sent, *args, **kwargs)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return traced


#: Watch caches one Kube keeps at most (one per credentials and impersonated identity).
_MAX_READ_CACHES: Final = 16


def _credentials_id(cfg: Configuration) -> str:
    """A fingerprint of who the client authenticates as (token, client certificate, basic-auth user), never the
    secret: a hash, so the watch cache can be keyed by it."""
    import contextlib
    import hashlib

    digest = hashlib.sha256()
    for part in (*sorted((cfg.api_key or {}).items()), cfg.username or "", cfg.cert_file or ""):
        digest.update(repr(part).encode() + b"\0")
    if cfg.cert_file:  # the certificate names the user; a temporary file's path may not
        with contextlib.suppress(OSError):
            digest.update(Path(cfg.cert_file).read_bytes())
    return digest.hexdigest()[:16]


class Kube:
    """One cluster connection, built once per server from a KubeTarget or a kubeconfig dict.

    Nothing is read or connected at construction: the kubeconfig is loaded on the first call
    (or :meth:`connect`), so a missing or slow cluster never delays server start.
    """

    def __init__(
        self,
        target: KubeTarget | None = None,
        *,
        config_dict: Mapping[str, Any] | None = None,
        sandbox: bool | None = None,
        request_timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.target = target or KubeTarget()
        self._config_dict = dict(config_dict) if config_dict is not None else None
        self.is_sandbox = sandbox if sandbox is not None else self.target.sandbox_url is not None
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._client: ApiClient | None = None
        self._apps: AppsV1Api | None = None
        self._core: CoreV1Api | None = None
        self._server: str | None = None
        self._context: str | None = None
        self.impersonation: Impersonation | None = None  # set by the server when the cluster's RBAC should decide too
        self._read_caches: dict[tuple[str, str, ActingFor | None], ReadCache] | None = None  # None: reads go to the API
        self._read_cache_idle = 0.0
        self._credentials_id = ""

    @classmethod
    def from_kubeconfig_dict(
        cls,
        config: Mapping[str, Any],
        *,
        context: str | None = None,
        sandbox: bool = False,
        request_timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> Kube:
        return cls(KubeTarget(context=context), config_dict=config, sandbox=sandbox, request_timeout=request_timeout)

    # ------------------------------------------------------------------ connection

    def connect(self) -> ApiClient:
        """The shared ApiClient, created on first use. ToolError ``cluster_config`` if settings do not load."""
        client = self._client
        if client is not None:
            return client
        no_wait()  # building it reads files (and may run a credential plugin): not on the event loop
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> ApiClient:
        import urllib3
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        cfg = _configuration_class()()
        t = self.target
        try:
            if t.sandbox_url is not None:
                cfg.host = t.sandbox_url.rstrip("/")
                self._context = "sandbox"
            elif t.in_cluster:
                k8s_config.load_incluster_config(client_configuration=cfg)
                self._context = "in-cluster"
            elif self._config_dict is not None:
                k8s_config.load_kube_config_from_dict(
                    self._config_dict, context=t.context, client_configuration=cfg, persist_config=False
                )
                self._context = t.context or self._config_dict.get("current-context")
            else:
                path = str(t.kubeconfig) if t.kubeconfig is not None else None
                k8s_config.load_kube_config(
                    config_file=path, context=t.context, client_configuration=cfg, persist_config=False
                )
                if t.context is not None:
                    self._context = t.context
                else:
                    _, current = k8s_config.list_kube_config_contexts(config_file=path)
                    self._context = current.get("name") if isinstance(current, dict) else None
        except Exception as exc:  # ConfigException, a missing file, bad YAML, a failing exec plugin
            where = str(t.kubeconfig) if t.kubeconfig else ("in-cluster config" if t.in_cluster else "kubeconfig")
            raise ToolError(f"cannot load cluster settings from {where}: {exc}", code="cluster_config") from None
        # Retry a failed connect once; never a read (a write might be applied twice) nor a status.
        cfg.retries = urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0)
        cfg.connection_pool_maxsize = MAX_CONCURRENT_CALLS
        self._server = cfg.host
        self._credentials_id = _credentials_id(cfg)
        client = k8s.ApiClient(cfg)
        # The API server names a write's field manager after the User-Agent (up to its "/"): ours show as "opsgate"
        # in managedFields, which the drift tool reads back (with the change-cause's call id).
        client.user_agent = f"{FIELD_MANAGER}/1"
        if telemetry.ON:  # a span per HTTP request, and its traceparent sent, where method and URL are final
            client.rest_client.request = traced_request(client.rest_client.request)  # type: ignore[method-assign]
        return client

    @property
    def apps(self) -> AppsV1Api:
        if self._apps is None:
            from kubernetes.client import AppsV1Api

            self._apps = AppsV1Api(self.connect())
        return self._apps

    @property
    def core(self) -> CoreV1Api:
        if self._core is None:
            from kubernetes.client import CoreV1Api

            self._core = CoreV1Api(self.connect())
        return self._core

    @property
    def server(self) -> str:
        if self._server is None:
            self.connect()
        return self._server or "?"

    def describe(self) -> dict[str, Any]:
        """Which cluster this is, for ``whoami`` and logs: no network call, never raises."""
        out: dict[str, Any] = {"sandbox": self.is_sandbox, "in_cluster": self.target.in_cluster}
        try:
            self.connect()
        except ToolError as exc:
            out.update(server=None, context=self.target.context, error=exc.message)
            return out
        out.update(server=self._server, context=self._context)
        return out

    # ------------------------------------------------------------------ the watch cache (tools/informer)

    def use_read_cache(self, *, idle_seconds: float) -> None:
        """Serve the read tools from watch caches (one per :attr:`cache_key`), each watch dropped after
        ``idle_seconds`` without a read. Off by default: a Kube built by a library caller or a test reads the API."""
        self._read_cache_idle = idle_seconds
        self._read_caches = {}

    @property
    def caching(self) -> bool:
        """Whether the read tools are served from watch caches (:meth:`use_read_cache`)."""
        return self._read_caches is not None

    @property
    def cache_key(self) -> tuple[str, str, ActingFor | None]:
        """Whose view of which cluster a cached read is: (server URL, credentials fingerprint, impersonated identity).

        The fingerprint is a hash of the credentials (token, client certificate, basic-auth user), never the
        secret itself. Impersonation must be part of the key: with it on, each principal (and its groups) is
        its own view of the cluster under the cluster's RBAC, and one principal's cache is never another's."""
        self.connect()
        who = _ACTING_FOR.get() if self.impersonation is not None else None
        return (self._server or "?", self._credentials_id, who)

    @property
    def read_cache(self) -> ReadCache | None:
        """The watch cache for the credentials and identity of the call running; None when the cache is off."""
        caches = self._read_caches
        if caches is None:
            return None
        key = self.cache_key
        cache = caches.get(key)
        if cache is None:
            from .informer import ReadCache

            with self._lock:
                cache = caches.get(key)
                if cache is None:
                    while len(caches) >= _MAX_READ_CACHES:  # the least recently made goes (its watches stop)
                        caches.pop(next(iter(caches))).close()
                    cache = caches[key] = ReadCache(self, idle_seconds=self._read_cache_idle)
        return cache

    def _saw(self, fn: Callable[..., Any], obj: Any) -> None:
        """Read-your-write: the version an object was written (or read) at, which later cached reads must reach.

        Reads count too: a write tool reads its object again after writing (the controller's new revision),
        and what it returned must not be followed by an older view from the cache. Lists do not: a list's
        version is the whole cluster's, which one namespace's watch may never reach."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        kind = str(obj.get("kind") or "")
        if kind == "Scale":  # a scale subresource answers with its own kind and its parent's resourceVersion
            kind = getattr(fn, "__name__", "").rpartition("namespaced_")[2].removesuffix("_scale").replace("_", "")
        if not (rv and namespace and kind) or kind.endswith("List"):
            return
        cache = self.read_cache
        if cache is not None:
            cache.saw(kind, str(namespace), str(rv))

    def close(self) -> None:
        for cache in list((self._read_caches or {}).values()):
            cache.close()  # the watches end now, not at their timeout
        with self._lock:
            if self._client is not None:
                self._client.close()  # type: ignore[no-untyped-call]
            self._client = self._apps = self._core = None

    # ------------------------------------------------------------------ the one call path

    def call(self, fn: Callable[..., Any], *args: Any, what: str, audit_id: str | None = None, stream: bool = False,
             **kwargs: Any) -> Any:
        """Call one ``kubernetes`` API method; return the response JSON (dicts), or raise a ToolError.

        ``what`` names the operation in error messages ("read deployment prod/web"). ``stream``: return the
        open urllib3 response instead (a watch), which the caller reads, closes and releases. With the watch
        cache on, the version of the object answered is recorded for read-your-write (:meth:`_saw`).
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        no_wait()  # a request to the cluster: a read tried on the event loop goes to a worker thread instead
        self.connect()
        kwargs.setdefault("_request_timeout", self.request_timeout)
        kwargs["_preload_content"] = False
        headers = self.identity_headers()
        if audit_id:
            headers = {**headers, "Audit-ID": audit_id} if headers else {"Audit-ID": audit_id}
        if headers:
            kwargs["_headers"] = headers
        is_write = getattr(fn, "__name__", "").startswith(_WRITE_PREFIXES)
        # The client checks every call's ~20 parameters with pydantic (validate_call), 25 us a read; a read's
        # arguments here are already-validated strings and our own options, so reads call the method itself.
        raw = None if is_write else getattr(getattr(fn, "__func__", None), "raw_function", None)
        response: Any = None
        try:
            response = fn(*args, **kwargs) if raw is None else raw(fn.__self__, *args, **kwargs)  # type: ignore[attr-defined]
            if stream:
                return response
            data = response.data
        except ApiException as exc:
            if not exc.status:  # the client's own wrapper for TLS failures
                raise self._unreachable(what, str(exc.reason), "tls", is_write) from None
            echoed = exc.headers.get("Audit-Id") if exc.headers is not None else None
            error = api_error(int(exc.status), exc.reason, exc.body, what, echoed)
            user = headers.get("Impersonate-User") if headers else None
            raise (cluster_refusal(error, user) if user is not None and error.status == 403 else error) from None
        except (Urllib3Error, OSError) as exc:
            raise self._unreachable_from(exc, what, is_write) from None
        finally:
            if response is not None and not stream and hasattr(response, "release_conn"):
                response.release_conn()
        if not data:
            return {}
        try:
            result = json.loads(data)
        except ValueError:
            raise ToolError(f"{what}: the API answered something that is not JSON", code="api_error",
                            rule="bad-response") from None
        if self._read_caches is not None and not kwargs.get("dry_run"):
            self._saw(fn, result)
        return result

    def identity_headers(self) -> dict[str, str]:
        """The impersonation headers for the call running, or none (no impersonation, or nobody acting)."""
        who = _ACTING_FOR.get()
        if self.impersonation is None or who is None:
            return {}
        return impersonation_headers(self.impersonation, who)

    def _unreachable_from(self, exc: BaseException, what: str, is_write: bool) -> ClusterUnreachable:
        from urllib3.exceptions import (
            ConnectTimeoutError,
            MaxRetryError,
            NewConnectionError,
            ProtocolError,
            ReadTimeoutError,
            SSLError,
        )

        cause: BaseException = exc
        if isinstance(exc, MaxRetryError) and exc.reason is not None:
            cause = exc.reason
        connect_s, read_s = self.request_timeout
        # NewConnectionError subclasses ConnectTimeoutError in urllib3: test it first.
        if isinstance(cause, NewConnectionError):
            return self._unreachable(what, f"cannot connect ({cause})", "connect-failed", False)
        if isinstance(cause, ConnectTimeoutError):
            return self._unreachable(what, f"no connection within {connect_s:g} s", "timeout", False)
        if isinstance(cause, ReadTimeoutError | TimeoutError):
            return self._unreachable(what, f"no answer within {read_s:g} s", "timeout", is_write)
        if isinstance(cause, SSLError):
            return self._unreachable(what, f"TLS failed: {cause}", "tls", False)
        if isinstance(cause, ProtocolError | ConnectionError):
            return self._unreachable(what, f"the connection was dropped ({cause})", "connection-dropped", is_write)
        return self._unreachable(what, f"{type(cause).__name__}: {cause}", "connect-failed", is_write)

    def _unreachable(self, what: str, why: str, rule: str, maybe_applied: bool) -> ClusterUnreachable:
        server = self._server or "?"
        text = f"{what}: the cluster at {server} did not answer: {why}"
        if maybe_applied:
            text += "; the change may or may not have been applied: check its state before retrying"
        return ClusterUnreachable(_clip(text), server=server, rule=rule)
