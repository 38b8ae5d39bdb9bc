"""Which tools this server offers, bound to their configuration: the one list serve, doctor and lint read.

Registration happens only through ``Gate.register``; this module just builds the specs."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from opsgate.policies import BoundAttrs, BoundName
from opsgate.tools.bounded import localize_storage, with_models_dir
from opsgate.tools.context import CallContext
from opsgate.tools.inline import at_once_or_in_thread
from opsgate.tools.kube import MAX_CONCURRENT_CALLS, Kube
from opsgate.tools.tensors import (
    MODELS_DIR_DEFAULT,
    InferArgs,
    InferResult,
    ListModelsArgs,
    ListModelsResult,
    TensorSpec,
)
from opsgate.tools.untrusted import name_in_text
from opsgate.vocab.elements import count_elements
from opsgate.vocab.kinds import DEPLOYMENT, INFERENCE_SERVICE

from .access import access_tools
from .config import Settings, SettingsError

if TYPE_CHECKING:
    from opsgate.gitops import GitOpsTarget
    from opsgate.tools import kserve as ks
    from opsgate.tools import workloads as wl
    from opsgate.tools.inference import ModelStore
    from opsgate.tools.workload_types import RollbackArgs, RollbackResult, ScaleArgs, ScaleResult

    from .gate import Gate
from .toolspec import ToolSpec, deferred, deferred_function, input_schema, model_class

# The Kubernetes and KServe tool modules are imported on a tool's first call (its arguments' validation),
# not at start: listing them reads only this file's specs and the pre-built schemas.
_WL = "opsgate.tools.workloads"
_KS = "opsgate.tools.kserve"
_TYPES = "opsgate.tools.workload_types"
_LISTING = "opsgate.tools.listing"
_DRIFT = "opsgate.tools.drift"

_SCHEMAS_FILE: Final = Path(__file__).with_name("tool_schemas.json")


def prebuilt_schemas() -> dict[str, Any]:
    """Every tool's input schema as tools/list shows it, computed at build time (``python -m
    opsgate.server.catalog`` writes it; tests/server/test_tool_schemas.py fails when it drifts from the
    models). An absent file means computing them at start, as before."""
    try:
        return json.loads(_SCHEMAS_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except FileNotFoundError:
        return {}

# Worker threads by kind of work (issue 15 item 21). Audit appends and fast tools (whoami) use anyio's
# default limiter (40 threads); cluster calls, which wait on the network, and model runs, which hold
# cores, each get their own, so neither can take every thread and stall the rest of the server.
CLUSTER_THREADS: Final = MAX_CONCURRENT_CALLS  # as many as the client keeps connections open to the cluster
INFERENCE_THREADS: Final = 4


def scale_workload(kube: Kube, args: ScaleArgs, ctx: CallContext) -> ScaleResult:
    """scale, for the kind the call names: the one place that picks the Deployment or the InferenceService path."""
    from opsgate.tools import kserve as ks
    from opsgate.tools import workloads as wl

    if args.kind == INFERENCE_SERVICE:
        return ks.scale_inference_service(kube, args, ctx)
    return wl.scale_deployment(kube, args, ctx)


def replicas_now(kube: Kube, args: wl.DeployArgs | ScaleArgs | ks.DeployModelArgs) -> BoundAttrs:
    """What ``max_replicas_change`` needs from the cluster, for the kind the call names: the tools' read of
    the replicas now (0 before a create, nothing when unknown)."""
    from opsgate.tools import kserve as ks
    from opsgate.tools import workloads as wl
    from opsgate.tools.workload_types import ScaleArgs

    service = isinstance(args, ks.DeployModelArgs) or (isinstance(args, ScaleArgs) and args.kind == INFERENCE_SERVICE)
    read = ks.current_replicas if service else wl.current_replicas
    return read(kube, args.namespace, args.name)


def rollback_workload(kube: Kube, args: RollbackArgs, ctx: CallContext) -> RollbackResult:
    """rollback, for the kind the call names: kubectl rollout undo, or an InferenceService's canary or spec."""
    from opsgate.tools import kserve as ks
    from opsgate.tools import workloads as wl

    if args.kind == INFERENCE_SERVICE:
        return ks.rollback_inference_service(kube, args, ctx)
    return wl.rollback_deployment(kube, args, ctx)


