"""Issue 15, what decision records say about a call: the namespace and object of a rejected call,
and the client's self-reported name kept short and free of secrets.

Each test drives a real ``opsgate serve`` over stdio with the SDK client and reads the audit log it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from subprocess import run

import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from opsgate.server.gate import readable_target
from tests.harness import err, serve, server_env, shipped_policy

pytestmark = pytest.mark.anyio

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


async def test_a_call_refused_for_bad_arguments_is_filed_under_its_namespace(tmp_path: Path) -> None:
    """Issue 15 item 5: a call refused for bad arguments was recorded with namespace ``-`` even when it named
    one, so ``audit query --namespace team-a`` missed it. Now the namespace and object it named are kept."""
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, *")
    async with serve(tmp_path, "--principal", "alice", "--policy", str(policy)) as served:
        bad = await served.call("scale", {"namespace": "team-a", "name": "web", "replicas": "many"})
        assert err(bad)["code"] == "invalid_arguments"
        garbage = await served.call("scale", {"namespace": "Not A Namespace!", "name": "web", "replicas": "x"})
        assert err(garbage)["code"] == "invalid_arguments"
    decisions = [r for r in served.records() if r.get("stage") == "decision" and r.get("tool") == "scale"]
    assert decisions[0]["namespace"] == "team-a"
    assert decisions[0]["object"] == {"kind": "Deployment", "namespace": "team-a", "name": "web"}
    assert decisions[1]["namespace"] == "-", "a value that is no namespace is not filed as one"

    found = run([sys.executable, "-m", "opsgate.server", "audit", "query", str(served.audit_log),
                 "--namespace", "team-a", "--json"], capture_output=True, text=True, env=server_env(), check=False)
    assert found.returncode == 0, found.stderr
    assert decisions[0]["call_id"] in found.stdout


def test_readable_target_keeps_only_names_that_read_as_names() -> None:
    """Issue 15 item 5, the pure part: kind from the arguments when it is one of ours, names only when valid."""
    assert readable_target({"namespace": "prod", "name": "m", "kind": "InferenceService"}, "Deployment") == (
        "prod", {"kind": "InferenceService", "namespace": "prod", "name": "m"})
    assert readable_target({"namespace": "prod", "name": "Bad Name"}, "Deployment") == (
        "prod", {"kind": "Deployment", "namespace": "prod"})
    assert readable_target({"namespace": 7}, None) == ("-", None)
    assert readable_target(["not", "a", "mapping"], "Deployment") == ("-", None)


async def test_client_info_is_capped_and_redacted_in_every_record(tmp_path: Path) -> None:
    """Issue 15 item 6: ``clientInfo`` was copied uncapped and unredacted into every decision record (a 1 MB
    client name made every record 1 MB). It is now redacted and capped, once per session."""
    audit_log = tmp_path / "audit.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "opsgate.server", "serve", "--audit-log", str(audit_log)],
        env=server_env({"HOME": str(home)}),
    )
    huge_name = f"client token={AWS_KEY} " + "x" * 1_000_000
    info = types.Implementation(name=huge_name, version=f"1.0 password=hunter2-{AWS_KEY}")
    with (tmp_path / "stderr").open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, client_info=info) as session,
        ):
            await session.initialize()
            for _ in range(3):
                await session.call_tool("whoami", {})
    raw = audit_log.read_text()
    assert AWS_KEY not in raw and "hunter2" not in raw
    assert AWS_KEY not in (tmp_path / "stderr").read_text()
    decisions = [r for r in records(audit_log) if r.get("stage") == "decision"]
    assert len(decisions) == 3
    for record in decisions:
        client = record["client"]
        assert isinstance(client, dict)
        assert len(client["name"]) < 300 and len(client["version"]) < 300
    assert max(len(line) for line in raw.splitlines()) < 8192


async def test_a_decision_record_names_the_grant_that_gave_the_role(tmp_path: Path) -> None:
    """Issue 15 item 5: decision records named only the ``p`` rule (``role:operator ... allow``); an auditor
    could not tell which ``g`` line made alice an operator there. They now name the grant chain."""
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, team-*")
    async with serve(tmp_path, "--principal", "alice", "--policy", str(policy)) as served:
        await served.call("scale", {"namespace": "team-a", "name": "web", "replicas": 2, "dry_run": True})
        await served.call("whoami", {})
    decisions = [r for r in served.records() if r.get("stage") == "decision"]
    scale, whoami = decisions[0]["decision"], decisions[1]["decision"]
    assert isinstance(scale, dict) and isinstance(whoami, dict)
    assert scale["rule"] == "p, role:operator, *, *, write, allow"
    assert any("g, alice, role:operator, team-*" in link for link in scale["via"]), scale
    assert "via" not in whoami or all("alice" not in link for link in whoami["via"]), whoami
