"""The gate in-process, with a real policy and a real audit log: the order of its decisions, audit refusal,
bounds, rate limit, confirmation and the read-only modes, in milliseconds instead of a server process.

The tools are the server's own specs (arguments, verbs, bounds contract); only what a cluster tool does
when it runs is replaced by a step that notes it ran, so nothing here needs a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from pydantic import BaseModel

from opsgate.audit import AuditLog, verify_log
from opsgate.policies import SHIPPED_DIR, load_policy
from opsgate.server.catalog import server_tools, tool_verbs
from opsgate.server.config import Settings
from opsgate.server.gate import Gate, error_of
from opsgate.server.records import Caller
from opsgate.server.toolspec import ToolSpec
from opsgate.tools.context import CallContext

pytestmark = pytest.mark.anyio

POLICY = """\
p, role:viewer, *, *, read, allow
g, role:operator, role:viewer, *
p, role:operator, *, *, write, allow
g, alice, role:operator, team-*
g, role:everyone, role:viewer, *
"""
BOUNDS = """\
[subject."role:operator"]
max_replicas = 5
rate_limit_per_minute = 3
confirm = ["rollback"]
"""
DEPLOY = {"namespace": "team-a", "name": "web", "image": "nginx:1.27", "replicas": 2}


class Ran(BaseModel):
    """What the stand-in for a cluster tool returns: that it ran, and with which arguments."""

    tool: str
    arguments: dict[str, Any]

    def audit_summary(self) -> dict[str, Any]:
        """What the outcome record keeps of it (tools/context.py AuditSummarized)."""
        return {"ran": self.tool}


class Harness:
    """A gate over a policy folder and an audit log in ``tmp_path``; ``ran`` lists the tools that ran."""

    def __init__(self, tmp_path: Path, *, read_only: bool = False, disable_destructive: bool = False,
                 on_run: Callable[[str], None] | None = None, bounds: str = BOUNDS) -> None:
        folder = tmp_path / "policy"
        folder.mkdir(exist_ok=True)
        shutil.copy(SHIPPED_DIR / "model.conf", folder / "model.conf")
        (folder / "policy.csv").write_text(POLICY)
        (folder / "bounds.toml").write_text(bounds)
        self.ran: list[str] = []
        self.log_path = tmp_path / "audit.jsonl"
        self.audit = AuditLog(self.log_path)
        gates: list[Gate] = []
        specs = [self._local(s, on_run) for s in server_tools(Settings(audit_log=self.log_path), None,
                                                                lambda: gates[0])]
        policy = load_policy(folder, known_tools=tool_verbs(specs))
        self.gate = Gate(policy=policy, audit=self.audit, caller=self.caller("alice"), read_only=read_only,
                         disable_destructive=disable_destructive)
        gates.append(self.gate)
        self.gate.register(specs)

    def _local(self, spec: ToolSpec[Any, Any], on_run: Callable[[str], None] | None) -> ToolSpec[Any, Any]:
        if not spec.open_world:  # whoami, explain_access, the caller's records: the gate's own, run as they are
            return spec

        async def run(args: BaseModel, ctx: CallContext) -> Ran:
            self.ran.append(spec.name)
            if on_run is not None:
                on_run(spec.name)
            return Ran(tool=spec.name, arguments=args.model_dump(mode="json", exclude_none=True))

        return dataclasses.replace(spec, run=run, result_model=Ran, render=lambda r: f"ran {r.tool}")

    @staticmethod
    def caller(principal: str) -> Caller:
        return Caller(principal, "config", "tester", None, None, uuid.uuid4().hex)

    async def call(self, tool: str, arguments: dict[str, Any], who: str = "alice", **kw: Any) -> types.CallToolResult:
        return await self.gate.call(tool, arguments, self.caller(who), **kw)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_bytes().split(b"\n") if line.strip()]

    def decisions(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("stage") == "decision"]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.audit.close()


def refusal(result: types.CallToolResult) -> tuple[str, str]:
    """The error's code and the rule of its first entry."""
    error = error_of(result)
    assert error is not None, result
    return error["code"], error["errors"][0]["rule"]


async def test_an_allowed_call_is_recorded_before_it_runs_and_its_outcome_after(h: Harness) -> None:
    result = await h.call("deploy", DEPLOY)
    assert not result.is_error and result.structured_content == {"tool": "deploy", "arguments": {
        **DEPLOY, "dry_run": False, "wait": False, "timeout_seconds": 120}}
    assert h.ran == ["deploy"]
    decision, outcome = [r for r in h.records() if r.get("call_id")]
    assert (decision["stage"], decision["decision"]["effect"], outcome["stage"], outcome["outcome"]["status"]) == (
        "decision", "allow", "outcome", "ok")
    assert outcome["outcome"]["result"] == {"ran": "deploy"}  # the result's audit summary, not the result
    assert decision["call_id"] == outcome["call_id"] and decision["namespace"] == "team-a"
    assert decision["object"] == {"kind": "Deployment", "namespace": "team-a", "name": "web"}
    assert verify_log(h.log_path).ok
    assert not (await h.call("whoami", {})).is_error
    assert "result" not in h.records()[-1]["outcome"]  # a result with no audit summary records none


