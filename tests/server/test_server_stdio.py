"""The server as an IDE meets it: a subprocess spoken to by the SDK's stdio client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opsgate.audit import verify_log
from opsgate.tools.inference import MODELS_DIR_DEFAULT
from tests.harness import err, serve, server_env, write_policy

pytestmark = pytest.mark.anyio

READ_TOOLS = {"whoami", "explain_access", "list_models", "infer", "list_workloads", "rollout_status", "rollout_history",
              "model_status", "kserve_infer", "drift"}
WRITE_TOOLS = {"deploy", "scale", "rollback", "deploy_model"}
EXPECTED_TOOLS = READ_TOOLS | WRITE_TOOLS
ADMIN_POLICY = ["g, root, role:admin, *"]
BATCH = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def structured_error(result: Any) -> dict[str, Any]:
    return err(result)


async def test_initialize_and_list_tools(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy", [*ADMIN_POLICY, "p, role:admin, *, *, *, allow"])
    async with serve(tmp_path, "--principal", "root", "--policy", str(policy)) as s:
        tools = (await s.session.list_tools()).tools
        assert {t.name for t in tools} == EXPECTED_TOOLS
        for tool in tools:
            assert tool.description, tool.name
            assert tool.input_schema["type"] == "object", tool.name
            assert tool.output_schema is None, tool.name  # results carry structuredContent without one
            # Only hints that differ from the spec's defaults are sent (tests/server/test_schemas.py checks them all).
            assert bool(tool.annotations and tool.annotations.read_only_hint) is (tool.name in READ_TOOLS), tool.name
        infer = next(t for t in tools if t.name == "infer")
        assert infer.annotations and infer.annotations.read_only_hint is True
        assert infer.annotations.open_world_hint is False


async def test_whoami_names_the_principal_and_its_grants(tmp_path: Path) -> None:
    async with serve(tmp_path, "--principal", "alice") as s:
        result = await s.call("whoami")
        assert not result.is_error
        who = result.structured_content
        assert who["principal"] == "alice" and who["principal_source"] == "config"
        assert who["client"].startswith("mcp/")
        assert set(who["tools"]) == EXPECTED_TOOLS  # what the server has; tools/list shows what alice may call
        # The shipped default policy: everyone is a viewer, and viewers only read.
        assert who["grants"]
        assert all(g["verb"] == "read" for g in who["grants"] if g["effect"] == "allow")


@pytest.mark.parametrize(
    ("flags", "policy", "expected"),
    [
        ((), [], READ_TOOLS),  # the shipped policy: everyone is a viewer
        (("--principal", "alice"), ["g, alice, role:operator, team-*"], EXPECTED_TOOLS),
        (("--principal", "root", "--read-only"), ADMIN_POLICY, READ_TOOLS),
        (("--principal", "root", "--disable-destructive"), ADMIN_POLICY, READ_TOOLS),
        (("--principal", "carol"), ["p, carol, -, infer, read, allow"], {"infer"}),
    ],
)
async def test_tools_list_shows_what_the_principal_may_call(
    tmp_path: Path, flags: tuple[str, ...], policy: list[str], expected: set[str]
) -> None:
    from importlib.resources import files

    shipped = [line for line in files("opsgate.policies").joinpath("policy.csv").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    rules = policy if policy and policy[0].startswith("p, carol") else [*shipped, *policy]
    folder = write_policy(tmp_path / "policy", rules)
    async with serve(tmp_path, "--policy", str(folder), *flags) as s:
        assert {t.name for t in (await s.session.list_tools()).tools} == expected


async def test_unnamed_principal_is_the_os_user_with_read_only_grants(tmp_path: Path) -> None:
    async with serve(tmp_path) as s:
        who = (await s.call("whoami")).structured_content
        assert who["principal_source"] == "os-user"
        assert who["principal"] == who["os_user"]
        allowed_verbs = {g["verb"] for g in who["grants"] if g["effect"] == "allow"}
        assert allowed_verbs == {"read"}


async def test_no_kubeconfig_means_the_sandbox_and_it_says_so(tmp_path: Path) -> None:
    async with serve(tmp_path, "--principal", "alice", env={"HOME": str(tmp_path)}) as s:
        who = (await s.call("whoami")).structured_content
        assert who["cluster"]["sandbox"] is True and who["cluster"]["server"].startswith("https://127.0.0.1:")
        listed = await s.call("list_workloads", {"namespace": "default"})
        assert not listed.is_error and listed.structured_content["workloads"] == []
    warnings = [json.loads(line) for line in s.stderr_path.read_text().splitlines()]
    assert any(w.get("event") == "sandbox_cluster" and "not a real cluster" in w["message"] for w in warnings)


async def test_infer_matches_a_direct_onnxruntime_run(tmp_path: Path) -> None:
    import onnxruntime as ort

    direct = ort.InferenceSession(str(MODELS_DIR_DEFAULT / "iris.onnx"), providers=["CPUExecutionProvider"])
    expected = direct.run(None, {"features": np.asarray(BATCH, dtype=np.float32)})
    names = [o.name for o in direct.get_outputs()]
    async with serve(tmp_path, "--principal", "alice") as s:
        result = await s.call("infer", {"model": "iris", "inputs": {"features": BATCH}})
        assert not result.is_error, result
        outputs = {o["name"]: o for o in result.structured_content["outputs"]}
        for name, want in zip(names, expected, strict=True):
            np.testing.assert_allclose(np.asarray(outputs[name]["data"]), want, rtol=1e-6)
            assert outputs[name]["shape"] == list(want.shape)


async def test_list_models_shows_the_shipped_model(tmp_path: Path) -> None:
    async with serve(tmp_path) as s:
        models = (await s.call("list_models")).structured_content["models"]
        iris = next(m for m in models if m["name"] == "iris")
        assert iris["inputs"][0]["name"] == "features"
        assert iris["inputs"][0]["shape"][1] == 4


async def test_denied_call_names_the_rule_and_is_audited(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "policy",
        [
            "g, role:everyone, role:viewer, *",
            "p, role:viewer, *, *, read, allow",
            "p, bob, *, infer, read, deny",
        ],
    )
    async with serve(tmp_path, "--principal", "bob", "--policy", str(policy)) as s:
        error = structured_error(await s.call("infer", {"model": "iris", "inputs": {"features": BATCH}}))
        assert error["code"] == "denied"
        assert error["decision"]["rule"] == "p, bob, *, infer, read, deny"
        assert error["decision"]["source"].endswith("policy.csv:3")
        explained = (await s.call("explain_access", {"tool": "infer"})).structured_content
        assert explained["allowed"] is False and explained["source"].endswith("policy.csv:3")
        assert not (await s.call("list_models")).is_error  # other reads still allowed
    records = [r for r in s.records() if r.get("tool") == "infer" and r["stage"] == "decision"]
    assert len(records) == 1
    assert records[0]["decision"]["effect"] == "deny"
    assert records[0]["decision"]["rule"] == "p, bob, *, infer, read, deny"
    assert records[0]["call_id"] == error["call_id"]
    assert not any(r["stage"] == "outcome" and r["tool"] == "infer" for r in s.records())


BAD_CALLS: list[tuple[str, dict[str, Any], str, str]] = [
    # tool, arguments, field the error names, rule
    ("whoami", {"verbose": True}, "verbose", "extra"),
    ("explain_access", {}, "tool", "missing"),
    ("explain_access", {"tool": 7}, "tool", "type"),
    ("explain_access", {"tool": "nope"}, "tool", "unknown-tool"),
    ("explain_access", {"tool": "infer", "namespace": "Bad_NS"}, "namespace", "format"),
    ("list_models", {"folder": "/etc"}, "folder", "extra"),
    ("infer", {"inputs": {"features": BATCH}}, "model", "missing"),
    ("infer", {"model": "iris", "inputs": "not a dict"}, "inputs", "type"),
    ("infer", {"model": "../../etc/passwd", "inputs": {}}, "model", "format"),
    ("infer", {"model": "no-such-model", "inputs": {"features": BATCH}}, "model", "unknown-model"),
    ("infer", {"model": "iris", "inputs": {"features": [[1.0, 2.0, 3.0]]}}, "inputs.features", "shape"),
    ("infer", {"model": "iris", "inputs": {"features": [[0.5] * 4] * 200_000}}, "inputs.features", "size"),
    ("infer", {"model": "iris", "inputs": {"bogus": [[1, 2, 3, 4]]}}, "inputs.bogus", "unknown-input"),
    ("nosuchtool", {}, "name", "unknown-tool"),
]


async def test_bad_input_gets_a_structured_error_is_audited_and_server_goes_on(tmp_path: Path) -> None:
    call_ids = []
    async with serve(tmp_path, "--principal", "alice") as s:
        for tool, arguments, field, rule in BAD_CALLS:
            error = structured_error(await s.call(tool, arguments))
            call_ids.append(error["call_id"])
            fields = [e["field"] for e in error["errors"]]
            rules = [e["rule"] for e in error["errors"]]
            assert field in fields and rule in rules, (tool, arguments, error)
            assert error["message"]
            # the server still answers
            assert not (await s.call("whoami")).is_error
    by_call = {r["call_id"]: r for r in s.records() if r.get("call_id")}
    for call_id, (tool, *_) in zip(call_ids, BAD_CALLS, strict=True):
        assert by_call[call_id]["tool"] == tool
    assert verify_log(s.audit_log).ok


async def test_every_listed_tool_goes_through_the_gate(tmp_path: Path) -> None:
    """Walk tools/list: every tool, called, leaves a decision record; none bypasses the gate."""
    policy = write_policy(tmp_path / "policy", [*ADMIN_POLICY, "p, role:admin, *, *, *, allow"])
    async with serve(tmp_path, "--principal", "root", "--policy", str(policy)) as s:
        tools = [t.name for t in (await s.session.list_tools()).tools]
        assert set(tools) == EXPECTED_TOOLS
        call_ids = {}
        for name in tools:
            error = structured_error(await s.call(name, {"__probe__": 1}))
            call_ids[name] = error["call_id"]
    decisions = {r["call_id"]: r for r in s.records() if r["stage"] == "decision"}
    for name, call_id in call_ids.items():
        assert decisions[call_id]["tool"] == name
        assert decisions[call_id]["decision"]["effect"] == "invalid"


async def test_audit_records_hold_who_what_and_how_it_ended(tmp_path: Path) -> None:
    async with serve(tmp_path, "--principal", "alice") as s:
        ok = await s.call("infer", {"model": "iris", "inputs": {"features": BATCH[:1]}})
        assert not ok.is_error
    records = s.records()
    assert records[0]["stage"] == "start"
    decision, outcome = (r for r in records if r.get("tool") == "infer")
    assert decision["stage"] == "decision" and outcome["stage"] == "outcome"
    assert decision["call_id"] == outcome["call_id"]
    assert decision["principal"] == "alice" and decision["client"]["name"] == "mcp"
    assert decision["decision"]["effect"] == "allow" and decision["decision"]["rule"]
    assert decision["decision"]["policy_hash"]
    assert decision["arguments"]["model"] == "iris"
    assert outcome["outcome"]["status"] == "ok" and outcome["duration_ms"] >= 0
    assert records[-1]["stage"] == "stop"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    proc = subprocess.run([sys.executable, "-m", "opsgate.server", "audit", "verify", str(s.audit_log)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_secrets_in_arguments_never_reach_the_log_or_result(tmp_path: Path) -> None:
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    async with serve(tmp_path, "--principal", "alice") as s:
        result = await s.call("infer", {"model": "iris", "inputs": {"features": BATCH}, "api_token": secret})
        assert err(result)["errors"][0]["field"] == "api_token"
        assert secret not in json.dumps(result.model_dump(mode="json"))
    assert secret not in s.audit_log.read_text()
    assert secret not in s.stderr_path.read_text()


async def test_unwritable_audit_log_refuses_the_call(tmp_path: Path) -> None:
    """Fail closed: once the log cannot grow, no call runs (RLIMIT_FSIZE makes write fail with EFBIG)."""
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    audit_log = tmp_path / "audit.jsonl"
    launcher = (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'opsgate.server', 'serve', "
        f"'--principal', 'alice', '--audit-log', {str(audit_log)!r}])"
    )
    params = StdioServerParameters(command=sys.executable, args=["-c", launcher], env=server_env())
    with open(os.devnull, "w") as devnull:
        async with stdio_client(params, errlog=devnull) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            codes = []
            for _ in range(6):
                result = await session.call_tool("infer", {"model": "iris", "inputs": {"features": BATCH}})
                codes.append(structured_error(result)["code"] if result.is_error else "ok")
            assert codes[0] == "ok"
            assert codes[-1] == "audit_unavailable", codes
    # The write that hit the limit may have left a torn line: the next start seals it with a
    # recovery record, and the chain verifies.
    from opsgate.audit import AuditLog

    AuditLog(audit_log).close()
    report = verify_log(audit_log)
    assert report.ok, report


def test_stdout_carries_only_json_rpc(tmp_path: Path) -> None:
    """Raw JSON-RPC over the pipes: every stdout line is a JSON-RPC message, stderr is JSON logs."""
    messages: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
         "params": {"name": "infer", "arguments": {"model": "iris", "inputs": {"features": BATCH}}}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "infer", "arguments": {"x": 1}}},
    ]
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "a.jsonl")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=server_env(),
        )
        assert proc.stdin and proc.stdout
        lines = []
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" in message:
                lines.append(proc.stdout.readline())
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
    assert rest == ""
    for line in lines:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and "id" in message
    assert [json.loads(line)["id"] for line in lines] == [1, 2, 3, 4, 5]
    for line in stderr_path.read_text().splitlines():
        assert isinstance(json.loads(line), dict), line


async def test_own_audit_records_as_a_resource(tmp_path: Path) -> None:
    async with serve(tmp_path, "--principal", "alice") as s:
        await s.call("whoami")
        resources = (await s.session.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["opsgate://audit/mine"]
        read = await s.session.read_resource("opsgate://audit/mine")
        body = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert body["principal"] == "alice"
        assert [r["tool"] for r in body["records"]][:2] == ["whoami", "whoami"]
        assert all(r["principal"] == "alice" for r in body["records"])
        # the read itself went through the gate
        assert not any(t.name == "audit_log" for t in (await s.session.list_tools()).tools)
        hidden = await s.call("audit_log", {})
        assert hidden.is_error and structured_error(hidden)["errors"][0]["rule"] == "unknown-tool"
    assert any(r.get("tool") == "audit_log" and r["stage"] == "decision" for r in s.records())


async def test_own_audit_records_refused_when_the_policy_says_so(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy", [
        "g, role:everyone, role:viewer, *", "p, role:viewer, *, *, read, allow", "p, bob, -, audit_log, read, deny",
    ])
    async with serve(tmp_path, "--principal", "bob", "--policy", str(policy)) as s:
        assert (await s.session.list_resources()).resources == []
        from mcp.shared.exceptions import MCPError

        with pytest.raises(MCPError):
            await s.session.read_resource("opsgate://audit/mine")
