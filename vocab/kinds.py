"""The two kinds of workload opsgate operates: Kubernetes Deployments and KServe InferenceServices.

Which kind a call is about is decided once, from these names, in the server's catalog; tools
receive arguments already meant for one kind.
"""

from __future__ import annotations

from typing import Final, Literal

WorkloadKind = Literal["Deployment", "InferenceService"]

DEPLOYMENT: Final = "Deployment"
INFERENCE_SERVICE: Final = "InferenceService"
#: In the order lists show them.
WORKLOAD_KINDS: Final[tuple[WorkloadKind, ...]] = (DEPLOYMENT, INFERENCE_SERVICE)
