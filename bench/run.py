"""Every benchmark of the project, in one run, each figure beside its floor and target (about 5 minutes).

    python bench/run.py              # every part: prints a table and writes bench/RESULTS.md
    python bench/run.py PART [PART]  # only these, printed, nothing written; PART is one of
                                     # cold-start tools-list infer per-call polls kserve policy audit memory
                                     # telemetry gitops http

Figures, not tests: nothing here fails on a busy machine; read them in context.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench.* as the tests import it: one module name for each file
BATCH1 = {"features": [[5.1, 3.5, 1.4, 0.2]]}
ROWS: list[tuple[str, str, str, str]] = []  # figure, value, floor, target


def row(figure: str, value: str, floor: str = "", target: str = "") -> None:
    ROWS.append((figure, value, floor, target))
    print(f"{figure:<48} {value:>14}  floor {floor or '-':>12}  target {target or '-'}", file=sys.stderr)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def clean_env() -> dict[str, str]:
    """No OPSGATE_* settings, and bytecode caching on, as in an install: with PYTHONDONTWRITEBYTECODE set
    (some shells and CI images set it), every start would compile each edited module of ours from source
    while the SDK's came compiled from site-packages, and the cold start would measure the compiler."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") and k != "PYTHONDONTWRITEBYTECODE"}


@asynccontextmanager
async def session(args: list[str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=args, env=clean_env())
    with open(os.devnull, "w") as devnull:
        async with stdio_client(params, errlog=devnull) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            yield s


def opsgate_args(tmp: Path, *extra: str) -> list[str]:
    return ["-m", "opsgate.server", "serve", "--audit-log", str(tmp / "bench-audit.jsonl"), *extra]


async def cold_start(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with session(args):
            times.append((time.perf_counter() - started) * 1000)
    return times


async def round_trips(s: ClientSession, tool: str, arguments: dict[str, Any], n: int) -> list[float]:
    for _ in range(20):
        await s.call_tool(tool, arguments)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        result = await s.call_tool(tool, arguments)
        out.append((time.perf_counter() - started) * 1000)
        assert not result.is_error, result
    return out


def raw_session_run(n: int) -> list[float]:
    import numpy as np
    import onnxruntime as ort

    from opsgate.tools.inference import MODELS_DIR_DEFAULT

    sess = ort.InferenceSession(str(MODELS_DIR_DEFAULT / "iris.onnx"), providers=["CPUExecutionProvider"])
    x = {"features": np.asarray(BATCH1["features"], dtype=np.float32)}
    for _ in range(50):
        sess.run(None, x)
    out = []
    for _ in range(n):
        started = time.perf_counter()
        sess.run(None, x)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def gate_overhead(tmp: Path, n: int) -> tuple[list[float], list[float]]:
    """In-process: Gate.call on a no-op tool (policy + two fsynced records) vs calling the no-op."""

    from bench.noop_tool import NoArgs, noop, noop_spec
    from opsgate.audit import AuditLog
    from opsgate.policies import default_policy
    from opsgate.server.gate import Gate
    from opsgate.server.logs import configure_logging
    from opsgate.server.records import Caller
    from opsgate.tools.context import CallContext

    configure_logging("info")  # as the server logs: structlog's default would print every debug line
    caller = Caller("bench", "config", "bench", "bench", "0", "s")
    gate = Gate(policy=default_policy(), audit=AuditLog(tmp / "gate.jsonl"), caller=caller)
    gate.register([noop_spec()])
    gated, direct = [], []
    ctx = CallContext(call_id="x", principal="bench")
    for i in range(n + 50):
        started = time.perf_counter()
        await gate.call("noop", {}, caller)
        t1 = time.perf_counter()
        await noop(NoArgs(), ctx)
        t2 = time.perf_counter()
        if i >= 50:
            gated.append((t1 - started) * 1000)
            direct.append((t2 - t1) * 1000)
    gate.audit.close()
    return gated, direct


# Issue 14: tools/list of the peers, as published (compact JSON), and ours before the schemas were made lean.
PEER_TOOLS_LIST = "Go reference server 24.4 KB for 20 tools; two other peers ~24 KB for 23 and 26"
TOOLS_LIST_BEFORE = {"admin": 29_372, "viewer": 14_160}
TOOLS_LIST_BUDGET = {"admin": 10 * 1024, "viewer": 6 * 1024}


async def tools_list_sizes(tmp: Path) -> None:
    """Compact JSON of the tools array as a client receives it: an admin (every tool) and a viewer (the
    shipped policy). Cheap (two server starts): ``python bench/run.py tools-list`` runs it alone."""
    from importlib.resources import files

    admin = tmp / "bench-admin.csv"
    admin.write_text("p, bench, *, *, *, allow\n")
    shipped = str(files("opsgate.policies").joinpath("policy.csv"))
    for who, policy in (("admin", str(admin)), ("viewer", shipped)):
        async with session(opsgate_args(tmp, "--principal", "bench", "--policy", policy)) as s:
            tools = (await s.list_tools()).model_dump(mode="json", by_alias=True, exclude_none=True)["tools"]
        size = len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False).encode())
        row(f"tools/list size, {who} ({len(tools)} tools; issue 14)", f"{size} B",
            f"was {TOOLS_LIST_BEFORE[who]} B", f"<= {TOOLS_LIST_BUDGET[who]} B; peers: {PEER_TOOLS_LIST}")


