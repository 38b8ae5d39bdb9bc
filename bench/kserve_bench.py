"""kserve_infer over stdio beside the same Open Inference Protocol request made directly.

One InferenceService on the sandbox serves the shipped iris model; the direct
floor is a plain HTTP POST to its URL (no metadata read: opsgate caches that).
The difference of the medians is opsgate's own overhead: MCP framing, the gate,
two fsynced records, the input checks and the HTTP client.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = Callable[..., None]
NS = "bench-models"
ROWS = [[5.1, 3.5, 1.4, 0.2]]


def _direct(url: str, n: int) -> list[float]:
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                   "data": [x for row in ROWS for x in row]}]}).encode()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        request = urllib.request.Request(f"{url}/v2/models/iris/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(tmp: Path, row: Row, session_for: Callable[[list[str]], Any], opsgate_args: Callable[..., list[str]],
              n: int = 300) -> None:
    """The sandbox (and so its model server) in its own process; ours and the direct POST take turns per call."""
    from bench.sandbox_process import SandboxProcess

    with SandboxProcess(tmp / "kserve-bench-kubeconfig", [NS]) as sandbox:
        policy = tmp / "kserve-bench-policy.csv"
        policy.write_text("p, bench, *, *, *, allow\n")
        args = opsgate_args(tmp, "--principal", "bench", "--kubeconfig", str(sandbox.kubeconfig), "--policy",
                            str(policy))
        call = {"name": "iris", "namespace": NS, "inputs": {"features": ROWS}}
        async with session_for(args) as s:
            deployed = await s.call_tool("deploy_model", {"name": "iris", "namespace": NS, "storage_uri": "iris",
                                                          "wait": True})
            assert not deployed.is_error, deployed.content
            url = (await s.call_tool("model_status", {"name": "iris", "namespace": NS})).structured_content["url"]
            ours: list[float] = []
            direct: list[float] = []
            for i in range(-20, n):  # 20 warm-up rounds; the two take turns, and turns at going first
                for which in ((0, 1) if i % 2 else (1, 0)):
                    if which:
                        started = time.perf_counter()
                        result = await s.call_tool("kserve_infer", call)
                        elapsed = (time.perf_counter() - started) * 1000
                        assert not result.is_error, result.content
                    else:
                        elapsed = _direct(url, 1)[0]
                    if i >= 0:
                        (ours if which else direct).append(elapsed)
    o, d = statistics.median(ours), statistics.median(direct)
    row("kserve_infer round trip over stdio p50 (sandbox in its own process)", f"{o:.2f} ms",
        f"{d:.2f} ms direct POST", "")
    row("kserve_infer: opsgate's own overhead p50", f"{o - d:+.2f} ms", "0 ms", "< 3 ms")
