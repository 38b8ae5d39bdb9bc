"""The team server: the same MCP server (same gate, tools, audit log) over streamable HTTP, behind OAuth.

``opsgate serve --http ADDRESS`` serves the SDK's streamable HTTP transport at ``/mcp`` (sessions, and
resumable SSE streams through a bounded in-memory :class:`EventStore`), with ``/healthz``, ``/readyz``,
``/metrics`` (when telemetry exports Prometheus) and, with ``--oauth-issuer``, the Protected Resource
Metadata of RFC 9728. uvicorn runs it on the server's own event loop; opsgate keeps the signals.

Every ``/mcp`` request passes :class:`BearerGate` first: no token, 401 pointing at the metadata; a token
refused (server/oauth.py), 401 with ``error="invalid_token"`` and an audit record naming the rule, never
the token. A verified token becomes the request's :class:`~.records.Caller` (principal and groups), which
the MCP handlers hand to the gate (server/app.py ``caller_of``), and the SDK binds the session to it: a
session id used with another identity's token is answered as unknown.

Fail closed: an address other than loopback without OAuth is refused at start, as is ``--principal``
(over HTTP the principal is the token's, or on loopback without OAuth the server's own).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import anyio
import structlog
import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from opsgate.audit import AuditWriteError
from opsgate.audit.sink import sink_problem
from opsgate.policies.ratelimit import take_token
from opsgate.tools.errors import ToolError
from opsgate.tools.kube import Kube

from .app import CALLER_KEY
from .config import Settings, http_address
from .gate import Gate
from .oauth import OAuthConfig, TokenRefused, TokenVerifier, Verified, protected_resource_metadata, www_authenticate
from .records import Caller, server_record
from .wire import MAX_LINE_BYTES

log = structlog.get_logger("opsgate.http")

MCP_PATH: Final = "/mcp"
#: SSE events kept for resumption, over all sessions; the oldest go first.
MAX_EVENTS: Final = 10_000
#: The SSE ``retry`` field: how soon a client whose stream dropped reconnects (and resumes from its last event).
RETRY_MS: Final = 1000
#: Seconds open requests get to finish when the server stops (uvicorn's graceful shutdown, whole seconds).
SHUTDOWN_GRACE_S: Final = 1
#: Bytes of request headers uvicorn reads at most (h11): a huge header is answered 431/400, not buffered.
MAX_HEADER_BYTES: Final = 64 * 1024
LOOPBACK_NAMES: Final = frozenset({"localhost"})
#: The readiness probe's cluster check: at most this often, with this (connect, read) timeout.
PROBE_EVERY_S: Final = 10.0
PROBE_TIMEOUT: Final = (1.0, 2.0)
#: Refused tokens that get an audit record of their own, per minute (a burst of this many, then one a second):
#: anyone who can reach the port can send garbage tokens, and each record is an fsync and a line kept forever.
REFUSALS_RECORDED_PER_MINUTE: Final = 60

Refused = Callable[[dict[str, Any]], Awaitable[None]]


class HttpSetupError(ValueError):
    """An HTTP setting that would drop a protection, or contradicts another."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_settings(settings: Settings) -> tuple[str, int, OAuthConfig | None]:
    """Pure: the address and the OAuth settings of ``--http``, or HttpSetupError saying what is unsafe."""
    if settings.http is None:
        if settings.oauth_issuer is not None or settings.oauth_resource is not None:
            raise HttpSetupError("--oauth-issuer and --oauth-resource apply to --http only")
        raise HttpSetupError("--http is not set")
    host, port = http_address(settings.http)
    if settings.principal is not None:
        raise HttpSetupError("--principal cannot be used with --http: over HTTP the principal is the one its "
                             "OAuth token names (or, on loopback without OAuth, the server's own)")
    if settings.oauth_issuer is None:
        if settings.oauth_resource is not None:
            raise HttpSetupError("--oauth-resource needs --oauth-issuer")
        if not is_loopback(host):
            raise HttpSetupError(f"--http {settings.http} listens beyond this machine without authentication: "
                                 "set --oauth-issuer (and --oauth-resource), or listen on 127.0.0.1")
        return host, port, None
    if settings.oauth_resource is None and not is_loopback(host):
        raise HttpSetupError(f"--http {settings.http} with OAuth needs --oauth-resource: the URL clients reach "
                             "this server at, which their tokens must name as audience")
    shown = f"[{host}]" if ":" in host else host
    resource = settings.oauth_resource or f"http://{shown}:{port}{MCP_PATH}"
    try:
        config = OAuthConfig(
            issuer=settings.oauth_issuer, resource=resource, principal_claim=settings.oauth_principal_claim,
            groups_claim=settings.oauth_groups_claim, group_prefix=settings.oauth_group_prefix,
            algorithms=tuple(settings.oauth_algorithms), scopes=tuple(settings.oauth_scopes),
        )
    except ValueError as exc:
        raise HttpSetupError(f"--oauth-*: {exc}") from None
    return host, port, config


