"""GitOps mode's cost (issue 19): time from tool call to pushed commit on a local bare remote, p50 over 50 changes,
and the same call in direct mode beside it, taking turns call by call.

    python bench/gitops_bench.py [N]    # or: python bench/run.py gitops

One real server over stdio; the sandbox cluster in this process (reached through a kubeconfig, as a real one);
a bare remote and a clone as in tests/gitops. Each GitOps call is ``scale`` of a plain manifest to a new count:
a worktree, an edit, a parse, a server-side dry run, a commit, a fetch and a push, and its worktree removed.
The direct call is ``scale`` of the same Deployment in an unmapped namespace (one read, one patch).
Figures, not a test: read them in context (2 cores shared with other work when this was written).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


async def measure(n: int) -> dict[str, list[float]]:
    from kubernetes import client, config

    from opsgate.sandbox import SandboxCluster
    from tests.gitops.repo import config_file, make_repo
    from tests.harness import server_env, write_policy

    times: dict[str, list[float]] = {"gitops": [], "direct": []}
    with tempfile.TemporaryDirectory() as folder, SandboxCluster(rollout_delay=0.05) as cluster:
        tmp = Path(folder)
        api: Any = config.new_client_from_config_dict(cluster.kubeconfig())
        core: Any = client.CoreV1Api(api)
        names = {kind: f"{kind}-{uuid.uuid4().hex[:6]}" for kind in ("gk", "gp", "direct")}
        for name in names.values():
            core.create_namespace({"metadata": {"name": name}})
        repo = make_repo(tmp / "git", names["gk"], names["gp"])
        apps: Any = client.AppsV1Api(api)
        apps.create_namespaced_deployment(names["direct"], {
            "metadata": {"name": "api"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [
                {"name": "api", "image": "registry.example.com/api:1.0"}]}}}})
        kubeconfig = tmp / "kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        policy = write_policy(tmp / "policy", ["p, alice, *, *, *, allow"])  # no rate limit: 100 writes a run
        settings = config_file(tmp / "opsgate.toml", repo)
        (tmp / "home").mkdir()
        params = StdioServerParameters(command=sys.executable, args=[
            "-m", "opsgate.server", "serve", "--audit-log", str(tmp / "audit.jsonl"), "--principal", "alice",
            "--kubeconfig", str(kubeconfig), "--policy", str(policy), "--config", str(settings),
            "--log-level", "warning"], env=server_env({"HOME": str(tmp / "home")}))
        with (tmp / "stderr").open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                for i in range(n + 2):  # two warm-up rounds
                    replicas = 3 + i % 6
                    for mode, ns in (("gitops", names["gp"]), ("direct", names["direct"])):
                        started = time.perf_counter()
                        result = await session.call_tool("scale", {"name": "api", "namespace": ns,
                                                                   "replicas": replicas})
                        elapsed = time.perf_counter() - started
                        assert not result.is_error, result.content
                        if mode == "gitops":
                            assert result.structured_content and result.structured_content["pushed"] is True
                        if i >= 2:
                            times[mode].append(elapsed * 1000)
    return times


async def run(row: Callable[[str, str, str, str], None], n: int = 50) -> None:
    """``bench/run.py gitops``: the two p50s and p90s as rows, the direct call as the GitOps call's floor."""
    times = await measure(n)
    gitops, direct = sorted(times["gitops"]), sorted(times["direct"])
    for q, label in ((0.5, "p50"), (0.9, "p90")):
        g, d = gitops[int(len(gitops) * q)], direct[int(len(direct) * q)]
        row(f"GitOps scale, call to pushed commit {label} (n={len(gitops)}; issue 19)", f"{g:.1f} ms",
            f"{d:.1f} ms direct scale", "local bare remote; commit, fetch, push")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    times = asyncio.run(measure(n))
    for mode, values in times.items():
        values.sort()
        print(f"scale {mode:6}: p50 {statistics.median(values):7.1f} ms  p90 {values[int(len(values) * 0.9)]:7.1f} ms"
              f"  (n={len(values)})")


if __name__ == "__main__":
    main()
