"""``opsgate demo``: a real MCP client session against ``opsgate serve``, narrated.

Nothing here is staged: the server is a subprocess on the sandbox cluster, the
client is the SDK's stdio client, every step is a real tool call through the gate,
and the audit log verified at the end is the one this session wrote. A step whose
capability is not built yet says so and is skipped; it is never faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, TextIO

import anyio

PRINCIPAL = "demo"
NS = "default"
V1, V2 = "registry.example.com/shop/web:1.0", "registry.example.com/shop/web:2.0"


@dataclass
class Narrator:
    out: TextIO
    steps: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, title: str) -> None:
        self.steps += 1
        self.say(f"\n[{self.steps}] {title}")

    def call(self, tool: str, arguments: dict[str, Any]) -> None:
        shown = json.dumps(arguments, separators=(", ", ": "))
        self.say(f"  assistant -> {tool} {shown if len(shown) < 160 else shown[:157] + '...'}")

    def result(self, text: str) -> None:
        for line in text.splitlines()[:12]:
            self.say(f"  opsgate   <- {line[:150]}")

    def ok(self, note: str) -> None:
        self.say(f"  ok: {note}")

    def fail(self, title: str, note: str) -> None:
        self.failed.append(title)
        self.say(f"  FAILED: {note}")

    def skip(self, title: str, why: str) -> None:
        self.skipped.append(title)
        self.say(f"  skipped: {why}")


def _policy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shipped = files("opsgate.policies")
    for name in ("model.conf", "policy.csv", "bounds.toml"):
        (folder / name).write_text(shipped.joinpath(name).read_text())
    with (folder / "policy.csv").open("a") as fh:
        fh.write("\n# demo: the demo principal operates the default namespace only\n")
        fh.write(f"g, {PRINCIPAL}, role:operator, {NS}\n")
    return folder


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def _session(workdir: Path, narrator: Narrator) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    audit_log = workdir / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") and k != "KUBECONFIG"}
    env["HOME"] = str(workdir)  # no ~/.kube/config here: the server uses its sandbox cluster
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "opsgate.server", "serve", "--principal", PRINCIPAL, "--policy", str(_policy(workdir / "policy")),
              "--audit-log", str(audit_log), "--log-level", "warning"],
        env=env,
    )
    with (workdir / "server.stderr").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            narrator.say(f"connected to {init.server_info.name} {init.server_info.version} over stdio")

            async def call(tool: str, arguments: dict[str, Any]) -> Any:
                narrator.call(tool, arguments)
                result = await session.call_tool(tool, arguments)
                narrator.result(_text(result))
                return result

            async def quiet(tool: str, arguments: dict[str, Any]) -> Any:
                return await session.call_tool(tool, arguments)

            for title, run in _steps(call, narrator, quiet):
                narrator.step(title)
                try:
                    await run()
                except Exception as exc:  # a broken step is reported, the demo goes on
                    narrator.fail(title, f"{type(exc).__name__}: {exc}")
    _audit_steps(audit_log, narrator)


Call = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _steps(call: Call, n: Narrator, session_call: Call) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    def expect(title: str, cond: bool, note: str) -> None:
        (n.ok if cond else (lambda msg: n.fail(title, msg)))(note)

    async def whoami() -> None:
        who = (await call("whoami", {})).structured_content
        expect("whoami", who["principal"] == PRINCIPAL and who["cluster"]["sandbox"],
               "the server knows who it acts for, and that this is the sandbox cluster")

    async def denied() -> None:
        from .gate import error_of

        r = await call("deploy", {"name": "web", "namespace": "kube-system", "image": V1})
        error = error_of(r) or {}
        expect("denied", r.is_error and error.get("code") == "denied",
               "refused, with the reason (the rule, or why none applies), and audited")

    async def deploy_v1() -> None:
        r = await call("deploy", {"name": "web", "namespace": NS, "image": V1, "replicas": 2, "wait": True})
        expect("deploy v1", not r.is_error and r.structured_content["rollout"]["done"], "rolled out")

    async def deploy_v2() -> None:
        preview = await call("deploy", {"name": "web", "namespace": NS, "image": V2, "dry_run": True})
        changes = preview.structured_content["changes"] if not preview.is_error else []
        n.say(f"  the dry run would change: {', '.join(c['path'] for c in changes)}; nothing stored yet")
        r = await call("deploy", {"name": "web", "namespace": NS, "image": V2, "wait": True})
        expect("deploy v2", not r.is_error and r.structured_content["revision"] == 2, "revision 2 rolled out")

    async def scale() -> None:
        r = await call("scale", {"name": "web", "namespace": NS, "replicas": 3})
        beyond = await call("scale", {"name": "web", "namespace": NS, "replicas": 50})
        expect("scale", not r.is_error and beyond.is_error and "max_replicas" in _text(beyond),
               "within the bound it scales; beyond it, the bound refuses")

    async def rollback() -> None:
        await call("rollout_history", {"name": "web", "namespace": NS})
        r = await call("rollback", {"name": "web", "namespace": NS})
        history = (await call("rollout_history", {"name": "web", "namespace": NS})).structured_content
        expect("rollback", not r.is_error and [x["revision"] for x in history["revisions"]] == [2, 3],
               "back on v1: its ReplicaSet is reused and renumbered to revision 3, as kubectl does")

    async def inference() -> None:
        await call("list_models", {})
        r = await call("infer", {"model": "iris", "inputs": {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}})
        expect("inference", not r.is_error, "the shipped iris model ran locally with onnxruntime")

    async def kserve() -> None:
        base = {"name": "iris", "namespace": NS}

        async def traffic(want: list[int]) -> dict[str, int]:
            """model_status until the split is the one asked for: the controller moves traffic after a write."""
            split: dict[str, int] = {}
            for _ in range(50):
                status = (await session_call("model_status", base)).structured_content
                split = {t["tag"] or t["revision"]: t["percent"] for t in status.get("traffic", []) if t["percent"]}
                if sorted(split.values()) == want:
                    break
                await anyio.sleep(0.1)
            return split

        served = await call("deploy_model", {**base, "storage_uri": "iris", "wait": True})
        rows = {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
        answer = await call("kserve_infer", {**base, "inputs": rows})
        canary = await call("deploy_model", {**base, "storage_uri": "iris-v2", "canary_traffic_percent": 20,
                                             "wait": True})
        await call("model_status", base)
        split = await traffic([20, 80])
        n.say(f"  traffic split after the canary: {split}")
        back = await call("rollback", {**base, "kind": "InferenceService"})
        after = await traffic([100])
        n.say(f"  traffic split after the rollback: {after}")
        expect("kserve", not (served.is_error or answer.is_error or canary.is_error or back.is_error)
               and sorted(split.values()) == [20, 80] and list(after.values()) == [100],
               "served over the Open Inference Protocol, canaried at 20%, and rolled back to 100% on v1")

    return [
        ("who am I, and what may I do?", whoami),
        ("a denied action, and the rule that denied it", denied),
        ("deploy v1 and wait for the rollout", deploy_v1),
        ("deploy v2, with a dry-run diff first", deploy_v2),
        ("scale within the policy bound, then beyond it", scale),
        ("roll back, with the history", rollback),
        ("local inference on the shipped model", inference),
        ("KServe: deploy an InferenceService, call it, canary, roll back", kserve),
    ]


def _audit_steps(audit_log: Path, n: Narrator) -> None:
    """The reviewer's own commands, run as a reviewer would, on this session's log."""
    n.step("audit verify on this session's log (hash chain, segments, signed checkpoints)")
    verify = _opsgate("audit", "verify", str(audit_log))
    n.say(f"  $ opsgate audit verify {audit_log}")
    n.result(verify.stdout.strip())
    if verify.returncode == 0:
        n.ok("intact: nothing edited, removed, inserted or reordered")
    else:
        n.fail("audit verify", f"exit {verify.returncode}: {verify.stdout.strip()[:200]}")
    n.step("what the security team reads: one row per call, decision joined with outcome")
    query = _opsgate("audit", "query", str(audit_log), "--limit", "12")
    n.say(f"  $ opsgate audit query {audit_log} --limit 12")
    for line in query.stdout.splitlines()[:16]:
        n.say(f"  {line[:150]}")
    denied = _opsgate("audit", "query", str(audit_log), "--decision", "deny", "--json")
    refusals = [json.loads(line) for line in denied.stdout.splitlines() if line.strip()]
    if query.returncode == 0 and refusals:
        n.ok(f"{len(refusals)} refused calls on record, each with the rule or bound that refused it")
    else:
        n.fail("audit query", f"exit {query.returncode}: {query.stderr.strip()[:200]}")


def _opsgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsgate.server", *args], capture_output=True, text=True,
                          timeout=60)


def run_demo(out: TextIO = sys.stdout) -> int:
    narrator = Narrator(out)
    started = time.monotonic()
    narrator.say("opsgate demo: an AI assistant's session, played by the MCP stdio client, against")
    narrator.say("`opsgate serve` on the built-in sandbox cluster. Every step is a real call through the gate.")
    with tempfile.TemporaryDirectory(prefix="opsgate-demo-") as tmp:
        anyio.run(_session, Path(tmp), narrator)
    took = time.monotonic() - started
    built = narrator.steps - len(narrator.skipped)
    narrator.say(f"\n{built - len(narrator.failed)} of {built} built steps ok, {len(narrator.skipped)} skipped, "
                 f"{took:.1f} s; the server and its sandbox have exited.")
    return 1 if narrator.failed else 0