class BoundedEventStore(EventStore):
    """SSE events for resumption (``Last-Event-ID``), in memory, the newest :data:`MAX_EVENTS` kept over all
    sessions. Each session sees it through its own :class:`SessionEvents`: the SDK names a stream by the
    JSON-RPC id of its request, which every session's client counts from 1 alike. Event ids are random, not
    counters, so none can be guessed either.
    """

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self._limit = limit
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = os.urandom(16).hex()
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._limit:
            self._events.popitem(last=False)
        return event_id

    def stream_of(self, event_id: EventId) -> StreamId | None:
        known = self._events.get(event_id)
        return known[0] if known is not None else None

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        known = self._events.get(last_event_id)
        if known is None:
            return None
        stream = known[0]
        after = False
        for event_id, (stream_id, message) in list(self._events.items()):
            if event_id == last_event_id:
                after = True
            elif after and stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream


class SessionEvents(EventStore):
    """One session's view of the shared store: its streams are prefixed with its session id, and an event id
    of another session's stream replays nothing (another principal's results must never be sent here)."""

    def __init__(self, store: BoundedEventStore, session_id: str) -> None:
        self._store = store
        self._prefix = f"{session_id}/"

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return await self._store.store_event(self._prefix + stream_id, message)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = self._store.stream_of(last_event_id)
        if stream is None or not stream.startswith(self._prefix):
            return None
        stream = await self._store.replay_events_after(last_event_id, send_callback)
        return stream.removeprefix(self._prefix) if stream is not None else None


class SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, giving each session its own view of the event store (SessionEvents). The
    SDK hands one store to every session's transport; this swaps it for the session's view as the session is
    admitted (tests/http/test_http_lifecycle.py fails if the SDK stops storing it where this looks)."""

    def _admit_session(self, requestor: Any) -> Any:
        transport = super()._admit_session(requestor)
        if transport is not None and isinstance(self.event_store, BoundedEventStore):
            transport._event_store = SessionEvents(self.event_store, str(transport.mcp_session_id))
        return transport


class RefusalRecords:
    """Which refused tokens get an audit record: a token bucket of :data:`REFUSALS_RECORDED_PER_MINUTE` over the
    whole server. Refusals past it are counted, and the next record says how many went unrecorded before it,
    so the log still accounts for every refusal without one fsynced line per garbage token. Event loop only."""

    def __init__(self, per_minute: float = REFUSALS_RECORDED_PER_MINUTE) -> None:
        self._rate = per_minute
        self._bucket: tuple[float, float] | None = None
        self.unrecorded = 0

    def admit(self, now: float) -> int | None:
        """None: this refusal is only counted; else how many refusals went unrecorded since the last record."""
        self._bucket, wait = take_token(self._bucket, self._rate, now)
        if wait is not None:
            self.unrecorded += 1
            return None
        skipped, self.unrecorded = self.unrecorded, 0
        return skipped


class BearerGate:
    """ASGI wrapper of ``/mcp``: a verified bearer token, or a 401 the client can act on (and, for a token
    that was refused, an audit record)."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, base: Caller, on_refused: Refused) -> None:
        self.app = app
        self.verifier = verifier
        self.base = base
        self.on_refused = on_refused
        self.refusals = RefusalRecords()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            await self._deny(scope, receive, send, None)
            return
        try:
            verified = await self.verifier.verify(token.strip())
        except TokenRefused as refused:
            skipped = self.refusals.admit(time.monotonic())
            if skipped is not None:
                session = request.headers.get("mcp-session-id")
                facts = {**refused.facts(), "path": scope.get("path", "")[:256],
                         "mcp_session_id": (session or "")[:128] or None}
                await self.on_refused({**facts, "unrecorded_before": skipped} if skipped else facts)
            await self._deny(scope, receive, send, refused)
            return
        scope["user"] = AuthenticatedUser(access_token(token, verified, self.verifier.config.resource))
        scope[CALLER_KEY] = caller_of_token(self.base, verified, request.headers.get("mcp-session-id"))
        await self.app(scope, receive, send)

    async def _deny(self, scope: Scope, receive: Receive, send: Send, refused: TokenRefused | None) -> None:
        body = {"error": "invalid_token", "error_description": refused.message} if refused else {
            "error": "unauthorized", "error_description": "a bearer token is required"}
        status = 403 if refused is not None and refused.rule == "insufficient-scope" else 401
        headers = {"WWW-Authenticate": www_authenticate(self.verifier.config, refused)}
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