def gitops_target(settings: Settings) -> GitOpsTarget | None:
    """GitOps mode's settings (README "GitOps mode"), or None when it is off. The forge token is read here,
    once, from the variable the settings name: it is never a flag, a file entry or a logged value."""
    if settings.gitops_repo is None:
        return None
    from pydantic import SecretStr

    from opsgate.gitops import DEFAULT_API, Forge, GitOpsTarget

    forge = None
    if settings.gitops_forge is not None and settings.gitops_forge_project is not None:
        variable = settings.gitops_forge_token_env
        token = os.environ.get(variable) if variable else None
        if variable and not token:
            raise SettingsError(f"gitops_forge_token_env names {variable}, which is not set: no merge request could "
                                "be opened")
        if token:
            forge = Forge(settings.gitops_forge, settings.gitops_forge_url or DEFAULT_API[settings.gitops_forge],
                          settings.gitops_forge_project, SecretStr(token))
    name, _, email = settings.gitops_committer.partition(" <")
    return GitOpsTarget(
        repo=settings.gitops_repo, paths=dict(settings.gitops_paths), default_path=settings.gitops_path,
        base_branch=settings.gitops_base_branch, branch_prefix=settings.gitops_branch_prefix, push=settings.gitops_push,
        remote=settings.gitops_remote, committer=(name, email.rstrip(">")), forge=forge,
        kubectl=str(settings.gitops_kubectl) if settings.gitops_kubectl else None,
    )


def in_git(fn: Callable[..., Any], tool: str, gitops: GitOpsTarget | None) -> Callable[..., Any]:
    """``fn``, or for a namespace GitOps mode maps, the tool's GitOps form (opsgate.gitops.tools): the
    change as a commit in the manifests instead of a write to the cluster (the cluster only dry-runs it)."""
    if gitops is None:
        return fn

    def run(kube: Kube, args: Any, ctx: CallContext, *rest: Any) -> Any:
        if gitops.folder_for(args.namespace) is None:
            return fn(kube, args, ctx, *rest)
        from opsgate.gitops import tools as in_repo

        return getattr(in_repo, tool)(gitops, kube, args, ctx)

    return run


def rendered_in_git(gitops: GitOpsTarget | None) -> Callable[[str], tuple[list[dict[str, Any]], str]] | None:
    """What Git renders for a namespace (the drift tool's other side): the namespace's GitOps folder at the base
    branch's last commit (the remote's, when changes are pushed: what the reconciler syncs), rendered by
    opsgate.gitops.render; None when there is no GitOps repository."""
    if gitops is None:
        return None

    def rendered(namespace: str) -> tuple[list[dict[str, Any]], str]:
        from opsgate.gitops import render
        from opsgate.gitops.change import prepare, worktree

        base = prepare(gitops, namespace)
        with worktree(base.git, base.ref, None) as tree:
            return render(tree / base.folder, gitops.kubectl), f"{base.branch}:{base.folder}"

    return rendered


def owners_in(kube: Kube) -> Callable[[str, str, str, CallContext], Any]:
    """explain_access's read of who owns an object (Argo CD, Flux), imported on its first use."""

    def owner(kind: str, namespace: str, name: str, ctx: CallContext) -> Any:
        from opsgate.tools.ownership import object_owner

        return object_owner(kube, kind, namespace, name, ctx)

    return owner


def drift_against(rendered: Callable[[str], tuple[list[dict[str, Any]], str]] | None) -> Callable[..., Any]:
    """The drift tool, given what Git renders."""

    def run(kube: Kube, args: Any, ctx: CallContext) -> Any:
        from opsgate.tools.drift import drift

        return drift(kube, args, ctx, rendered)

    return run


# A model run this short costs less on the event loop than the two thread hops around it (~0.1 ms).
QUICK_RUN_S: Final = 0.0002


def runs_on_loop(quick_up_to: int | None, elements: int) -> bool:
    """Pure: whether an infer call runs on the event loop, given the most input elements its model ran quickly."""
    return quick_up_to is not None and elements <= quick_up_to


def quick_runs(quick: dict[str, int], model: str, elements: int, took: float) -> None:
    """Learn from one run: quick, the model may run inputs up to this size on the loop; slow (a larger input, a
    replaced model file, a busy machine), it goes back to worker threads until a quick run says otherwise."""
    if took <= QUICK_RUN_S:
        quick[model] = max(quick.get(model, 0), elements)
    else:
        quick.pop(model, None)


