"""Custom resource schemas as the API server uses them: the real CRD's ``openAPIV3Schema``, loaded once.

``crds/`` holds the schemas of the CRDs the sandbox serves, taken unchanged
from the projects that publish them (each file says where from); the
InferenceService one is KServe's own. ``kubectl explain`` reads them through
``openapi.py``; writes are pruned, defaulted and validated against them
(``structural.py``) before KServe's webhook checks run.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path
from typing import Any

from . import structural
from .errors import Cause

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


def _view() -> JSON:
    """The shared, loaded schema: read it, never change it (``inference_service_schema`` gives a copy)."""
    schema: JSON = _load(INFERENCESERVICE_FILE)["openAPIV3Schema"]
    return schema


def prune_and_default_inference_service(obj: JSON) -> None:
    """What the API server does to a custom resource before validating it: prune, then default (in place)."""
    schema = _view()
    shaped = structural.default(structural.prune(obj, schema), schema)
    obj.clear()
    obj.update(shaped)


def validate_inference_service_schema(obj: JSON) -> list[Cause]:
    return structural.validate(obj, _view())


def inference_service_source() -> str:
    return str(_load(INFERENCESERVICE_FILE)["source"])
