"""Start-up and shutdown of ``opsgate serve``: settings -> identity -> policy -> audit log -> gate -> stdio.

Everything that can be wrong with the setup is found here, before the first
message is read, and stops the server with a message naming what is wrong:
a server that starts is a server whose policy loaded and whose log is writable.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import structlog

from opsgate import telemetry
from opsgate.audit import AuditLog, AuditTrustError, AuditWriteError
from opsgate.audit.sink import AuditSink, sink_location
from opsgate.policies import POLICY_FILE, SHIPPED_DIR, BoundName, Policy
from opsgate.policies.lint import format_findings, load_checked
from opsgate.tools.kube import Impersonation

from . import __version__
from .catalog import server_tools, tool_bounds, tool_verbs
from .cluster import Cluster, describe_cluster, open_cluster
from .config import Settings
from .gate import Gate
from .identity import cluster_username, resolve_identity
from .logs import configure_logging
from .records import Caller, server_record
from .reload import watch_policy
from .wire import ScreenedStdin, claim_stdout

log = structlog.get_logger("opsgate.server")

# How long calls in flight may take to finish (and write their outcomes) after Ctrl-C or SIGTERM:
# the whole stop stays under a second; a cluster request waiting out its timeout is not waited for.
STOP_GRACE_S = 0.5


class StartupError(Exception):
    """A setup problem that stops the server before it serves anything."""


def open_audit_log(settings: Settings) -> AuditSink:
    if settings.audit_db is not None:  # the team server: one chain in PostgreSQL that every replica writes
        from opsgate.audit.pgsink import PgAuditSink, dsn_label

        assert settings.audit_signing_key is not None  # the settings model requires it with audit_db
        try:
            return PgAuditSink(settings.audit_db.get_secret_value(), signing_key=settings.audit_signing_key,
                               checkpoint_every=settings.audit_checkpoint_every)
        except AuditTrustError as exc:
            raise StartupError(str(exc)) from exc
        except AuditWriteError as exc:  # its message names the database, never the password
            raise StartupError(f"audit database cannot be written ({exc}); refusing to serve") from exc
        except ValueError as exc:
            raise StartupError(f"audit database {dsn_label(settings.audit_db.get_secret_value())}: {exc}") from exc
    path = settings.audit_log
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return AuditLog(path, signing_key=settings.audit_signing_key,
                        checkpoint_every=settings.audit_checkpoint_every,
                        max_segment_bytes=settings.audit_max_segment_bytes)
    except AuditTrustError as exc:  # the log is not the one its checkpoints vouch for: say so, not "cannot be written"
        raise StartupError(str(exc)) from exc
    except (OSError, AuditWriteError) as exc:
        raise StartupError(f"audit log {path} cannot be written ({exc}); refusing to serve") from exc


def load_policy(
    settings: Settings, verbs: Mapping[str, str], bounded: Mapping[str, frozenset[BoundName]]
) -> Policy:
    """Loaded and linted from one read of the files: an error stops the server, a warning is logged."""
    path = settings.policy or SHIPPED_DIR / POLICY_FILE
    policy, findings = load_checked(path, verbs, tool_bounds=bounded)
    if policy is None:
        raise StartupError(f"policy does not load:\n{format_findings(findings, path)}")
    for finding in findings:
        log.warning("policy_lint", finding=str(finding))
        telemetry.add(telemetry.POLICY_LINT_FAILURES, 1, {"opsgate.severity": finding.severity})
    return policy


def build_gate(settings: Settings) -> tuple[Gate, Cluster]:
    cluster = open_cluster(settings)
    if not settings.disable_read_cache:  # the read tools from watches (tools/informer); stopped by cluster.close()
        cluster.kube.use_read_cache(idle_seconds=settings.read_cache_idle_seconds)
    try:
        ask = None if cluster.is_sandbox else partial(cluster_username, cluster.kube)  # the sandbox is nobody's
        identity = resolve_identity(settings.principal, ask)
    except ValueError as exc:
        cluster.close()
        raise StartupError(f"principal: {exc}; set --principal") from exc
    caller = Caller(
        principal=identity.principal,
        principal_source=identity.source,
        os_user=identity.os_user,
        client_name=None,
        client_version=None,
        session_id=uuid.uuid4().hex,
    )
    gates: list[Gate] = []  # the access tools describe the gate built below, from a policy checked against them
    try:
        specs = server_tools(settings, cluster.kube, lambda: gates[0], cluster.describe)
        policy = load_policy(settings, tool_verbs(specs), tool_bounds(specs))
        audit = open_audit_log(settings)
    except BaseException:
        cluster.close()
        raise
    gate = Gate(policy=policy, audit=audit, caller=caller, read_only=settings.read_only,
                disable_destructive=settings.disable_destructive)
    if settings.audit_db is not None:  # replicas share one audit chain, and so one budget per principal
        from opsgate.audit.pgbuckets import PgBucketStore
        from opsgate.policies.ratelimit import SharedRateLimiter

        store = PgBucketStore(settings.audit_db.get_secret_value())
        gate.limiter, gate.read_limiter = SharedRateLimiter(store, "write"), SharedRateLimiter(store, "read")
    gates.append(gate)
    gate.register(specs)
    return gate, cluster


def roles_line(gate: Gate) -> str:
    """The roles the policy gives this principal, with where: ``role:operator in team-*``."""
    principal = gate.caller.principal
    links = [r.fields for r in gate.policy.rules if r.ptype == "g"]
    direct = [f"{role} in {where}" for member, role, where in links if member == principal]
    everyone = [f"{role} in {where} (everyone)" for member, role, where in links if member == "role:everyone"]
    parts = direct + everyone
    return ", ".join(parts) or "none: the policy grants this principal nothing"


def connect_lines(principal: str, settings: Settings) -> list[str]:
    """The banner's client snippet: what ``opsgate config claude`` prints for this server's own settings,
    with the command line that prints it (the README shows the same command and snippet)."""
    from .clientconfig import client_config

    entry = client_config("claude", principal=principal, policy=settings.policy, audit_log=settings.audit_log)
    server = entry["mcpServers"]["opsgate"]
    flags = server["args"][server["args"].index("serve") + 1:]  # the same options, made absolute
    snippet = json.dumps(server, ensure_ascii=False)
    return [
        f"Connect a client: `opsgate config claude {shlex.join(flags)}` (or vscode, cursor) prints this",
        "  for its mcpServers config, and says where the file is:",
        f'  "opsgate": {snippet}',
    ]


def banner(gate: Gate, cluster: Cluster, settings: Settings) -> str:
    """For a person at a terminal: what this is and how to use it; an IDE never sees it."""
    return "\n".join(
        [
            f"opsgate {__version__}: an MCP server speaking JSON-RPC on stdin/stdout; it waits for an MCP client.",
            f"  principal  {gate.caller.principal} ({gate.caller.principal_source})",
            f"  roles      {roles_line(gate)}",
            f"  policy     {', '.join(str(s) for s in gate.policy.sources)} (sha256 {gate.policy.hash[:12]})",
            f"  audit log  {sink_location(gate.audit)}",
            f"  cluster    {describe_cluster(cluster)}",
            f"  tools      {', '.join(t.name for t in gate.list_tools(gate.caller.principal))}",
            *connect_lines(gate.caller.principal, settings),
            "To see it work instead: opsgate demo.  Ctrl-C to quit.",
        ]
    )


def start_telemetry(settings: Settings) -> None:
    """OpenTelemetry on when ``OTEL_*`` or ``--metrics-address`` asks for it; asked for and impossible stops the
    server (the extra missing, an unknown exporter, a port taken). Logs what, never the OTLP headers."""
    try:
        on = telemetry.setup(settings.metrics_address)
    except telemetry.TelemetryUnavailable as exc:
        raise StartupError(str(exc)) from exc
    if on:
        traces, metrics = telemetry.wanted(os.environ, settings.metrics_address)
        log.info("telemetry", traces=traces, metrics=metrics, metrics_address=telemetry.metrics_address())


def http_listener(settings: Settings) -> Any:
    """``--http``: its settings checked and its address bound (server/http.py), or None over stdio."""
    if settings.http is None and settings.oauth_issuer is None and settings.oauth_resource is None:
        return None
    from .http import HttpSetupError, listen

    try:
        return listen(settings)
    except HttpSetupError as exc:
        raise StartupError(str(exc)) from exc


def impersonation(settings: Settings) -> Impersonation | None:
    """Whether cluster requests carry the caller as Impersonate-User/-Group: ``auto`` is on with OAuth, where
    the caller is a person the cluster knows; the token's group names, in the cluster's prefix."""
    on = settings.impersonate == "on" or (settings.impersonate == "auto" and settings.oauth_issuer is not None)
    return Impersonation(settings.impersonate_group_prefix, settings.oauth_group_prefix) if on else None


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    start_telemetry(settings)
    listener = http_listener(settings)
    try:
        gate, cluster = build_gate(settings)
    except BaseException:
        if listener is not None:
            listener.sock.close()
        raise
    cluster.kube.impersonation = impersonation(settings)
    if cluster.is_sandbox:
        log.warning("sandbox_cluster",
                    message="no kubeconfig found: the Kubernetes tools use the built-in sandbox cluster, "
                    "in memory, not a real cluster (started on first use)")
    from .app import build_server  # the SDK import is the slow part of start-up

    server = build_server(gate, version=__version__)
    # From here on a stop record follows the start record. Until the event loop listens, Ctrl-C or SIGTERM
    # is noted (never raised into the middle of an audit write) and acted on as soon as it does.
    requested: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: requested.append(number))
    start = server_record(
        "start", gate.caller, version=__version__, pid=os.getpid(),
        policy_hash=gate.policy.hash, read_only=settings.read_only, tools=gate.tool_names,
        checkpoints=gate.audit.checkpoint_key,  # tells verify this log's checkpoints must exist
    )
    try:
        gate.audit.append(start)
    except AuditWriteError as exc:
        where = sink_location(gate.audit)
        raise StartupError(f"audit log {where} cannot be written ({exc}); refusing to serve") from exc
    if sys.stdin.isatty() and listener is None:
        print(banner(gate, cluster, settings), file=sys.stderr, flush=True)
    if listener is not None and sys.stderr.isatty():  # for a person; a pod's stderr stays JSON lines
        print(f"opsgate {__version__}: MCP over streamable HTTP at {listener.url}"
              + (f", OAuth tokens from {settings.oauth_issuer}" if settings.oauth_issuer else
                 " (loopback, no OAuth: every request acts as the server's own principal)"),
              file=sys.stderr, flush=True)
    log.info("serving", transport="stdio" if listener is None else "http", principal=gate.caller.principal,
             url=None if listener is None else listener.url,
             audit_log=sink_location(gate.audit),
             policy_hash=gate.policy.hash, tools=len(gate.list_tools(gate.caller.principal)),
             tools_total=len(gate.tool_names))

    def rejected(facts: dict[str, Any]) -> None:
        """A stdin line the gate never sees (too long, not a tool call): recorded here instead."""
        try:
            gate.audit.append(server_record("input_rejected", gate.caller, **facts))
        except AuditWriteError as exc:
            log.error("audit_write_failed", stage="input_rejected", error=str(exc))
        log.warning("input_rejected", **facts)

    async def token_refused(facts: dict[str, Any]) -> None:
        """A bearer token the HTTP server refused: the rule and what it claimed (kid, iss), never the token."""
        nobody = replace(gate.caller, principal="-", principal_source="oauth", session_id=gate.caller.session_id)
        try:
            await anyio.to_thread.run_sync(gate.audit.append, server_record("token_refused", nobody, **facts))
        except AuditWriteError as exc:
            log.error("audit_write_failed", stage="token_refused", error=str(exc))
        log.warning("token_refused", **{k: v for k, v in facts.items() if k in ("rule", "kid", "path")})

    def write_stop(**details: Any) -> None:
        """The stop record, then the last checkpoint (AuditLog.close)."""
        try:
            gate.audit.append(server_record("stop", gate.caller, pid=os.getpid(), **details))
        except AuditWriteError as exc:
            log.error("audit_write_failed", stage="stop", error=str(exc))
        gate.audit.close()

    def stop_now() -> None:
        """Calls still running after the grace (a cluster request waiting out its timeout) are not waited for:
        their threads cannot be interrupted, so the process ends without them, and the stop record says so."""
        in_flight = gate.calls_in_flight
        closed = gate.close_open_calls()  # each cut-off call's outcome says the stop cancelled it
        log.warning("stopping_now", calls_in_flight=in_flight, outcomes_written=closed,
                    message="calls still running are cut off; their outcome records say so")
        write_stop(forced=True, calls_in_flight=in_flight)
        log.info("stopped")
        os._exit(0)

    async def run() -> None:
        from mcp.server.stdio import stdio_server

        # Installed around everything, so a second signal while the server unwinds is caught too.
        with _stop_signals() as signals:
            async with anyio.create_task_group() as outer:
                serving = anyio.CancelScope()
                if signals is not None:
                    outer.start_soon(_stop_on_signal, signals, serving, stop_now)
                if requested:
                    log.info("stopping", signal=signal.Signals(requested[0]).name)
                    serving.cancel()
                with serving:
                    async with anyio.create_task_group() as tasks:
                        if settings.policy_reload_seconds > 0:
                            tasks.start_soon(watch_policy, gate, settings.policy, gate.verbs,
                                             settings.policy_reload_seconds)
                        if listener is not None:
                            from .http import ClusterProbe, serve_http

                            await serve_http(server, gate, listener, on_refused=token_refused,
                                             cluster_ok=ClusterProbe(cluster.kube, cluster.is_sandbox))
                        else:
                            stdin = ScreenedStdin(on_rejected=rejected)
                            with claim_stdout() as stdout:  # answers written on the loop, not via two thread hops
                                async with stdio_server(stdin=stdin, stdout=stdout) as (  # type: ignore[arg-type]
                                    read_stream, write_stream
                                ):
                                    await server.run(read_stream, write_stream, server.create_initialization_options())
                        tasks.cancel_scope.cancel()
                outer.cancel_scope.cancel()

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        # Nothing cuts the stop record short: a second Ctrl-C or SIGTERM waits the few milliseconds it takes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write_stop()
        cluster.close()
        telemetry.shutdown()  # the last spans and metrics are exported before the process ends
        log.info("stopped")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_signals() -> AbstractContextManager[Any]:
    """Ctrl-C and SIGTERM delivered to the event loop (POSIX); elsewhere Ctrl-C is a KeyboardInterrupt."""
    if sys.platform == "win32":
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return nullcontext(None)
    return anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)


async def _stop_on_signal(signals: AsyncIterator[int], serving: anyio.CancelScope,
                          stop_now: Callable[[], None]) -> None:
    """The first signal cancels serving; serve() then writes the stop record and the last checkpoint. Calls
    that outlast ``STOP_GRACE_S`` (or a second signal) get ``stop_now``. Cancelled itself once serving ends."""
    async for signum in signals:
        log.info("stopping", signal=signal.Signals(signum).name)
        serving.cancel()
        with anyio.move_on_after(STOP_GRACE_S):
            await signals.__anext__()
        stop_now()
