"""The numeric limits opsgate holds every caller to, whatever the policy allows: replicas and tensor sizes.

Policy bounds (``bounds.toml``) may be tighter; these are the ceilings the argument models and
the model runners enforce on everyone.
"""

from __future__ import annotations

from typing import Final

#: Replicas (or min/max replicas of an InferenceService) one call may ask for.
MAX_REPLICAS: Final = 1000
#: Numbers (or strings) over all inputs of one inference call.
MAX_INPUT_ELEMENTS: Final = 100_000
#: Numbers (or strings) over all outputs of one inference call.
MAX_OUTPUT_ELEMENTS: Final = 100_000
#: The outputs' size as computed: numeric bytes, or UTF-8 bytes of strings.
MAX_OUTPUT_BYTES: Final = 4 << 20


def replica_range_ok(low: int | None, high: int | None) -> bool:
    """Whether a replica range is in order: min <= max, or either end not given."""
    return low is None or high is None or low <= high


#: One manifest or kustomization file opsgate reads from a GitOps repository (outside text: a committed file of
#: any size would otherwise be read and parsed whole). The API server takes no object over 3 MiB.
MAX_MANIFEST_BYTES: Final = 4 << 20


#: The watch cache (tools/informer): objects one (namespace, kind) may hold before its reads go to the API
#: server instead, and how many (namespace, kind) watches one set of credentials may keep open at once.
MAX_CACHED_OBJECTS: Final = 2000
MAX_WATCHES: Final = 16
