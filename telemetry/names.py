"""The names of opsgate's metrics and span attributes: one place, so a dashboard and the code agree.

The OpenTelemetry semantic conventions' names where they have one (MCP: ``mcp.*``, ``gen_ai.*``;
HTTP clients: ``http.*``, ``server.address``, ``url.full``; ``error.type``), ``opsgate.*`` for ours.
Durations are in seconds and sizes in bytes, as the conventions ask.
"""

from __future__ import annotations

from typing import Final

# Counters
CALLS: Final = "opsgate.calls"  # tool calls, by gen_ai.tool.name, opsgate.decision, opsgate.outcome
POLICY_DECISIONS: Final = "opsgate.policy.decisions"  # by opsgate.decision and opsgate.denial (what refused)
POLICY_RELOADS: Final = "opsgate.policy.reloads"  # by opsgate.result (reloaded, failed)
POLICY_LINT_FAILURES: Final = "opsgate.policy.lint_failures"  # findings of a reload's lint, by severity
RATE_LIMIT_REFUSALS: Final = "opsgate.rate_limit.refusals"  # by gen_ai.tool.name, opsgate.verb
CONFIRMATIONS: Final = "opsgate.confirmations"  # asked, by gen_ai.tool.name and opsgate.answer
KUBE_REQUESTS: Final = "opsgate.kube.requests"  # Kubernetes API requests by http.request.method and status
INFERENCE_REQUESTS: Final = "opsgate.inference.requests"  # model-server requests by method and status

# Histograms
CALL_DURATION: Final = "mcp.server.operation.duration"  # s, a tools/call through the gate
AUDIT_APPEND_DURATION: Final = "opsgate.audit.append.duration"  # s, one append (records written + fsync)
AUDIT_FSYNC_DURATION: Final = "opsgate.audit.fsync.duration"  # s, each fsync of the log
HTTP_CLIENT_DURATION: Final = "http.client.request.duration"  # s, by opsgate.peer, method, status
INFERENCE_REQUEST_SIZE: Final = "opsgate.inference.request.size"  # By, the body sent to a model server
INFERENCE_RESPONSE_SIZE: Final = "opsgate.inference.response.size"  # By, the body it answered

HISTOGRAMS: Final = {
    CALL_DURATION: "s", AUDIT_APPEND_DURATION: "s", AUDIT_FSYNC_DURATION: "s", HTTP_CLIENT_DURATION: "s",
    INFERENCE_REQUEST_SIZE: "By", INFERENCE_RESPONSE_SIZE: "By",
}
COUNTERS: Final = (CALLS, POLICY_DECISIONS, POLICY_RELOADS, POLICY_LINT_FAILURES, RATE_LIMIT_REFUSALS,
                   CONFIRMATIONS, KUBE_REQUESTS, INFERENCE_REQUESTS)

# Span attributes of our own
PRINCIPAL: Final = "opsgate.principal"
DECISION: Final = "opsgate.decision"  # allow, deny, invalid
RULE: Final = "opsgate.rule"  # the deciding rule's file:line, or the bound
CALL_ID: Final = "opsgate.call_id"
AUDIT_SEQ: Final = "opsgate.audit.seq"  # the seq of the last record an append wrote
