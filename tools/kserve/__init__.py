"""KServe InferenceService tools: deploy_model, model_status, kserve_infer; scale and rollback of a service; list rows.

Plain synchronous functions ``tool(kube, args, ctx) -> Result`` like the Deployment
tools (the gate runs them in a worker thread). Decisions are pure functions on
the InferenceService as JSON (spec built, diff, mode, traffic, summary, which
rollback applies); the edges are :meth:`Kube.call` (the API) and one pooled
urllib3 client (:mod:`opsgate.tools.clients.modelserver`). Importing this package imports
neither ``kubernetes`` nor numpy nor urllib3. One room a module: ``services`` (pure reading and
patches), ``api`` (reads), ``status``, ``deploy``, ``scale``, ``rollback``, ``rows``, ``infer``.

KServe behaviour relied on: canary by
``canaryTrafficPercent`` in Serverless mode only (RawDeployment/Standard
ignores it, so opsgate refuses it there instead of pretending), promote by
removing it, roll back by setting it to 0; the deployment mode of an existing
service cannot change. For raw mode, and for a service with no canary in
flight, opsgate rolls back by restoring the predictor spec it recorded in the
annotation ``opsgate.dev/previous-spec`` on its last change of the revision
template (deploy_model, scale), and says which of the two it did.

Every write carries ``kubernetes.io/change-cause: opsgate: <principal> call <call id>``,
is guarded by the ``metadata.generation`` it was computed from (never the
resourceVersion, which every status write changes), and when overtaken is
recomputed from a fresh read a few times with a short backoff, then reported.
"""

from .deploy import DeployModelArgs, DeployModelResult, deploy_model
from .infer import KServeInferArgs, KServeInferResult, kserve_infer
from .rollback import rollback_inference_service
from .rows import inference_service_rows
from .scale import scale_inference_service
from .services import PREVIOUS_SPEC_ANNOTATION
from .status import ModelStatusArgs, ModelStatusResult, current_replicas, model_status

__all__ = [
    "PREVIOUS_SPEC_ANNOTATION",
    "DeployModelArgs",
    "DeployModelResult",
    "KServeInferArgs",
    "KServeInferResult",
    "ModelStatusArgs",
    "ModelStatusResult",
    "current_replicas",
    "deploy_model",
    "inference_service_rows",
    "kserve_infer",
    "model_status",
    "rollback_inference_service",
    "scale_inference_service",
]