def inference_tools(folder: Path) -> list[ToolSpec[Any, Any]]:
    stores: list[ModelStore] = []
    limiter = anyio.CapacityLimiter(INFERENCE_THREADS)

    def store() -> ModelStore:
        """Built on first use: numpy and the model folder are not needed to start serving."""
        if not stores:
            from opsgate.tools.inference import ModelStore

            stores.append(ModelStore(folder))
        return stores[0]

    async def list_models(_: ListModelsArgs, ctx: CallContext) -> ListModelsResult:
        return await anyio.to_thread.run_sync(lambda: store().list_models(), limiter=limiter)

    quick: dict[str, int] = {}  # model -> the most input elements it has run in under QUICK_RUN_S

    def timed(args: InferArgs) -> tuple[InferResult, float]:
        started = time.perf_counter()
        result = store().infer(args)
        return result, time.perf_counter() - started

    async def infer(args: InferArgs, ctx: CallContext) -> InferResult:
        # onnxruntime releases the GIL: a worker thread keeps the event loop answering during a long run. A
        # model that ran as big an input quicker than the hop costs (iris: ~50 us) runs on the loop instead.
        elements = count_elements(args.inputs)
        if runs_on_loop(quick.get(args.model), elements) and store().loaded(args.model):
            result, took = timed(args)
        else:
            result, took = await anyio.to_thread.run_sync(timed, args, limiter=limiter)
        quick_runs(quick, args.model, elements, took)
        return result

    def render_models(r: ListModelsResult) -> str:
        def shape(s: TensorSpec) -> str:
            dims = s.shape
            return "" if dims is None else "[" + ", ".join(
                "?" if d is None else str(d) if isinstance(d, int) else name_in_text(d) for d in dims) + "]"

        def sig(specs: list[TensorSpec]) -> str:
            # Names and symbolic dims come from the model file: bare if plain, else quoted (issue 15 item 17).
            return ", ".join(f"{name_in_text(s.name)}:{name_in_text(s.dtype)}{shape(s)}" for s in specs)

        return "\n".join(f"{m.name}: ({sig(m.inputs)}) -> ({sig(m.outputs)})" for m in r.models) or "no models"

    specs: list[ToolSpec[Any, Any]] = [
        ToolSpec(
            name="list_models",
            description="Local ONNX models for infer: input/output names, dtypes, shapes. Call before infer.",
            args_model=ListModelsArgs, result_model=ListModelsResult, run=list_models, render=render_models,
        ),
        ToolSpec(
            name="infer",
            description="Run a local ONNX model (onnxruntime) on your inputs; names and shapes from list_models.",
            args_model=InferArgs, result_model=InferResult, run=infer, object_kind="Model", name_of=lambda a: a.model,
            bound_attrs=lambda a: BoundAttrs(model=a.model, input_elements=count_elements(a.inputs)),
            bounded=frozenset({"model", "input_elements"}),
        ),
    ]
    return specs


