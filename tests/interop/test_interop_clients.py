"""Issue 14: every error kind reaches the agent through clients no one on this project wrote.

The TypeScript SDK 1.x client (tests/interop/ts_client.mjs, what most IDE and desktop clients run)
validates a result's structuredContent against the tool's outputSchema, errors included; an error
that carried structuredContent reached the agent as "MCP error -32602: Structured content does not
match the tool's output schema" instead of opsgate's code and message. The same matrix runs through
the TypeScript SDK 2.x client and the Python SDK client. Each starts a real ``opsgate serve`` on its
built-in sandbox cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import serve, server_env, shipped_policy

INTEROP = Path(__file__).parent  # package.json and the lockfile sit beside this file
SECRET = "hunter2-do-not-echo-7f3a"  # sent where an object belongs: the error names its kind, never the value
ROWS = [[5.1, 3.5, 1.4, 0.2]]


@dataclass(frozen=True)
class Case:
    kind: str  # the error kind of issue 14's matrix
    tool: str
    arguments: dict[str, Any]
    code: str
    field: str
    rule: str
    says: str  # in the envelope's message
    http_status: int | None = None


CASES = [
    Case("invalid arguments", "infer", {"model": "iris", "inputs": SECRET},
         "invalid_arguments", "inputs", "type", "inputs: an object was expected, a string was sent"),
    Case("invalid arguments (union)", "kserve_infer", {"name": "iris", "namespace": "default", "inputs": SECRET},
         "invalid_arguments", "inputs", "type", "inputs: an object or an array was expected, a string was sent"),
    Case("denied", "scale", {"name": "web", "namespace": "kube-system", "replicas": 2},
         "denied", "-", "policy", "kube-system is protected"),
    Case("bound", "scale", {"name": "web", "namespace": "default", "replicas": 50},
         "denied", "-", "bound", "replicas 50 exceeds max_replicas 10"),
    Case("unknown tool", "no_such_tool", {}, "invalid_arguments", "name", "unknown-tool", "no tool named"),
    Case("API 404", "rollout_status", {"name": "missing", "namespace": "default"},
         "api_error", "-", "not-found", "answered 404", http_status=404),
    Case("model error (unknown model)", "infer", {"model": "no-such-model", "inputs": {"features": ROWS}},
         "invalid_arguments", "model", "unknown-model", "no model named 'no-such-model'"),
    Case("model error (wrong input name)", "infer", {"model": "iris", "inputs": {"petals": ROWS}},
         "invalid_arguments", "inputs.petals", "unknown-input", "its inputs are: features"),
]
SUCCESS: tuple[str, dict[str, Any]] = ("list_models", {})


def seen(case: Case, answer: dict[str, Any]) -> None:
    """What the agent gets (the wire form of a tools/call result) is opsgate's own error, whole."""
    assert "exception" not in answer, f"{case.kind}: the client raised instead: {answer['exception']}"
    result = answer["result"]
    assert result.get("isError") is True, (case.kind, result)
    assert "structuredContent" not in result, (case.kind, result)  # nothing a success schema could fail
    [content] = result["content"]
    assert content["type"] == "text" and SECRET not in content["text"], (case.kind, content)
    error = json.loads(content["text"])["error"]
    assert error["code"] == case.code and case.says in error["message"], (case.kind, error)
    assert (error["errors"][0]["field"], error["errors"][0]["rule"]) == (case.field, case.rule), (case.kind, error)
    assert len(error["call_id"]) == 32 and error.get("http_status") == case.http_status, (case.kind, error)


def succeeded(answer: dict[str, Any]) -> None:
    assert "exception" not in answer, answer["exception"]
    result = answer["result"]
    assert not result.get("isError") and result["structuredContent"]["models"], result
    assert {"iris", "iris-v2"} <= {m["name"] for m in result["structuredContent"]["models"]}


def server_args(tmp_path: Path) -> list[str]:
    """An operator on the shipped policy and bounds; no kubeconfig, so the built-in sandbox cluster."""
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, *")
    return ["--principal", "alice", "--policy", str(policy)]


