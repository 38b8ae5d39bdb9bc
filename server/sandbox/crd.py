"""Custom resource schemas as the API server uses them: the real CRD's ``openAPIV3Schema``, loaded once.

``crds/`` holds the schemas of the CRDs the sandbox serves, taken unchanged
from the projects that publish them (each file says where from); the
InferenceService one is KServe's own. ``kubectl explain`` reads them through
``openapi.py``.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

CRD_DIR = Path(__file__).parent / "crds"
INFERENCESERVICE_FILE = "inferenceservices.serving.kserve.io.v1beta1.json.gz"


@functools.lru_cache(maxsize=8)
def _load(file_name: str) -> JSON:
    with gzip.open(CRD_DIR / file_name, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or not isinstance(doc.get("openAPIV3Schema"), dict):
        raise ValueError(f"{file_name}: no openAPIV3Schema")
    return doc


def inference_service_schema() -> JSON:
    """KServe's v1beta1 InferenceService ``openAPIV3Schema`` (a copy: callers may change it)."""
    return copy.deepcopy(_load(INFERENCESERVICE_FILE)["openAPIV3Schema"])


def inference_service_source() -> str:
    return str(_load(INFERENCESERVICE_FILE)["source"])