async def cold_starts(tmp: Path, ours: list[str]) -> None:
    """Spawn to initialize, opsgate and the bare SDK server taking turns (one warm-up each)."""
    bare = [str(HERE / "bare_server.py")]
    bare_cold: list[float] = []
    ours_cold: list[float] = []
    for i in range(9):
        for args, out in ((bare, bare_cold), (ours, ours_cold)) if i % 2 else ((ours, ours_cold), (bare, bare_cold)):
            times = await cold_start(args, 1)
            if i:
                out.extend(times)
    b, o = statistics.median(bare_cold), statistics.median(ours_cold)
    row("cold start, spawn to initialize (p50)", f"{o:.0f} ms", f"{b:.0f} ms bare SDK", "floor + 100 ms")
    row("cold start overhead over bare SDK", f"{o - b:+.0f} ms", "0 ms", "< 100 ms")


async def bare_memory(calls: int = 20_000) -> tuple[float, float]:
    """RSS of the bare SDK server after initialize and after ``calls`` no-op calls (idle, between calls)."""
    from bench.soak_bench import rss_mb, server_pid

    with tempfile.TemporaryDirectory() as tmpdir:
        marker = str(Path(tmpdir) / "bare-memory")
        # the marker (and "serve") on its command line finds the process, as the soak finds opsgate's
        async with session([str(HERE / "bare_server.py"), marker, "serve"]) as s:
            pid = server_pid(marker)
            cold = rss_mb(pid)
            for _ in range(calls):
                await s.call_tool("noop", {})
            return cold, rss_mb(pid)


async def memory(tmp: Path) -> None:
    """Idle RSS after initialize and after 20,000 calls: opsgate (the soak's mix) beside the bare SDK server."""
    from bench.soak_bench import run as soak

    r = await soak(tmp, row)
    cold, end = await bare_memory(r.calls)
    row("memory: server RSS after initialize (idle)", f"{r.rss_cold_mb:.1f} MB", f"{cold:.1f} MB bare SDK", "")
    row(f"memory: server RSS after {r.calls:,} calls (idle)", f"{r.rss_end_mb:.1f} MB",
        f"{end:.1f} MB bare SDK ({r.calls:,} no-op calls)", "no growth after warm-up (soak rows)")


