"""Shared test harness: a real ``opsgate serve`` subprocess driven by the SDK's stdio client."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


@dataclass
class Served:
    """A live server session plus the files a test inspects afterwards."""

    session: ClientSession
    audit_log: Path
    stderr_path: Path

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        return await self.session.call_tool(tool, arguments or {})

    def records(self) -> list[dict[str, Any]]:
        # Split on b"\n" only: canonical JSON keeps U+2028 and friends raw inside strings.
        return [json.loads(line) for line in self.audit_log.read_bytes().split(b"\n") if line.strip()]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no OPSGATE_* settings or KUBECONFIG leak in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") and k != "KUBECONFIG"}
    env.update(extra or {})
    return env


@asynccontextmanager
async def serve(
    tmp_path: Path, *flags: str, env: dict[str, str] | None = None, elicitation: Any = None
) -> AsyncIterator[Served]:
    audit_log = tmp_path / "audit.jsonl"
    stderr_path = tmp_path / "server.stderr"
    args = ["-m", "opsgate.server", "serve", "--audit-log", str(audit_log), *flags]
    # An empty home unless a test says otherwise: a developer's ~/.kube/config (a real cluster the server
    # would ask who we are, and act on) or ~/.config/opsgate must not reach a test.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    environment = server_env({"HOME": str(home), **(env or {})})
    params = StdioServerParameters(command=sys.executable, args=args, env=environment)
    with stderr_path.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, elicitation_callback=elicitation) as session,
        ):
            await session.initialize()
            yield Served(session=session, audit_log=audit_log, stderr_path=stderr_path)


def shipped_policy(folder: Path, *extra: str) -> Path:
    """The shipped model, roles, bounds and protections, plus the given lines (users for a test)."""
    from importlib.resources import files

    folder.mkdir(parents=True, exist_ok=True)
    shipped = files("opsgate.policies")
    for name in ("model.conf", "policy.csv", "bounds.toml"):
        (folder / name).write_text(shipped.joinpath(name).read_text())
    with (folder / "policy.csv").open("a") as fh:
        fh.write("".join(f"{line}\n" for line in extra))
    return folder


@asynccontextmanager
async def serve_on(cluster: Any, tmp_path: Path, principal: str, *extra_policy: str) -> AsyncIterator[Served]:
    """A server for ``principal`` on a sandbox cluster, reached through a kubeconfig as a real one would be."""
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", *extra_policy)
    async with serve(tmp_path, "--principal", principal, "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy)) as served:
        yield served


def ok(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    return result.structured_content  # type: ignore[no-any-return]


def err(result: Any) -> dict[str, Any]:
    """The error envelope (README "Errors"), read as every client reads it: from the one text content.

    An error carries no structured content: strict clients would check it against the tool's
    success schema and show their own error instead of ours."""
    assert result.is_error, result.structured_content
    assert result.structured_content is None, result.structured_content
    assert len(result.content) == 1 and result.content[0].type == "text", result.content
    envelope = json.loads(result.content[0].text)
    assert set(envelope) == {"error"}, envelope
    error: dict[str, Any] = envelope["error"]
    assert {"code", "message", "errors", "call_id"} <= set(error), error
    assert error["errors"] and all(set(e) == {"field", "rule", "message"} for e in error["errors"]), error
    return error


def write_policy(folder: Path, lines: list[str]) -> Path:
    """A policy folder with the shipped model and the given rules."""
    from importlib.resources import files

    folder.mkdir(parents=True, exist_ok=True)
    model = files("opsgate.policies").joinpath("model.conf").read_text()
    (folder / "model.conf").write_text(model)
    (folder / "policy.csv").write_text("\n".join(lines) + "\n")
    return folder
