"""Calls that skip the worker-thread hop (issue 18): what runs on the event loop and what still goes to a thread.

A hop costs ~0.1 ms a call, more than an iris inference or whoami's description of a started cluster; a call
that would wait (a model not loaded, a large input, a sandbox not started) must still leave the loop.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from opsgate.server.catalog import QUICK_RUN_S, inference_tools, quick_runs, runs_on_loop
from opsgate.server.cluster import Cluster, SandboxKube
from opsgate.tools.context import CallContext
from opsgate.tools.inline import WouldWait, at_once_or_in_thread, cache_only, no_wait
from opsgate.tools.kube import Kube, KubeTarget
from opsgate.tools.tensors import MODELS_DIR_DEFAULT, InferArgs

pytestmark = pytest.mark.anyio

ONE_ROW = {"features": [[5.1, 3.5, 1.4, 0.2]]}


def test_a_model_runs_on_the_loop_only_up_to_the_input_it_ran_quickly() -> None:
    quick: dict[str, int] = {}
    assert not runs_on_loop(quick.get("iris"), 4)  # never run: the thread (it may have to load)
    quick_runs(quick, "iris", 4, QUICK_RUN_S / 2)
    assert runs_on_loop(quick.get("iris"), 4) and runs_on_loop(quick.get("iris"), 1)
    assert not runs_on_loop(quick.get("iris"), 5)  # a bigger input than any quick run
    quick_runs(quick, "iris", 400, QUICK_RUN_S * 10)  # slow once (a busy machine, a replaced file)
    assert not runs_on_loop(quick.get("iris"), 4)  # threads again until a quick run says otherwise


async def test_at_once_or_in_thread_runs_on_the_loop_unless_it_would_wait() -> None:
    loop = threading.current_thread()

    def answer(waits: bool) -> threading.Thread:
        if waits:
            no_wait()
        return threading.current_thread()

    assert await at_once_or_in_thread(answer, False) is loop
    assert await at_once_or_in_thread(answer, True) is not loop  # stopped before it waited, run in a thread
    with pytest.raises(ValueError):  # its own errors are not a wait: they come through, not a second run
        await at_once_or_in_thread(int, "not a number")


async def test_infer_leaves_the_loop_until_the_model_ran_quickly(tmp_path: Path) -> None:
    """The real spec with the shipped iris model: the first call in a thread (the session is built there), then
    on the loop once a quick run was seen; the model file replaced on disk goes back to a thread."""
    folder = tmp_path / "models"
    folder.mkdir()
    model = folder / "iris.onnx"
    model.write_bytes((MODELS_DIR_DEFAULT / "iris.onnx").read_bytes())
    spec = next(s for s in inference_tools(folder) if s.name == "infer")
    ctx = CallContext(call_id="c", principal="p")
    main = threading.get_ident()
    on_loop: list[bool] = []  # per onnxruntime run, watched by the interpreter's profiler: on this thread?

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "run" and "onnxruntime" in frame.f_code.co_filename:
            on_loop.append(threading.get_ident() == main)

    async def call() -> Any:
        return await spec.run(InferArgs(model="iris", inputs=ONE_ROW), ctx)

    threading.setprofile(watch)
    sys.setprofile(watch)
    try:
        first = await call()
        for _ in range(30):  # one quick run is enough, unless the machine is very busy
            await call()
        quick = len(on_loop)
        os.utime(model, ns=(1, 1))  # a new stamp: the session is built again, never on the loop
        again = await call()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert again.outputs == first.outputs
    assert len(on_loop) == quick + 1
    assert on_loop[0] is False  # the first run built the session: in a thread
    assert any(on_loop[1:quick]), "an iris run never went on the loop"
    assert on_loop[-1] is False  # the replaced model: loaded and run in a thread


def test_whoami_describes_the_cluster_on_the_loop_once_nothing_has_to_start(tmp_path: Path) -> None:
    """whoami's cluster facts: a kubeconfig's at once; a sandbox not started yet stops before starting it (the
    worker thread starts it), and once started is described on the loop."""
    kubeconfig = Cluster(Kube(KubeTarget(kubeconfig=tmp_path / "config")), "kubeconfig")
    with cache_only():
        assert kubeconfig.describe()["kubeconfig"] == str(tmp_path / "config")
    sandbox = SandboxKube(None, (3.0, 10.0))
    cluster = Cluster(sandbox, "sandbox")
    try:
        with cache_only(), pytest.raises(WouldWait):
            cluster.describe()
        assert sandbox.sandbox is None  # nothing was started on the loop
        started = cluster.describe()  # as the worker thread does
        with cache_only():
            assert cluster.describe() == started
    finally:
        cluster.close()