def fsync_floor(tmp: Path, n: int = 500) -> tuple[list[float], list[float]]:
    """fsync of a record-sized append after 1 ms idle (what a server answering one call at a time sees) and right
    after another (what a loop in one process sees), interleaved on one file, ms."""
    fd = os.open(tmp / "fsync-floor", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    idle: list[float] = []
    hot: list[float] = []
    try:
        for _ in range(n):
            time.sleep(0.001)
            for out in (idle, hot):
                os.write(fd, b"x" * 1400 + b"\n")
                started = time.perf_counter()
                os.fsync(fd)
                out.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
    return idle, hot


async def infer_and_gate(tmp: Path, ours: list[str]) -> None:
    async with session(ours) as s:
        listing = await s.list_tools()
        size = len(json.dumps(listing.model_dump(mode="json", by_alias=True, exclude_none=True),
                              separators=(",", ":")))
        tools = listing.model_dump(mode="json", by_alias=True, exclude_none=True)["tools"]
        first = [t for t in tools if t["name"] in ("whoami", "explain_access", "list_models", "infer")]
        row("tools/list size, the first four tools (issue 2)", f"{len(json.dumps(first, separators=(',', ':')))} B",
            "", "< 6144 B")
        row(f"tools/list size, all {len(tools)} tools", f"{size} B", "", "")
        infer = await round_trips(s, "infer", {"model": "iris", "inputs": BATCH1}, 1000)
        who = await round_trips(s, "whoami", {}, 300)
    async with session([str(HERE / "bare_server.py")]) as s:
        noop = await round_trips(s, "noop", {}, 1000)
    raw = raw_session_run(2000)
    row("infer round trip over stdio p50", f"{statistics.median(infer):.3f} ms",
        f"{statistics.median(noop):.3f} ms", "floor + 1 ms (no-op tool, bare SDK)")
    shm = Path("/dev/shm")
    if shm.is_dir():  # the same server with its audit log in memory: what is left without the disk's wait
        with tempfile.TemporaryDirectory(dir=shm) as mem:
            async with session([*ours[:ours.index("--audit-log") + 1], str(Path(mem) / "a.jsonl"),
                                *ours[ours.index("--audit-log") + 2:]]) as s:
                in_memory = await round_trips(s, "infer", {"model": "iris", "inputs": BATCH1}, 1000)
        row("  infer p50, audit log on tmpfs (fsync costs nothing)", f"{statistics.median(in_memory):.3f} ms",
            f"{statistics.median(noop):.3f} ms", "the rest of the gap is the disk: next rows")
    idle, hot = fsync_floor(tmp)
    row("  fsync of one 1.4 KB append after 1 ms idle p50 (a call's)", f"{statistics.median(idle):.3f} ms",
        f"{statistics.median(hot):.3f} ms back-to-back", "the disk's, not ours: in process the gate's fsyncs "
        "are back-to-back")
    row("infer round trip over stdio p95", f"{pct(infer, 0.95):.3f} ms", f"{pct(noop, 0.95):.3f} ms")
    row("raw onnxruntime session.run p50 (iris, batch 1)", f"{statistics.median(raw) * 1000:.1f} us")
    row("whoami round trip p50", f"{statistics.median(who):.3f} ms", f"{statistics.median(noop):.3f} ms")
    gated, direct = await gate_overhead(tmp, 2000)
    row("gate overhead per call p50, in process (policy + 2 fsynced records)",
        f"{statistics.median(gated) - statistics.median(direct):.3f} ms",
        f"{statistics.median(direct) * 1000:.1f} us direct", "not the per-call cost over stdio: see per call rows")
    row("gate overhead per call p95, in process", f"{pct(gated, 0.95):.3f} ms")


PARTS = ("cold-start", "tools-list", "infer", "per-call", "polls", "kserve", "policy", "audit", "memory",
         "telemetry", "gitops", "http")


async def main(parts: list[str]) -> None:
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part {unknown}; parts: {' '.join(PARTS)} (none: all, and RESULTS.md written)")
    chosen = parts or list(PARTS)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        admin = tmp / "bench-admin.csv"
        admin.write_text("p, bench, *, *, *, allow\n")  # every tool listed and callable
        ours = opsgate_args(tmp, "--principal", "bench", "--policy", str(admin))
        if "cold-start" in chosen:
            await cold_starts(tmp, ours)
        if "tools-list" in chosen:
            await tools_list_sizes(tmp)
        if "infer" in chosen:
            await infer_and_gate(tmp, ours)
        if "per-call" in chosen or "polls" in chosen:
            from bench.deployments_bench import run as deployments

            await deployments(tmp, row, opsgate_args, parts=tuple(p for p in ("per-call", "polls") if p in chosen))
        if "kserve" in chosen:
            from bench.kserve_bench import run as kserve

            await kserve(tmp, row, session, opsgate_args)
        if "policy" in chosen:
            from bench.policy_bench import run as policy

            policy(row)
        if "audit" in chosen:
            from bench.audit_bench import run as audit

            audit(row)
        if "memory" in chosen:
            await memory(tmp)
        if "telemetry" in chosen:
            from bench.telemetry_bench import run as telemetry_cost

            await telemetry_cost(tmp, row)
        if "gitops" in chosen:
            from bench.gitops_bench import run as gitops_cost

            await gitops_cost(row)
        if "http" in chosen:
            from bench.http_bench import run as team_server

            await team_server(tmp, row, session, opsgate_args)
    if not parts:
        write_results()


def write_results() -> None:
    from bench.deployments_bench import table

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}. Floors are measured in the same run.",
        "",
        "| figure | value | floor | target |",
        "| --- | --- | --- | --- |",
        *(f"| {f} | {v} | {fl} | {t} |" for f, v, fl, t in ROWS),
        *table(),
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