async def test_decision_order_arguments_then_policy_then_bounds_then_rate_limit(h: Harness) -> None:
    """Each refusal is the first rule the call breaks, and a refused call runs nothing."""
    assert refusal(await h.call("deploy", {**DEPLOY, "replicas": "many"}, who="val")) == ("invalid_arguments",
                                                                                           "type")
    assert refusal(await h.call("deploy", {**DEPLOY, "replicas": 50}, who="val")) == ("denied", "policy")
    assert refusal(await h.call("deploy", {**DEPLOY, "namespace": "prod"})) == ("denied", "policy")
    assert refusal(await h.call("deploy", {**DEPLOY, "replicas": 50})) == ("denied", "bound")
    assert h.ran == []
    # The bound's refusal took no token: the operator's three calls a minute are all still there.
    assert not (await h.call("deploy", DEPLOY)).is_error
    assert not (await h.call("scale", {"namespace": "team-a", "name": "web", "replicas": 3})).is_error
    assert not (await h.call("deploy", DEPLOY)).is_error
    assert refusal(await h.call("deploy", DEPLOY)) == ("denied", "rate-limit")
    assert h.ran == ["deploy", "scale", "deploy"]
    effects = [d["decision"]["effect"] for d in h.decisions()]
    assert effects == ["invalid", "deny", "deny", "deny", "allow", "allow", "allow", "deny"]
    assert "bound" in h.decisions()[3]["decision"] and "bound" in h.decisions()[-1]["decision"]


async def test_reads_are_not_rate_limited(h: Harness) -> None:
    for _ in range(5):
        assert not (await h.call("rollout_status", {"namespace": "team-a", "name": "web"})).is_error
    assert h.ran == ["rollout_status"] * 5


async def test_cluster_reads_are_throttled_apart_from_writes_and_local_reads(tmp_path: Path) -> None:
    """read_rate_limit_per_minute counts the reads that reach the cluster or a model server (verb read,
    open_world), in a bucket of their own: writes spend none of it, local reads are never counted, and the
    refusal says when to retry. Operators read through role:viewer's rule, so role:viewer's bound applies."""
    h = Harness(tmp_path, bounds=BOUNDS + '[subject."role:viewer"]\nread_rate_limit_per_minute = 3\n')
    try:
        workload = {"namespace": "team-a", "name": "web"}
        for _ in range(3):  # the whole write budget (rate_limit_per_minute = 3 of role:operator)
            assert not (await h.call("deploy", DEPLOY)).is_error
        assert refusal(await h.call("deploy", DEPLOY)) == ("denied", "rate-limit")
        assert not (await h.call("list_workloads", {"namespace": "team-a"})).is_error
        for local, args in [("whoami", {}), ("explain_access", {"tool": "deploy", "namespace": "team-a"}),
                            ("list_models", {})]:
            for _ in range(4):
                assert not (await h.call(local, args)).is_error, local
        assert not (await h.call("rollout_status", workload)).is_error
        assert not (await h.call("model_status", workload)).is_error
        result = await h.call("rollout_history", workload)
        assert refusal(result) == ("denied", "rate-limit")
        error = error_of(result)
        assert error is not None
        message = error["message"]
        assert "at most 3 reads of the cluster or a model server per minute" in message
        assert "read_rate_limit_per_minute of role:viewer" in message and re.search(r"retry in (1\d|20) s\b", message)
        assert not (await h.call("whoami", {})).is_error  # local reads still go through
        assert h.ran == ["deploy"] * 3 + ["list_workloads", "rollout_status", "model_status"]
        assert not (await h.call("rollout_history", workload, who="bob")).is_error  # a budget per principal
        denied = [d for d in h.decisions() if d["tool"] == "rollout_history" and d["decision"]["effect"] == "deny"]
        assert len(denied) == 1 and "read_rate_limit_per_minute" in denied[0]["decision"]["bound"]
    finally:
        h.audit.close()


async def test_unknown_tool_is_refused_and_recorded(h: Harness) -> None:
    assert refusal(await h.call("delete_everything", {})) == ("invalid_arguments", "unknown-tool")
    assert h.decisions()[-1]["decision"]["effect"] == "invalid" and h.ran == []


