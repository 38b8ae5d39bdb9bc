"""The deploy's policy ConfigMap hot-reloads (issue 21 item 5): a running server picks up a policy changed the
way the kubelet changes a mounted ConfigMap, by swapping the ``..data`` link to a new timestamped folder in
one rename, with every file a link through ``..data`` (never rewritten in place)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.harness import Served, serve

pytestmark = pytest.mark.anyio

DEPLOY_POLICY = Path(__file__).resolve().parents[2] / "deploy" / "base" / "policy"


def project(volume: Path, version: str, files: dict[str, bytes]) -> None:
    """What the kubelet's atomic writer does: write a new ``..VERSION`` folder, point ``..data`` at it with one
    rename, and keep each file a link to ``..data/FILE``."""
    target = volume / f"..{version}"
    target.mkdir()
    for name, data in files.items():
        (target / name).write_bytes(data)
    (volume / "..data_tmp").symlink_to(target.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


async def _scale_allowed(s: Served) -> dict[str, Any]:
    result = await s.call("explain_access", {"tool": "scale", "namespace": "team-a"})
    return result.structured_content  # type: ignore[no-any-return]


async def test_a_configmap_style_update_of_the_deployed_policy_is_reloaded(tmp_path: Path) -> None:
    volume = tmp_path / "policy"
    volume.mkdir()
    files = {p.name: p.read_bytes() for p in DEPLOY_POLICY.iterdir()}
    project(volume, "2026_01_01_00_00_00.1", files)
    async with serve(tmp_path, "--principal", "carol", "--policy", str(volume), "--policy-reload-seconds",
                     "0.2") as s:
        before = await _scale_allowed(s)
        assert before["allowed"] is False  # carol is a viewer: no write
        grant = files["policy.csv"] + b"g, carol, role:operator, team-*\n"
        project(volume, "2026_01_01_00_01_00.2", {**files, "policy.csv": grant})
        shutil.rmtree(volume / "..2026_01_01_00_00_00.1")  # the kubelet removes the old folder
        with anyio.fail_after(15):
            while not (after := await _scale_allowed(s))["allowed"]:
                await anyio.sleep(0.1)
        assert after["policy_hash"] != before["policy_hash"]
    assert [r["stage"] for r in s.records()].count("policy_reload") == 1
