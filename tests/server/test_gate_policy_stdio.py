"""The policy's promises as an assistant meets them: bounds, rate limits, confirmations, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from tests.harness import err, serve, server_env, write_policy

pytestmark = pytest.mark.anyio

BASE = ["g, role:everyone, role:viewer, *", "p, role:viewer, *, *, read, allow",
        "g, alice, role:operator, *", "p, role:operator, *, *, write, allow"]
BATCH = [[5.1, 3.5, 1.4, 0.2]]


def policy_with_bounds(tmp_path: Path, bounds: str, rules: list[str] = BASE) -> Path:
    folder = write_policy(tmp_path / "policy", rules)
    (folder / "bounds.toml").write_text(bounds)
    return folder


def error_of(result: Any) -> dict[str, Any]:
    return err(result)


async def test_model_and_input_size_bounds(tmp_path: Path) -> None:
    folder = policy_with_bounds(tmp_path, '[subject."role:viewer"]\nmodels = ["iris"]\nmax_input_elements = 8\n')
    async with serve(tmp_path, "--principal", "bob", "--policy", str(folder)) as s:
        assert not (await s.call("infer", {"model": "iris", "inputs": {"features": BATCH * 2}})).is_error
        too_big = error_of(await s.call("infer", {"model": "iris", "inputs": {"features": BATCH * 3}}))
        assert too_big["code"] == "denied" and "max_input_elements 8" in too_big["message"]
        other = error_of(await s.call("infer", {"model": "iris-v2", "inputs": {"features": BATCH}}))
        assert "iris-v2" in other["message"] and other["decision"]["bound"]


async def test_rate_limit_refuses_past_the_budget_and_says_when_to_retry(tmp_path: Path) -> None:
    folder = policy_with_bounds(tmp_path, '[subject."role:operator"]\nrate_limit_per_minute = 3\n')
    args = {"name": "web", "namespace": "default", "replicas": 1}
    async with serve(tmp_path, "--principal", "alice", "--policy", str(folder), env={"HOME": str(tmp_path)}) as s:
        codes = []
        for _ in range(4):
            result = await s.call("scale", args)  # not found in the sandbox: the call ran, and spent a token
            codes.append(error_of(result)["code"])
        assert codes[:3] == ["api_error"] * 3
        assert codes[3] == "denied"
        refusal = error_of(await s.call("scale", args))
        assert "rate limit" in refusal["message"] and "retry" in refusal["message"]
        assert (await s.call("list_workloads", {"namespace": "default"})).is_error is False  # reads are not limited


async def test_read_rate_limit_stops_a_looping_reader_and_says_when_to_retry(tmp_path: Path) -> None:
    folder = policy_with_bounds(tmp_path, '[subject."role:viewer"]\nread_rate_limit_per_minute = 2\n')
    async with serve(tmp_path, "--principal", "bob", "--policy", str(folder), env={"HOME": str(tmp_path)}) as s:
        for _ in range(2):
            assert (await s.call("list_workloads", {"namespace": "default"})).is_error is False
            assert (await s.call("whoami", {})).is_error is False  # local reads are not counted
        refusal = error_of(await s.call("rollout_status", {"namespace": "default", "name": "web"}))
        assert refusal["code"] == "denied" and refusal["errors"][0]["rule"] == "rate-limit"
        assert "read_rate_limit_per_minute of role:viewer" in refusal["message"]
        assert re.search(r"retry in (2\d|30) s\b", refusal["message"])  # a token every 30 s, less time gone
        assert (await s.call("list_models", {})).is_error is False


async def test_max_replicas_change_reads_the_current_count(tmp_path: Path) -> None:
    folder = policy_with_bounds(tmp_path, '[subject."role:operator"]\nmax_replicas_change = 2\n')
    async with serve(tmp_path, "--principal", "alice", "--policy", str(folder), env={"HOME": str(tmp_path)}) as s:
        created = await s.call("deploy", {"name": "web", "namespace": "default", "image": "nginx:1", "replicas": 2})
        assert not created.is_error, created.structured_content
        assert not (await s.call("scale", {"name": "web", "namespace": "default", "replicas": 4})).is_error
        jump = error_of(await s.call("scale", {"name": "web", "namespace": "default", "replicas": 9}))
        assert "from 4 to 9" in jump["message"] and "max_replicas_change 2" in jump["message"]


def _confirming(answer: str) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert "scale" in params.message
        if answer == "accept":
            return types.ElicitResult(action="accept", content={"confirm": True})
        return types.ElicitResult(action=answer)  # type: ignore[arg-type]

    return callback


@pytest.mark.parametrize(("answer", "allowed"), [("accept", True), ("decline", False), ("cancel", False),
                                                 (None, False)])
async def test_confirm_asks_the_user_and_never_allows_by_default(
    tmp_path: Path, answer: str | None, allowed: bool
) -> None:
    folder = policy_with_bounds(tmp_path, '[subject."role:operator"]\nconfirm = ["scale"]\n')
    elicitation = _confirming(answer) if answer else None
    async with serve(tmp_path, "--principal", "alice", "--policy", str(folder), env={"HOME": str(tmp_path)},
                     elicitation=elicitation) as s:
        await s.call("deploy", {"name": "web", "namespace": "default", "image": "nginx:1", "replicas": 1})
        result = await s.call("scale", {"name": "web", "namespace": "default", "replicas": 2})
        assert result.is_error is (not allowed), result.structured_content
        if not allowed:
            error = error_of(result)
            assert error["code"] == "denied"
            assert ("cannot ask" in error["message"]) is (answer is None)
    decision = [r for r in s.records() if r.get("tool") == "scale" and r["stage"] == "decision"][-1]
    assert decision["decision"]["confirmation"] == (answer or "unsupported").replace("accept", "accepted")


def _opsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsgate.server", *args], capture_output=True, text=True,
                          timeout=60, env=server_env())


def test_policy_check_and_test_commands(tmp_path: Path) -> None:
    assert _opsgate("policy", "check").returncode == 0
    rules = ["p, role:viewer, *, *, read, allow", "p, role:x, *, dploy, read, allow"]
    broken = write_policy(tmp_path / "broken", rules)
    proc = _opsgate("policy", "check", str(broken))
    assert proc.returncode == 1 and "policy.csv:2" in proc.stdout and "deploy" in proc.stdout
    shipped = _opsgate("policy", "test", str(Path(__file__).resolve().parents[2] / "policies" / "roles.table"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    table = tmp_path / "wrong.table"
    table.write_text("nobody team-a deploy -> allow\n")
    wrong = _opsgate("policy", "test", str(table))
    assert wrong.returncode == 1 and "deploy" in wrong.stdout


async def test_a_url_override_is_refused_unless_the_policy_opts_in(tmp_path: Path) -> None:
    inputs = {"features": BATCH}
    call = {"name": "iris", "namespace": "default", "inputs": inputs, "url": "http://169.254.169.254"}
    folder = policy_with_bounds(tmp_path, '[subject."role:operator"]\nmax_replicas = 10\n')
    async with serve(tmp_path, "--principal", "bob", "--policy", str(folder), env={"HOME": str(tmp_path)}) as s:
        refused = error_of(await s.call("kserve_infer", call))
        assert refused["code"] == "denied" and "allow_url_override" in refused["message"]
    opted = policy_with_bounds(tmp_path / "opted", '[subject."role:viewer"]\nallow_url_override = true\n')
    async with serve(tmp_path / "opted", "--principal", "bob", "--policy", str(opted),
                     env={"HOME": str(tmp_path)}) as s:
        reached = error_of(await s.call("kserve_infer", {**call, "url": "http://127.0.0.1:9"}))
        assert reached["code"] != "denied", reached  # allowed: it fails later, at the closed port