def workload_tools(kube: Kube, models_dir: Path = MODELS_DIR_DEFAULT,
                   gitops: GitOpsTarget | None = None) -> list[ToolSpec[Any, Any]]:
    limiter = anyio.CapacityLimiter(CLUSTER_THREADS)  # every call to this cluster, reads and writes
    def bind(fn: Callable[[Kube, Any, CallContext], Any]) -> Callable[[Any, CallContext], Awaitable[Any]]:
        """The kubernetes client is synchronous: run it in a worker thread so the loop keeps serving."""

        async def run(args: Any, ctx: CallContext) -> Any:
            return await anyio.to_thread.run_sync(fn, kube, args, ctx, limiter=limiter)

        return run

    def bind_cached(fn: Callable[[Kube, Any, CallContext], Any]) -> Callable[[Any, CallContext], Awaitable[Any]]:
        """A read the watch cache can serve: tried on the loop first, where a cache hit costs less than the
        thread hop; wherever it would wait, it stops and runs in a worker thread instead (tools/inline.py)."""
        threaded = bind(fn)

        async def run(args: Any, ctx: CallContext) -> Any:
            if kube.caching:
                return await at_once_or_in_thread(fn, kube, args, ctx, limiter=limiter)
            return await threaded(args, ctx)

        return run

    def bind_waiting(fn: Callable[..., Any]) -> Callable[[Any, CallContext], Awaitable[Any]]:
        """Like bind, for tools that wait: their sync progress reports become MCP progress notifications."""

        async def run(args: Any, ctx: CallContext) -> Any:
            report = ctx.report_progress

            def progress(done: float, total: float | None, message: str | None) -> None:
                if report is not None:
                    anyio.from_thread.run(report, done, total, message)

            return await anyio.to_thread.run_sync(fn, kube, args, ctx, progress, limiter=limiter)

        return run

    def ns(args: Any) -> str:
        return str(args.namespace)

    def named(args: Any) -> str:
        """The object a call names (its name argument), for the audit record's object reference."""
        return str(args.name)

    async def current_replicas(args: Any) -> BoundAttrs:
        """Only when a bound asks (max_replicas_change): the tools' read, in a worker thread like the tools."""
        return await anyio.to_thread.run_sync(replicas_now, kube, args, limiter=limiter)

    return [
        ToolSpec(
            name="list_workloads",
            description="Deployments and InferenceServices in a namespace: replicas desired/ready, images or "
            "model, revision. Start here to find names.",
            args_model=deferred(_LISTING, "ListWorkloadsArgs"), result_model=deferred(_LISTING, "ListWorkloadsResult"),
            run=bind_cached(deferred_function(_LISTING, "list_workloads")),
            namespace_of=ns, open_world=True, object_kind="Deployment", kind_of=lambda a: a.kind or DEPLOYMENT,
        ),
        ToolSpec(
            name="rollout_status",
            description="Is a Deployment's rollout done, progressing or stuck, with its conditions. Use after a "
            "change.",
            args_model=deferred(_WL, "RolloutStatusArgs"), result_model=deferred(_WL, "RolloutStatusResult"),
            run=bind_cached(deferred_function(_WL, "rollout_status")),
            namespace_of=ns, open_world=True, object_kind="Deployment",
            name_of=named,
        ),
        ToolSpec(
            name="rollout_history",
            description="A Deployment's revisions with change-cause and images: pick one for rollback.",
            args_model=deferred(_WL, "RolloutHistoryArgs"), result_model=deferred(_WL, "RolloutHistoryResult"),
            run=bind_cached(deferred_function(_WL, "rollout_history")),
            namespace_of=ns, open_world=True, object_kind="Deployment",
            name_of=named,
        ),
        ToolSpec(
            name="deploy",
            description="Create or update a Deployment (image, replicas, env, ports, resources, labels). "
            "Try dry_run first.",
            args_model=deferred(_WL, "DeployArgs"), result_model=deferred(_WL, "DeployResult"),
            run=bind_waiting(in_git(deferred_function(_WL, "deploy"), "deploy", gitops)), verb="write",
            destructive=True, idempotent=True, open_world=True, namespace_of=ns, object_kind="Deployment",
            name_of=named,
            bound_attrs=lambda a: BoundAttrs(replicas=a.replicas, images=(a.image,)), current_state=current_replicas,
            bounded=frozenset({"replicas", "current_replicas", "images", "gitops_owned"}),
        ),
        ToolSpec(
            name="scale",
            description="Set a Deployment's replicas, or (kind) an InferenceService's replica range and "
            "autoscaling.",
            args_model=deferred(_TYPES, "ScaleArgs"), result_model=deferred(_TYPES, "ScaleResult"),
            run=bind(in_git(scale_workload, "scale", gitops)), verb="write",
            destructive=True, idempotent=True, open_world=True, namespace_of=ns, object_kind="Deployment",
            name_of=named,
            kind_of=lambda a: a.kind,
            bound_attrs=lambda a: a.bound_attrs(), current_state=current_replicas,
            bounded=frozenset({"replicas", "min_replicas", "current_replicas", "gitops_owned"}),
        ),
        ToolSpec(
            name="rollback",
            description="Undo a bad change. A Deployment: back to the previous or a given revision (kubectl "
            "rollout undo); an InferenceService (kind): canary traffic to 0, or the previous spec opsgate "
            "recorded.",
            args_model=deferred(_TYPES, "RollbackArgs"), result_model=deferred(_TYPES, "RollbackResult"),
            run=bind(with_models_dir(in_git(rollback_workload, "rollback", gitops), models_dir)), verb="write",
            destructive=True, idempotent=False, open_world=True, namespace_of=ns, object_kind="Deployment",
            name_of=named,
            kind_of=lambda a: a.kind,
            # nothing from the arguments: the state it restores, checked on the read that guards the write
            bounded=frozenset({"replicas", "min_replicas", "current_replicas", "images", "storage_uri",
                               "gitops_owned"}),
        ),
        ToolSpec(
            name="deploy_model",
            description="Create or update a KServe InferenceService serving an ONNX model; a new version can go "
            "out as a canary, then promote. Try dry_run first.",
            args_model=deferred(_KS, "DeployModelArgs"), result_model=deferred(_KS, "DeployModelResult"),
            run=bind_waiting(with_models_dir(in_git(deferred_function(_KS, "deploy_model"), "deploy_model", gitops),
                                             models_dir)),
            verb="write",
            destructive=True, idempotent=True, open_world=True, namespace_of=ns, object_kind="InferenceService",
            name_of=named,
            bound_attrs=lambda a: localize_storage(a.bound_attrs(), models_dir), current_state=current_replicas,
            bounded=frozenset({"replicas", "min_replicas", "current_replicas", "model", "storage_uri", "gitops_owned"}),
        ),
        ToolSpec(
            name="model_status",
            description="One InferenceService: URL, Ready or why not, model state, revisions, traffic split. "
            "Use after deploy_model.",
            args_model=deferred(_KS, "ModelStatusArgs"), result_model=deferred(_KS, "ModelStatusResult"),
            run=bind_cached(deferred_function(_KS, "model_status")),
            namespace_of=ns, open_world=True, object_kind="InferenceService",
            name_of=named,
        ),
        ToolSpec(
            name="kserve_infer",
            description="Send inputs to a Ready InferenceService (Open Inference Protocol v2, or v1) and get its "
            "outputs; v2 inputs are checked against the model's metadata when it has some.",
            args_model=deferred(_KS, "KServeInferArgs"), result_model=deferred(_KS, "KServeInferResult"),
            run=bind(with_models_dir(deferred_function(_KS, "kserve_infer"), models_dir)),
            namespace_of=ns, open_world=True, object_kind="InferenceService",
            name_of=named,
            bound_attrs=lambda a: a.bound_attrs(),
            # and the storage URI of the service it calls, checked on the read of the service
            bounded=frozenset({"model", "input_elements", "url_override", "storage_uri"}),
        ),
        ToolSpec(
            name="drift",
            description="How a namespace's workloads differ from Git, per field, and who changed them.",
            args_model=deferred(_DRIFT, "DriftArgs"), result_model=deferred(_DRIFT, "DriftResult"),
            run=bind(drift_against(rendered_in_git(gitops))), namespace_of=ns, open_world=True,
        ),
    ]


