"""Soak: 20,000 mixed calls over one stdio session against the sandbox cluster.

    python bench/soak_bench.py             # 20,000 calls, prints the figures
    python bench/soak_bench.py --calls 2000

Memory must stay flat (server RSS, read from /proc, after a warm-up and at the
end), latency must not drift (p50 of the first thousand calls against the last
thousand: the mix repeats every 20 calls, so both windows hold the same calls),
every call must be answered as expected, and the audit log must verify.
``bench/run.py`` calls :func:`run`; ``tests/server/test_soak.py`` calls :func:`soak`
with 1,000 calls. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.* from `python bench/soak_bench.py` too

Row = Callable[..., None]
NS = "soak"
PRINCIPAL = "soak"
WINDOW = 1000
WARMUP = 200  # calls before the first RSS reading: every code path has been imported and run once
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
GROWTH_TARGET_MB = 20.0
DRIFT_TARGET = 0.20

# One cycle of the mix: (tool, arguments, expected error code or None). Scale alternates 1 <-> 2 replicas.
MIX: list[tuple[str, dict[str, Any], str | None]] = [
    ("whoami", {}, None),
    ("infer", {"model": "iris", "inputs": {"features": ROWS}}, None),
    ("list_workloads", {"namespace": NS}, None),
    ("kserve_infer", {"name": "iris", "namespace": NS, "inputs": {"features": ROWS}}, None),
    ("rollout_status", {"name": "web", "namespace": NS}, None),
    ("scale", {"name": "web", "namespace": NS, "replicas": 2}, None),
    ("model_status", {"name": "iris", "namespace": NS}, None),
    ("infer", {"model": "iris-v2", "inputs": {"features": ROWS[:1]}}, None),
    ("whoami", {}, None),
    ("infer", {"model": "../../etc/passwd", "inputs": {}}, "invalid_arguments"),
    ("kserve_infer", {"name": "iris", "namespace": NS, "inputs": {"features": ROWS}}, None),
    ("rollout_status", {"name": "web", "namespace": NS}, None),
    ("scale", {"name": "web", "namespace": NS, "replicas": 1}, None),
    ("infer", {"model": "iris", "inputs": {"features": ROWS}}, None),
    ("model_status", {"name": "iris", "namespace": NS}, None),
    ("scale", {"name": "web", "namespace": NS, "replicas": -1}, "invalid_arguments"),
    ("kserve_infer", {"name": "iris", "namespace": NS, "inputs": {"features": [[1.0, 2.0]]}}, "invalid_arguments"),
    ("whoami", {}, None),
    ("list_workloads", {"namespace": NS, "kind": "InferenceService"}, None),
    ("rollout_status", {"name": "ghost", "namespace": NS}, "api_error"),
]


@dataclass
class SoakResult:
    calls: int
    seconds: float
    latencies_ms: list[float]
    rss_cold_mb: float  # right after initialize
    rss_start_mb: float  # after the warm-up
    rss_end_mb: float
    rss_series_mb: list[float]  # every window calls
    window: int = WINDOW
    unexpected: list[str] = field(default_factory=list)  # calls not answered as the mix expects
    codes: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    records: int = 0
    verify_ok: bool = False
    verify_problem: str | None = None
    verify_seconds: float = 0.0

    @property
    def p50_first(self) -> float:
        return statistics.median(self.latencies_ms[: self.window])

    @property
    def p50_last(self) -> float:
        return statistics.median(self.latencies_ms[-self.window:])

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def server_pid(marker: str) -> int:
    """The ``opsgate serve`` process whose command line holds ``marker`` (its unique audit log path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and b"serve" in argv:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one server process with {marker} on its command line, found {found}")
    return found[0]


def _policy(tmp: Path) -> Path:
    """The shipped policy, bounds and protections, plus the soak principal as admin (no rate limit)."""
    folder = tmp / "soak-policy"
    folder.mkdir(exist_ok=True)
    shipped = files("opsgate.policies")
    for name in ("model.conf", "policy.csv", "bounds.toml"):
        (folder / name).write_text(shipped.joinpath(name).read_text())
    with (folder / "policy.csv").open("a") as fh:
        fh.write(f"g, {PRINCIPAL}, role:admin, *\n")
    return folder


def _seed(kubeconfig: Path) -> None:
    """A Deployment to scale and a ready InferenceService to call, in namespace ``soak`` (made by the sandbox)."""
    from kubernetes import client, config

    from opsgate.tools.tensors import MODELS_DIR_DEFAULT

    api: Any = config.new_client_from_config(str(kubeconfig))
    apps: Any = client.AppsV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    apps.create_namespaced_deployment(NS, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:1.0"}]}}}})
    isvc = ("serving.kserve.io", "v1beta1", NS, "inferenceservices")
    custom.create_namespaced_custom_object(*isvc, {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "iris"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "protocolVersion": "v2",
                                         "storageUri": f"file://{MODELS_DIR_DEFAULT}/iris.onnx"}}}})
    deadline = time.monotonic() + 30
    while not (custom.get_namespaced_custom_object(*isvc, "iris").get("status") or {}).get("url"):
        if time.monotonic() > deadline:
            raise RuntimeError("the soak InferenceService never became ready")
        time.sleep(0.05)
    api.close()


