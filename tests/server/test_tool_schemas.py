"""Issue 18, cold start: tools/list comes from schemas built ahead of time, and serving starts without the
tool modules, the audit reader or anything else only a call or another command needs.

The drift test regenerates the schemas from the models and compares them with the committed file; the
start test reads which modules a real ``opsgate serve`` imported (``-X importtime``) before it served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsgate.server import catalog
from opsgate.server.catalog import build_schemas, prebuilt_schemas, schemas_text, server_tools
from opsgate.server.toolspec import DeferredModel, input_schema, model_class
from opsgate.tools.workloads import DeployArgs

# What serving does not need before its first call (or at all): imported on first use.
NOT_AT_START = (
    "opsgate.tools.workloads", "opsgate.tools.listing", "opsgate.tools.kserve", "opsgate.tools.workload_types",
    "opsgate.tools.oip", "opsgate.tools.inference", "opsgate.audit.cli", "opsgate.audit.query",
    "kubernetes", "numpy", "onnxruntime", "casbin", "msgspec",
)


def test_committed_schemas_match_the_models() -> None:
    """Regenerate with `python -m opsgate.server.catalog` when this fails: a model changed."""
    committed = catalog._SCHEMAS_FILE.read_text(encoding="utf-8")
    assert committed == schemas_text(build_schemas(server_tools())), \
        "server/tool_schemas.json is stale: run python -m opsgate.server.catalog"


def test_every_listed_tool_takes_its_schema_from_the_file() -> None:
    schemas = prebuilt_schemas()
    listed = [spec for spec in server_tools() if spec.route == "tool"]
    assert sorted(schemas) == sorted(spec.name for spec in listed)
    for spec in listed:
        assert spec.schema == schemas[spec.name]
        assert spec.mcp_tool().input_schema == schemas[spec.name]


def test_a_deferred_model_is_the_real_class_on_use() -> None:
    spec = next(s for s in server_tools() if s.name == "deploy")
    assert isinstance(spec.args_model, DeferredModel)
    assert model_class(spec.args_model) is DeployArgs
    args = spec.args_model.model_validate({"namespace": "team-a", "name": "web", "image": "nginx:1.27"})
    assert isinstance(args, DeployArgs)
    assert input_schema(spec.args_model) == input_schema(DeployArgs)
    with pytest.raises(AttributeError):
        spec.args_model.no_such_attribute  # noqa: B018  (the real class's error, not a silent None)


def test_serve_starts_without_what_only_a_call_needs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    policy = tmp_path / "admin.csv"
    policy.write_text("p, bench, *, *, *, allow\n")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "opsgate.server", "serve", "--principal", "bench",
         "--policy", str(policy), "--audit-log", str(tmp_path / "audit.jsonl")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "opsgate.server.gate" in imported and "mcp.server.lowlevel.server" in imported  # the parse works
    early = sorted(name for name in imported if any(name == m or name.startswith(m + ".") for m in NOT_AT_START))
    assert early == []
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["start", "stop"]  # it served (every tool registered), then stopped
    assert records[0]["tools"] == [spec.name for spec in server_tools() if spec.route == "tool"]