def _no_gate() -> Gate:
    raise RuntimeError("these tool specs were built to be listed, not run: no gate was given")


def server_tools(
    settings: Settings | None = None,
    kube: Kube | None = None,
    gate_of: Callable[[], Gate] = _no_gate,
    cluster: Callable[[], Mapping[str, Any]] | None = None,
) -> list[ToolSpec[Any, Any]]:
    """Every tool (and gated resource) this server registers, in listing order: the one list that serve,
    doctor, the policy lint and the tests read. Without settings and a cluster, the defaults and a
    Kube that is never contacted (it connects on first use): enough to list, name and verb them."""
    settings = settings if settings is not None else Settings()
    models = settings.models or MODELS_DIR_DEFAULT
    kube = kube if kube is not None else Kube()
    specs = [*access_tools(gate_of, cluster, owners_in(kube)), *inference_tools(models),
             *workload_tools(kube, models, gitops_target(settings))]
    schemas = prebuilt_schemas()
    return [dataclasses.replace(spec, schema=schemas[spec.name]) if spec.name in schemas else spec for spec in specs]


def build_schemas(specs: Iterable[ToolSpec[Any, Any]]) -> dict[str, Any]:
    """What tool_schemas.json holds: each listed tool's input schema, computed from its (imported) model."""
    return {spec.name: input_schema(model_class(spec.args_model)) for spec in specs if spec.route == "tool"}


def schemas_text(schemas: Mapping[str, Any]) -> str:
    return json.dumps(schemas, indent=1, ensure_ascii=False) + "\n"


def tool_bounds(specs: Iterable[ToolSpec[Any, Any]] | None = None) -> dict[str, frozenset[BoundName]]:
    """What each tool tells the policy's bounds (``ToolSpec.bounded``): for the lint, which finds bounds
    that no tool a subject may call can ever meet."""
    return {spec.name: spec.bounded for spec in (server_tools() if specs is None else specs)}


def tool_verbs(specs: Iterable[ToolSpec[Any, Any]] | None = None) -> dict[str, str]:
    """Every name a policy may grant (tools and gated resources) and its verb: for loading, lint and tables."""
    return {spec.name: spec.verb for spec in (server_tools() if specs is None else specs)}


if __name__ == "__main__":  # python -m opsgate.server.catalog: regenerate tool_schemas.json after a model changes
    _SCHEMAS_FILE.write_text(schemas_text(build_schemas(server_tools())), encoding="utf-8")