def _check(result: Any, expected: str | None) -> str | None:
    """None when the call was answered as the mix expects, else what went wrong."""
    if expected is None:
        if result.is_error:
            return f"error {result.content[0].text[:200]}"
        return None if isinstance(result.structured_content, dict) else "no structured content"
    error = _error_of(result)
    if error is None or error.get("code") != expected or not error.get("message"):
        return f"expected {expected}, got {result.content[0].text if result.content else result}"[:300]
    return None


def _error_of(result: Any) -> dict[str, Any] | None:
    """The error envelope, from the text content where opsgate puts it (README "Errors")."""
    from opsgate.server.gate import error_of

    return error_of(result)


async def soak(tmp: Path, calls: int, *, window: int = WINDOW, warmup: int = WARMUP,
               progress: Callable[[int, float, float], None] | None = None) -> SoakResult:
    """``calls`` calls of the mix over one session; the sandbox and the server each run in their own process.

    Latency is compared over the first and last ``window`` calls; RSS is read after ``warmup`` calls
    and every ``window`` calls.
    """
    from bench.sandbox_process import SandboxProcess
    from opsgate.audit import verify_log

    if calls % len(MIX) or window % len(MIX) or calls < 2 * window or warmup >= calls:
        raise ValueError(f"calls and window must be multiples of {len(MIX)}, calls at least two windows")
    tmp.mkdir(parents=True, exist_ok=True)
    audit = tmp / "soak-audit.jsonl"
    kubeconfig = tmp / "soak-kubeconfig"
    with SandboxProcess(kubeconfig, [NS], rollout_delay=0.02):
        _seed(kubeconfig)
        args = ["-m", "opsgate.server", "serve", "--audit-log", str(audit), "--principal", PRINCIPAL,
                "--policy", str(_policy(tmp)), "--kubeconfig", str(kubeconfig)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") and k != "KUBECONFIG"}
        params = StdioServerParameters(command=sys.executable, args=args, env=env)
        latencies: list[float] = []
        series: list[float] = []
        unexpected: list[str] = []
        codes: Counter[str] = Counter()
        with (tmp / "soak-server.stderr").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                pid = server_pid(str(audit))
                cold = rss_mb(pid)
                start_rss = cold
                started = time.perf_counter()
                for i in range(calls):
                    tool, arguments, expected = MIX[i % len(MIX)]
                    t0 = time.perf_counter()
                    result = await session.call_tool(tool, arguments, read_timeout_seconds=60)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    problem = _check(result, expected)
                    if problem is not None:
                        unexpected.append(f"call {i} {tool}: {problem}")
                    codes[(_error_of(result) or {}).get("code", "?") if result.is_error else "ok"] += 1
                    if i + 1 == warmup:
                        start_rss = rss_mb(pid)
                    if (i + 1) % window == 0:
                        series.append(rss_mb(pid))
                        if progress is not None:
                            progress(i + 1, series[-1], statistics.median(latencies[-window:]))
                seconds = time.perf_counter() - started
                end_rss = rss_mb(pid)
    lines = [json.loads(line) for line in audit.read_bytes().split(b"\n") if line.strip()]
    t0 = time.perf_counter()
    report = verify_log(audit)
    verify_seconds = time.perf_counter() - t0
    return SoakResult(
        calls=calls, seconds=seconds, latencies_ms=latencies, rss_cold_mb=cold, rss_start_mb=start_rss,
        rss_end_mb=end_rss, rss_series_mb=series, window=window, unexpected=unexpected, codes=codes,
        decisions=sum(1 for r in lines if r.get("stage") == "decision"), records=report.records,
        verify_ok=report.ok, verify_problem=report.problem, verify_seconds=verify_seconds,
    )


async def run(tmp: Path, row: Row, calls: int = 20_000) -> SoakResult:
    """The soak's figures as rows of the benchmark report; the result for the memory rows beside them."""
    r = await soak(tmp / "soak", calls)
    row(f"soak: mixed calls over one stdio session ({len(MIX)}-call mix)", f"{r.calls}", "",
        "every call answered as expected" + ("" if not r.unexpected else f" ({len(r.unexpected)} NOT)"))
    row("soak: server RSS after warm-up -> end", f"{r.rss_start_mb:.1f} -> {r.rss_end_mb:.1f} MB",
        f"{r.rss_cold_mb:.1f} MB at initialize")
    row("soak: server RSS growth", f"{r.growth_mb:+.1f} MB", "0 MB", f"< {GROWTH_TARGET_MB:g} MB")
    row(f"soak: p50 latency, last {WINDOW} calls", f"{r.p50_last:.2f} ms", f"{r.p50_first:.2f} ms (first {WINDOW})",
        f"within {DRIFT_TARGET:.0%} of the first")
    row("soak: throughput", f"{r.rate:.0f} calls/s")
    row("soak: audit log verifies", f"{'ok' if r.verify_ok else 'DAMAGED'}: {r.records} records in "
        f"{r.verify_seconds:.2f} s", "", "ok")
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    options = parser.parse_args()

    def progress(done: int, rss: float, p50: float) -> None:
        print(f"  {done:>6} calls  RSS {rss:7.1f} MB  p50 of the last {WINDOW} {p50:6.2f} ms", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmpdir:
        r = asyncio.run(soak(Path(tmpdir), options.calls, progress=progress))
    print(f"calls            {r.calls} in {r.seconds:.1f} s ({r.rate:.0f} calls/s); outcomes {dict(r.codes)}")
    print(f"server RSS       {r.rss_cold_mb:.1f} MB at initialize, {r.rss_start_mb:.1f} MB after {WARMUP} calls, "
          f"{r.rss_end_mb:.1f} MB at the end: {r.growth_mb:+.1f} MB (target < {GROWTH_TARGET_MB:g} MB)")
    drift = r.p50_last / r.p50_first - 1
    print(f"p50 latency      first {WINDOW}: {r.p50_first:.2f} ms, last {WINDOW}: {r.p50_last:.2f} ms "
          f"({drift:+.0%}, target within {DRIFT_TARGET:.0%})")
    print(f"audit log        {'verifies' if r.verify_ok else 'DAMAGED: ' + str(r.verify_problem)}, "
          f"{r.records} records ({r.decisions} decisions), verified in {r.verify_seconds:.2f} s")
    if r.unexpected:
        print(f"UNEXPECTED       {len(r.unexpected)} calls, first: {r.unexpected[0]}")
    sys.exit(0 if r.verify_ok and not r.unexpected else 1)


if __name__ == "__main__":
    main()