async def test_confirmation_asks_the_user_and_a_no_stops_the_call(h: Harness) -> None:
    rollback = {"namespace": "team-a", "name": "web"}
    assert refusal(await h.call("rollback", rollback)) == ("denied", "confirmation")  # this client cannot ask
    asked: list[str] = []

    def answer(word: str) -> Any:
        async def ask(question: str) -> str:
            asked.append(question)
            return word

        return ask

    assert refusal(await h.call("rollback", rollback, ask=answer("decline"))) == ("denied", "confirmation")
    assert h.ran == []
    assert len(asked) == 1 and asked[0].startswith("Allow rollback in team-a: ") and "name=" in asked[0]
    assert not (await h.call("rollback", rollback, ask=answer("accept"))).is_error
    assert h.ran == ["rollback"]
    assert [d["decision"].get("confirmation") for d in h.decisions()] == ["unsupported", "decline", "accepted"]


async def test_read_only_refuses_and_hides_every_write(tmp_path: Path) -> None:
    h = Harness(tmp_path, read_only=True)
    try:
        listed = {t.name for t in h.gate.list_tools("alice")}
        assert "deploy" not in listed and "rollout_status" in listed and "whoami" in listed
        code, _ = refusal(await h.call("deploy", DEPLOY))
        assert code == "denied" and "--read-only" in h.decisions()[-1]["decision"]["reason"]
        assert not (await h.call("whoami", {})).is_error
        assert h.ran == []
    finally:
        h.audit.close()


async def test_disable_destructive_refuses_and_hides_destructive_tools(tmp_path: Path) -> None:
    h = Harness(tmp_path, disable_destructive=True)
    try:
        assert "scale" not in {t.name for t in h.gate.list_tools("alice")}
        assert refusal(await h.call("scale", {"namespace": "team-a", "name": "web", "replicas": 1}))[0] == "denied"
        assert "--disable-destructive" in h.decisions()[-1]["decision"]["reason"] and h.ran == []
    finally:
        h.audit.close()


async def test_a_decision_that_cannot_be_written_runs_nothing(h: Harness) -> None:
    assert not (await h.call("deploy", DEPLOY)).is_error
    h.log_path.unlink()  # the log is gone under the writer: it refuses to go on rather than start a new chain
    error = error_of(await h.call("deploy", DEPLOY))
    assert error is not None and error["code"] == "audit_unavailable"
    assert "nothing was run" in error["message"]
    assert h.ran == ["deploy"]
    # A read's decision is written with its outcome, in one fsync (audit/SCHEMA.md): it runs (it changes
    # nothing), and nothing of what it read leaves without both records.
    result = await h.call("rollout_status", {"namespace": "team-a", "name": "web"})
    error = error_of(result)
    assert error is not None and error["code"] == "audit_unavailable" and "withheld" in error["message"]
    assert result.structured_content is None and "ran rollout_status" not in str(result.content)
    assert h.ran == ["deploy", "rollout_status"]


async def test_a_read_writes_decision_and_outcome_together_and_a_write_its_decision_first(h: Harness) -> None:
    appended: list[int] = []  # records per durable append, in order
    one, many = h.audit.append, h.audit.append_many

    def append(body: Any) -> dict[str, Any]:
        appended.append(1)
        return one(body)

    def append_many(bodies: Any) -> list[dict[str, Any]]:
        appended.append(len(bodies))
        return many(bodies)

    h.audit.append, h.audit.append_many = append, append_many  # type: ignore[method-assign]
    assert not (await h.call("rollout_status", {"namespace": "team-a", "name": "web"})).is_error
    assert appended == [2]
    decision, outcome = h.records()[-2:]
    assert (decision["stage"], decision["decision"]["effect"], outcome["stage"]) == ("decision", "allow", "outcome")
    assert decision["call_id"] == outcome["call_id"] and outcome["seq"] == decision["seq"] + 1
    appended.clear()
    assert not (await h.call("deploy", DEPLOY)).is_error
    assert appended == [1, 1]  # a write: its decision durable before it runs, then its outcome
    appended.clear()
    assert refusal(await h.call("rollout_status", {"namespace": "team-a"}))[0] == "invalid_arguments"
    assert appended == [1]  # a read that does not run has only its decision
    assert verify_log(h.log_path).ok


async def test_an_outcome_that_cannot_be_written_withholds_the_result(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    h = Harness(tmp_path, on_run=lambda tool: log_path.unlink())  # the log goes while the tool runs
    try:
        error = error_of(await h.call("deploy", DEPLOY))
        assert error is not None and error["code"] == "audit_unavailable" and "withheld" in error["message"]
        assert h.ran == ["deploy"]
    finally:
        h.audit.close()
