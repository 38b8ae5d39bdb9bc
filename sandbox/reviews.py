"""Access reviews (``authorization.k8s.io/v1``): what ``kubectl auth can-i`` and permission checks ask.

The sandbox has no authorization: every request is allowed, so every review
answers ``allowed: true`` with a reason saying so, as a cluster running the
``AlwaysAllow`` authorizer would. Reviews are answered, never stored.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from .resources import ResourceType

JSON = dict[str, Any]

GROUP: Final = "authorization.k8s.io"
REASON: Final = "the opsgate sandbox has no authorization: every request is allowed"


def _review(plural: str, kind: str, *, namespaced: bool = False) -> ResourceType:
    return ResourceType(group=GROUP, version="v1", plural=plural, kind=kind, namespaced=namespaced,
                        verbs=("create",), generation_paths=())


SELF_SUBJECT_ACCESS_REVIEW: Final = _review("selfsubjectaccessreviews", "SelfSubjectAccessReview")
SUBJECT_ACCESS_REVIEW: Final = _review("subjectaccessreviews", "SubjectAccessReview")
LOCAL_SUBJECT_ACCESS_REVIEW: Final = _review("localsubjectaccessreviews", "LocalSubjectAccessReview", namespaced=True)
SELF_SUBJECT_RULES_REVIEW: Final = _review("selfsubjectrulesreviews", "SelfSubjectRulesReview")

REVIEW_TYPES: Final = (SELF_SUBJECT_ACCESS_REVIEW, SUBJECT_ACCESS_REVIEW, LOCAL_SUBJECT_ACCESS_REVIEW,
                       SELF_SUBJECT_RULES_REVIEW)
REVIEW_KEYS: Final = frozenset(rt.key for rt in REVIEW_TYPES)


def answer(rt: ResourceType, body: Any, namespace: str) -> JSON:
    """The review with its status filled: the request's spec echoed, everything allowed.

    A rules review lists one rule that allows every verb on every resource and URL, as the
    ``AlwaysAllow`` authorizer's rules resolver does."""
    spec = copy.deepcopy(body.get("spec")) if isinstance(body, dict) and isinstance(body.get("spec"), dict) else {}
    meta: JSON = {"creationTimestamp": None}
    if rt.namespaced:
        meta["namespace"] = namespace
    status: JSON
    if rt is SELF_SUBJECT_RULES_REVIEW:
        status = {
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": False,
        }
    else:
        status = {"allowed": True, "reason": REASON}
    return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta, "spec": spec, "status": status}
