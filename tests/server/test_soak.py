"""A short soak for CI: 1,000 mixed calls over one stdio session (``bench/soak_bench.py`` does 20,000).

Loose bounds, since CI machines are shared: every call answered as the mix expects,
one decision record per call, the log verifies, server RSS grows by less than 50 MB.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.anyio, pytest.mark.stdio]  # the server runs in bench/soak_bench.py

BENCH = Path(__file__).resolve().parents[2] / "bench" / "soak_bench.py"


def soak_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_bench", module)  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads server memory from /proc")
async def test_a_thousand_mixed_calls_hold_steady(tmp_path: Path) -> None:
    bench = soak_bench()
    r = await bench.soak(tmp_path, 1000, window=200, warmup=100)
    assert not r.unexpected, r.unexpected[:5]
    assert r.decisions == r.calls, "one decision record per call"
    assert r.verify_ok, r.verify_problem
    assert r.growth_mb < 50, f"server RSS grew {r.growth_mb:.1f} MB ({r.rss_start_mb:.1f} -> {r.rss_end_mb:.1f})"
    print(f"\nsoak {r.calls} calls: {r.rate:.0f} calls/s, RSS {r.rss_start_mb:.1f} -> {r.rss_end_mb:.1f} MB, "
          f"p50 first/last 200 {r.p50_first:.2f} / {r.p50_last:.2f} ms")