class BodyCap:
    """ASGI wrapper of ``/mcp``: a request body longer than MAX_LINE_BYTES (the cap on one stdin line) is answered
    413 and recorded (``input_rejected``, rule ``body-too-large``) without being held; the SDK reads a body
    whole into memory whatever its length. A body within the cap is handed on as it came."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Request(scope).headers.get("content-length", "")
        body, more = bytearray(), True
        size = int(declared) if declared.isdigit() else 0
        while more and size <= MAX_LINE_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            size = max(size, len(body))
        if size > MAX_LINE_BYTES:
            await self._reject(scope, receive, send, size)
            return
        handed = False

        async def replay() -> Any:
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        caller = scope.get(CALLER_KEY) or self.gate.caller
        facts = {"rule": "body-too-large", "bytes": size, "max_line_bytes": MAX_LINE_BYTES,
                 "path": str(scope.get("path", ""))[:256]}
        try:
            await anyio.to_thread.run_sync(self.gate.audit.append, server_record("input_rejected", caller, **facts))
        except AuditWriteError as exc:
            log.error("audit_write_failed", stage="input_rejected", error=str(exc))
        log.warning("input_rejected", **facts)
        error = {"code": -32600, "message": f"the request body is longer than {MAX_LINE_BYTES} bytes"}
        await JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=413,
                           headers={"Connection": "close"})(scope, receive, send)


def access_token(token: str, verified: Verified, resource: str) -> AccessToken:
    """What the SDK binds a session to (client id, issuer, subject): the same person's next token fits."""
    return AccessToken(token=token, client_id=verified.client_id, scopes=list(verified.scopes),
                       expires_at=verified.expires_at, resource=resource, subject=verified.principal,
                       claims={"iss": verified.issuer})


def caller_of_token(base: Caller, verified: Verified, session_id: str | None) -> Caller:
    """The request's caller: the token's principal and groups; the MCP session when there is one."""
    return replace(base, principal=verified.principal, principal_source="oauth", groups=verified.groups,
                   session_id=(session_id or base.session_id)[:128], client_name=None, client_version=None)


def readiness(gate: Gate, verifier: TokenVerifier | None, cluster_ok: Callable[[], str]) -> tuple[bool, dict[str, str]]:
    """What ``/readyz`` says: policy loaded, audit log writable, the issuer's keys (with OAuth), the cluster.

    The cluster is reported, not required: a cluster that is down must not take the local model tools
    (and every replica at once) out of the Service.
    """
    checks: dict[str, str] = {"policy": f"loaded, sha256 {gate.policy.hash[:12]}"}
    problem = sink_problem(gate.audit)  # the file writable, or the audit database answering (audit/sink.py)
    checks["audit"] = problem or "writable"
    ready = problem is None
    if verifier is not None:
        checks["oauth"] = "issuer keys loaded" if verifier.keys_loaded else "issuer keys not loaded"
        ready = ready and verifier.keys_loaded
    checks["cluster"] = cluster_ok()
    return ready, checks


class ClusterProbe:
    """``/readyz``'s line about the cluster: a ``/version`` read with a short timeout, at most every
    :data:`PROBE_EVERY_S` (probes of every replica must not become load on the API server)."""

    def __init__(self, kube: Kube, is_sandbox: bool) -> None:
        self.kube = kube
        self.is_sandbox = is_sandbox
        self._last: tuple[float, str] | None = None

    def __call__(self) -> str:
        if self.is_sandbox and getattr(self.kube, "sandbox", None) is None:
            return "sandbox, not started yet"
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < PROBE_EVERY_S:
            return self._last[1]
        from kubernetes.client import VersionApi

        try:
            version = self.kube.call(VersionApi(self.kube.connect()).get_code, what="read the cluster's version",
                                     _request_timeout=PROBE_TIMEOUT)
            text = f"reachable, {version.get('gitVersion', '?')}" if isinstance(version, dict) else "reachable"
        except ToolError as exc:
            text = f"unreachable: {exc.message[:200]}"
        self._last = (now, text)
        return text


