"""Issue 15, the gate: outcomes that survive a cancel, confirmation questions that show what matters,
and a decision made again when the policy changes while the user is being asked.

Every test drives a real ``opsgate serve`` over stdio with the SDK client, on a sandbox cluster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from opsgate.sandbox import SandboxCluster
from tests.harness import Served, err, ok, serve, shipped_policy

pytestmark = pytest.mark.anyio

NS = "default"
IMAGE = "registry.example.com/web:1"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


@asynccontextmanager
async def operator(cluster: SandboxCluster, tmp_path: Path, *, bounds: str | None = None,
                   elicitation: Any = None, reload_seconds: float = 0) -> AsyncIterator[tuple[Served, Path]]:
    """alice, an operator on the shipped policy (or the given bounds), on the sandbox; and the policy folder."""
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, *")
    if bounds is not None:
        (policy / "bounds.toml").write_text(bounds)
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     "--policy-reload-seconds", str(reload_seconds), elicitation=elicitation) as served:
        yield served, policy


def accepting(questions: list[str], before: Any = None) -> Any:
    """An elicitation callback that keeps each question, runs ``before`` (if any), then says yes."""
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        questions.append(params.message)
        if before is not None:
            await before()
        return types.ElicitResult(action="accept", content={"confirm": True})

    return callback


async def test_a_cancelled_write_still_gets_its_outcome(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 3: a client's notifications/cancelled while another call is in flight must not cut the
    outcome append: the Deployment is created, so its outcome is written, cancelled or not."""
    cluster.inject_fault("GET", r"/deployments/held$", delay=2.5)  # keeps a second call in flight
    cluster.inject_fault("POST", r"/namespaces/default/deployments$", delay=1.0)  # the write the client gives up on
    try:
        async with operator(cluster, tmp_path) as (s, _):
            async with anyio.create_task_group() as tg:
                tg.start_soon(s.call, "rollout_status", {"name": "held", "namespace": NS})
                await anyio.sleep(0.2)
                with anyio.move_on_after(0.5) as waited:  # the SDK client sends notifications/cancelled
                    await s.call("deploy", {"name": "cancelled", "namespace": NS, "image": IMAGE})
                assert waited.cancelled_caught, "the deploy answered before the client gave up on it"
            with anyio.fail_after(10):
                while not any(r["stage"] == "outcome" and r["tool"] == "deploy" for r in s.records()):
                    await anyio.sleep(0.05)
            # the server goes on, and the Deployment the cancelled call created is there
            assert ok(await s.call("rollout_status", {"name": "cancelled", "namespace": NS}))["desired"] == 1
    finally:
        cluster.clear_faults()
    records = s.records()
    [decision] = [r for r in records if r["stage"] == "decision" and r["tool"] == "deploy"]
    [outcome] = [r for r in records if r["stage"] == "outcome" and r["call_id"] == decision["call_id"]]
    assert decision["decision"]["effect"] == "allow"
    assert outcome["outcome"]["status"] == "ok", outcome  # it ran to the end: the record says so


async def test_the_confirmation_question_puts_what_matters_first(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 14: the user sees tool, namespace, object, replicas, image and dry_run before anything
    else, however long the call, and a cut question says it was cut."""
    bounds = '[subject."role:operator"]\nmax_replicas = 10\nconfirm = ["deploy"]\n'
    questions: list[str] = []
    labels = {f"team.example.com/label-{i}": "x" * 40 for i in range(30)}  # about 2 KB before replicas
    async with operator(cluster, tmp_path, bounds=bounds, elicitation=accepting(questions)) as (s, _):
        ok(await s.call("deploy", {"name": "asked", "namespace": NS, "image": IMAGE, "labels": labels,
                                   "replicas": 7, "dry_run": True}))
    [question] = questions
    assert question.startswith(f'Allow deploy in {NS}: name="asked", replicas=7, image="{IMAGE}", dry_run=true?')
    assert question.endswith(" more characters not shown]") and "…[cut: " in question, question[-80:]
    assert len(question) <= 600


async def test_a_grant_revoked_while_the_user_is_asked_stops_the_call(
    cluster: SandboxCluster, tmp_path: Path
) -> None:
    """Issue 15 item 13: the policy is reloaded between the question and the user's yes, and now denies the
    call: it is decided again after the answer, refused, audited as such, and nothing changes."""
    bounds = '[subject."role:operator"]\nmax_replicas = 10\nconfirm = ["scale"]\n'
    questions: list[str] = []
    holder: dict[str, tuple[Served, Path]] = {}

    async def revoke() -> None:
        served, policy = holder["s"]
        with (policy / "policy.csv").open("a") as fh:
            fh.write("p, alice, *, scale, write, deny\n")
        with anyio.fail_after(10):  # the server notices the change before the user answers
            while not any(r["stage"] == "policy_reload" for r in served.records()):
                await anyio.sleep(0.05)

    async with operator(cluster, tmp_path, bounds=bounds, elicitation=accepting(questions, revoke),
                        reload_seconds=0.1) as (s, policy):
        holder["s"] = (s, policy)
        ok(await s.call("deploy", {"name": "revoked", "namespace": NS, "image": IMAGE, "replicas": 1}))
        error = err(await s.call("scale", {"name": "revoked", "namespace": NS, "replicas": 3}))
        assert error["code"] == "denied" and "policy changed while the user was being asked" in error["message"]
        assert "p, alice, *, scale, write, deny" in error["message"], error["message"]
        status = ok(await s.call("rollout_status", {"name": "revoked", "namespace": NS}))
        assert status["desired"] == 1, status
    assert len(questions) == 1
    decision = [r for r in s.records() if r["stage"] == "decision" and r["tool"] == "scale"][-1]
    assert decision["decision"]["effect"] == "deny" and decision["decision"]["confirmation"] == "accepted"
    reloads = [r for r in s.records() if r["stage"] == "policy_reload"]
    assert decision["decision"]["policy_hash"] == reloads[-1]["policy_hash"], json.dumps(decision)
