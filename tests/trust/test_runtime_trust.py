"""Issue 15, untrusted text and resources at run time (items 11, 17, 18, 20, 21), through the real stdio server.

Each test starts ``opsgate serve`` as a subprocess (tests/harness.py) on a sandbox
cluster or a models folder the test builds, and drives it with the MCP SDK's client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from opsgate.server.sandbox import SandboxCluster
from tests.harness import Served, ok, serve, shipped_policy

pytestmark = pytest.mark.anyio

ADMIN = "runtime-admin"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.02) as sandbox:
        yield sandbox


@asynccontextmanager
async def serve_cluster(cluster: SandboxCluster, tmp_path: Path, *flags: str,
                        policy_lines: tuple[str, ...] = (f"g, {ADMIN}, role:admin, *",),
                        bounds: str | None = None) -> AsyncIterator[Served]:
    """A server for ADMIN on the sandbox, reached through a kubeconfig, with the shipped policy."""
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", *policy_lines)
    if bounds is not None:
        (policy / "bounds.toml").write_text(bounds)
    async with serve(tmp_path, "--principal", ADMIN, "--kubeconfig", str(kubeconfig), "--policy", str(policy),
                     *flags) as served:
        yield served


# --------------------------------------------------------------------------- item 21


async def test_a_slow_cluster_does_not_stall_whoami(cluster: SandboxCluster, tmp_path: Path) -> None:
    """Issue 15 item 21: with 60 reads waiting on a slow API, whoami (and its audit appends) still answer at once.

    Cluster calls run on their own thread limiter; audit appends and fast tools keep anyio's
    default one. Before, the 60 reads held all 40 default threads and whoami waited for them.
    """
    namespace = "default"
    delay = 4.0
    async with serve_cluster(cluster, tmp_path, "--kube-timeout-seconds", "30") as s:
        ok(await s.call("whoami"))  # warm: the first call pays for imports
        cluster.inject_fault("GET", r"/deployments/", delay=delay, times=0)
        try:
            async with anyio.create_task_group() as tasks:
                for i in range(60):
                    tasks.start_soon(s.call, "rollout_status", {"name": f"web-{i}", "namespace": namespace})
                await anyio.sleep(1.0)  # every read is in flight, waiting on the cluster
                started = time.monotonic()
                ok(await s.call("whoami"))
                took = time.monotonic() - started
        finally:
            cluster.clear_faults()
    print(f"\nwhoami with 60 slow cluster reads in flight: {took * 1000:.0f} ms")
    assert took < 3.0, f"whoami waited {took:.1f} s behind slow cluster reads"
    outcomes = [r for r in s.records() if r.get("stage") == "outcome"]
    assert sum(1 for r in outcomes if r.get("tool") == "rollout_status") == 60, "every read has its outcome"

