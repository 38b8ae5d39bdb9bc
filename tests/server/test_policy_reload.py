"""Hot reload through a live server: a good change swaps in and is audited; a broken one keeps the old policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from opsgate.audit import verify_log
from tests.harness import Served, serve, write_policy

pytestmark = pytest.mark.anyio

BASE = ["g, role:everyone, role:viewer, *", "p, role:viewer, *, *, read, allow"]


async def _explain(s: Served) -> dict[str, Any]:
    return (await s.call("explain_access", {"tool": "infer"})).structured_content  # type: ignore[no-any-return]


async def _until(s: Served, allowed: bool) -> dict[str, Any]:
    with anyio.fail_after(15):
        while (answer := await _explain(s))["allowed"] != allowed:
            await anyio.sleep(0.1)
    return answer


async def test_reload_swaps_a_good_policy_and_keeps_the_old_on_a_broken_one(tmp_path: Path) -> None:
    folder = write_policy(tmp_path / "policy", BASE)
    async with serve(tmp_path, "--principal", "bob", "--policy", str(folder), "--policy-reload-seconds", "0.2") as s:
        first = await _until(s, allowed=True)
        (folder / "policy.csv").write_text("\n".join([*BASE, "p, bob, *, infer, read, deny"]) + "\n")
        denied = await _until(s, allowed=False)
        assert denied["source"].endswith("policy.csv:3")
        assert denied["policy_hash"] != first["policy_hash"]

        (folder / "policy.csv").write_text("\n".join([*BASE, "p, bob, *, infer, read, Deny"]) + "\n")
        with anyio.fail_after(15):
            while not any(r["stage"] == "policy_reload_failed" for r in s.records()):
                await anyio.sleep(0.1)
        still = await _explain(s)
        assert still["allowed"] is False and still["policy_hash"] == denied["policy_hash"]

        result = await s.call("infer", {"model": "iris", "inputs": {"features": [[1, 2, 3, 4]]}})
        assert result.is_error
    records = s.records()
    reloads = [r for r in records if r["stage"] == "policy_reload"]
    assert len(reloads) == 1
    assert reloads[0]["previous_policy_hash"] == first["policy_hash"]
    assert reloads[0]["policy_hash"] == denied["policy_hash"]
    failed = next(r for r in records if r["stage"] == "policy_reload_failed")
    assert "policy.csv:3" in failed["error"] and failed["kept_policy_hash"] == denied["policy_hash"]
    last_infer = [r for r in records if r.get("tool") == "infer" and r["stage"] == "decision"][-1]
    assert last_infer["decision"]["policy_hash"] == denied["policy_hash"]
    assert verify_log(s.audit_log).ok