@pytest.mark.parametrize(("major", "package"), [(1, "sdk"), (2, "client")])
def test_typescript_sdk_client_shows_every_opsgate_error(tmp_path: Path, major: int, package: str) -> None:
    """1.x checks even an error's structuredContent against the listed outputSchema; 2.x does not."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the TypeScript SDK client cannot run (CI installs it, see .ci/run)")
    sdk = INTEROP / "node_modules" / "@modelcontextprotocol" / package / "package.json"
    assert sdk.exists(), "the TypeScript SDK is not installed: run `npm ci --prefix tests/interop` (.ci/run does)"
    home = tmp_path / "home"
    home.mkdir()
    spec = {
        "sdk": major,
        "command": sys.executable,
        "args": ["-m", "opsgate.server", "serve", "--audit-log", str(tmp_path / "audit.jsonl"), *server_args(tmp_path)],
        "env": server_env({"HOME": str(home)}),
        "calls": [{"name": c.tool, "arguments": c.arguments} for c in CASES]
                 + [{"name": SUCCESS[0], "arguments": SUCCESS[1]}],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run = subprocess.run([node, str(INTEROP / "ts_client.mjs"), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout)
    assert doc["client"]["version"].startswith(f"{major}."), doc["client"]
    assert {"infer", "scale", "rollout_status", "list_models"} <= set(doc["tools"])
    *errors, success = doc["results"]
    for case, answer in zip(CASES, errors, strict=True):
        seen(case, answer)
    succeeded(success)


@pytest.mark.anyio
async def test_python_sdk_client_shows_every_opsgate_error(tmp_path: Path) -> None:
    async with serve(tmp_path, *server_args(tmp_path)) as s:
        await s.session.list_tools()  # as a host does; the client then checks results against what it listed
        answers = []
        for tool, arguments in [*((c.tool, c.arguments) for c in CASES), SUCCESS]:
            result = await s.call(tool, arguments)
            answers.append({"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)})
    *errors, success = answers
    for case, answer in zip(CASES, errors, strict=True):
        seen(case, answer)
    succeeded(success)


WRONG_TYPES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    # tool, arguments, the errors the agent gets as (field, rule, message)
    ("scale", {"name": "web", "namespace": "default", "replicas": SECRET},
     [("replicas", "type", "an integer was expected, a string was sent")]),
    ("scale", {"name": "web", "namespace": "default", "replicas": 1.5},
     [("replicas", "type", "a whole number was expected, a number with a fraction was sent")]),
    ("deploy", {"name": "web", "namespace": "default", "image": "nginx:1", "dry_run": {"secret": SECRET}},
     [("dry_run", "type", "true or false was expected, an object was sent")]),
    # inputs is an object or an array of tensors: a list that fits the array's shape gets that member's
    # errors alone, under plain paths, and no word about the object it is not
    ("kserve_infer", {"name": "iris", "namespace": "default", "inputs": [{"name": 7, "shape": [1], "x": SECRET}]},
     [("inputs.0.name", "type", "a string was expected, an integer was sent"),
      ("inputs.0.data", "missing", "required, and not sent"),
      ("inputs.0.x", "extra", "not a field this object takes")]),
    ("whoami", {"verbose": True}, [("verbose", "extra", "not an argument of this tool")]),
    # a user's key is a step of the path, however it is spelled (pydantic's tags are not)
    ("deploy", {"name": "web", "namespace": "default", "image": "nginx:1", "env": {"PORT": 8080}},
     [("env.PORT", "type", "a string was expected, an integer was sent")]),
]


@pytest.mark.anyio
async def test_wrong_types_are_told_in_the_agents_words(tmp_path: Path) -> None:
    """What was expected and what kind of value was sent, at the field's plain path; never pydantic's
    type tags (``dict[str,any]``, ``list[...]``) and never the value itself."""
    async with serve(tmp_path, *server_args(tmp_path)) as s:
        for tool, arguments, expected in WRONG_TYPES:
            result = await s.call(tool, arguments)
            text = result.content[0].text
            assert result.is_error and result.structured_content is None, (tool, text)
            error = json.loads(text)["error"]
            got = [(e["field"], e["rule"], e["message"]) for e in error["errors"]]
            assert got == expected, (tool, got)
            assert SECRET not in text and "[" not in error["message"], (tool, text)