def build_app(server: Server[Any], gate: Gate, *, host: str, oauth: OAuthConfig | None,
              verifier: TokenVerifier | None, on_refused: Refused,
              cluster_ok: Callable[[], str] = lambda: "not checked") -> Starlette:
    """The Starlette app of the team server (tests build it too)."""
    security = None
    if is_loopback(host):  # a browser page must not reach a loopback server by DNS rebinding
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    manager = SessionManager(app=server, event_store=BoundedEventStore(), security_settings=security,
                             retry_interval=RETRY_MS)
    mcp: ASGIApp = BodyCap(StreamableHTTPASGIApp(manager), gate)
    if oauth is not None:
        if verifier is None:
            raise HttpSetupError("OAuth is configured without a token verifier")
        mcp = BearerGate(mcp, verifier, gate.caller, on_refused)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    # Beyond loopback /readyz is anyone's to ask: it says ready or not, and what each check found (the cluster's
    # version and error text, the audit database's user@host, file paths) goes to the log, when it changes.
    detailed = is_loopback(host)
    said: list[dict[str, str]] = [{}]

    async def readyz(_: Request) -> Response:
        if verifier is not None:
            await verifier.load_keys()  # the issuer down or misconfigured: not ready (tried again every 30 s)
        ready, checks = await anyio.to_thread.run_sync(readiness, gate, verifier, cluster_ok)
        if checks != said[0]:
            said[0] = checks
            log.info("readiness", ready=ready, checks=checks)
        body = {"ready": ready, "checks": checks} if detailed else {"ready": ready}
        return JSONResponse(body, status_code=200 if ready else 503)

    routes: list[Route | Mount] = [
        Route(MCP_PATH, endpoint=mcp, methods=["GET", "POST", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    if oauth is not None:
        metadata = protected_resource_metadata(oauth)

        async def resource_metadata(_: Request) -> Response:
            return JSONResponse(metadata, headers={"Cache-Control": "max-age=300"})

        well_known = oauth.metadata_url.split("://", 1)[1].partition("/")[2]
        for path in dict.fromkeys(("/" + well_known, "/.well-known/oauth-protected-resource")):
            routes.append(Route(path, resource_metadata, methods=["GET"]))
    metrics = _metrics_app()
    if metrics is not None:
        routes.append(Route("/metrics", endpoint=AsgiEndpoint(metrics), methods=["GET"]))  # no redirect

    app = Starlette(routes=routes, lifespan=lambda _: manager.run())
    app.state.bearer = mcp if isinstance(mcp, BearerGate) else None  # its refusals still uncounted at stop
    return app


class AsgiEndpoint:
    """An ASGI app as a Route's endpoint at its exact path: Starlette would call a plain function (what
    prometheus_client's app is) with a Request, and a Mount answers /metrics with a redirect to /metrics/."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _metrics_app() -> ASGIApp | None:
    """Telemetry's Prometheus exposition, when it exports one (opsgate.telemetry)."""
    from opsgate import telemetry

    app: ASGIApp | None = telemetry.metrics_asgi_app()
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: ``opsgate serve`` owns SIGINT and SIGTERM (server/main.py)."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return

    def capture_signals(self) -> Any:
        from contextlib import nullcontext

        return nullcontext()


@dataclass(frozen=True)
class Listener:
    """The bound socket of ``--http`` and the OAuth settings, made before serving so a port in use or an
    unsafe setting stops the server at start with a message, not from inside the event loop."""

    sock: socket.socket
    host: str
    port: int
    oauth: OAuthConfig | None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}{MCP_PATH}"


def listen(settings: Settings) -> Listener:
    """Check the HTTP settings and bind the address; HttpSetupError saying what is wrong."""
    host, port, oauth = check_http_settings(settings)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.create_server(infos[0][4][:2], family=infos[0][0], backlog=2048)
    except OSError as exc:
        raise HttpSetupError(f"--http {settings.http}: cannot listen there ({exc.strerror or exc})") from exc
    listener = Listener(sock, host, port, oauth)
    if oauth is not None and settings.oauth_resource is None:  # the default names the port bound (port 0: any)
        listener = replace(listener, oauth=replace(oauth, resource=listener.url))
    return listener


async def serve_http(server: Server[Any], gate: Gate, listener: Listener, *, on_refused: Refused,
                     cluster_ok: Callable[[], str] = lambda: "not checked") -> None:
    """Serve until cancelled; then stop taking requests and give open ones a moment (uvicorn's grace)."""
    oauth = listener.oauth
    verifier = TokenVerifier(oauth) if oauth is not None else None
    if verifier is not None:
        await verifier.load_keys()  # without them tokens are refused and /readyz says not ready
    app = build_app(server, gate, host=listener.host, oauth=oauth, verifier=verifier, on_refused=on_refused,
                    cluster_ok=cluster_ok)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False, http="h11",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    web = _Server(config)

    async def run() -> None:
        with anyio.CancelScope(shield=True):  # stopped by should_exit, so it closes its sockets and sessions
            await web.serve(sockets=[listener.sock])

    log.info("serving", transport="http", url=listener.url, oauth=oauth.issuer if oauth else None,
             resource=oauth.resource if oauth else None)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run)
            try:
                await anyio.sleep_forever()
            finally:
                web.should_exit = True
    finally:
        bearer: BearerGate | None = app.state.bearer
        if bearer is not None and bearer.refusals.unrecorded:  # the count the next record would have carried
            with anyio.CancelScope(shield=True):
                await on_refused({"rule": "unrecorded", "message": "refused tokens not recorded one by one, at stop",
                                  "unrecorded_before": bearer.refusals.unrecorded})
        if verifier is not None:
            with anyio.CancelScope(shield=True):
                await verifier.aclose()
