"""Which tools this server offers, bound to their configuration. Registration happens
only through ``Gate.register``; this module just builds the specs."""

from __future__ import annotations

from typing import Any

import anyio

from opsgate.tools.context import CallContext
from opsgate.tools.inference import (
    MODELS_DIR_DEFAULT,
    InferArgs,
    InferResult,
    ListModelsArgs,
    ListModelsResult,
    ModelStore,
    TensorSpec,
)

from .config import Settings
from .toolspec import ToolSpec


def inference_tools(store: ModelStore) -> list[ToolSpec[Any, Any]]:
    async def list_models(_: ListModelsArgs, ctx: CallContext) -> ListModelsResult:
        return await anyio.to_thread.run_sync(store.list_models)

    async def infer(args: InferArgs, ctx: CallContext) -> InferResult:
        # onnxruntime releases the GIL; a worker thread keeps the event loop answering.
        return await anyio.to_thread.run_sync(store.infer, args)

    def render_models(r: ListModelsResult) -> str:
        def sig(specs: list[TensorSpec]) -> str:
            return ", ".join(f"{s.name}:{s.dtype}{s.shape}" for s in specs)

        return "\n".join(f"{m.name}: ({sig(m.inputs)}) -> ({sig(m.outputs)})" for m in r.models) or "no models"

    specs: list[ToolSpec[Any, Any]] = [
        ToolSpec(
            name="list_models",
            description="Local ONNX models you can run with infer, with input/output names, dtypes and shapes.",
            args_model=ListModelsArgs, result_model=ListModelsResult, run=list_models, render=render_models,
        ),
        ToolSpec(
            name="infer",
            description="Run a local ONNX model (onnxruntime). inputs: {input name: nested list of numbers} "
            "matching the model's signature from list_models.",
            args_model=InferArgs, result_model=InferResult, run=infer,
        ),
    ]
    return specs


def build_tools(settings: Settings) -> list[ToolSpec[Any, Any]]:
    """Tools that need configuration but not the gate itself."""
    store = ModelStore(settings.models or MODELS_DIR_DEFAULT)
    return inference_tools(store)
