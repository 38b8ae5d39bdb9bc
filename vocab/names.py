"""Kubernetes name rules (DNS-1123 labels and subdomains, label keys and values) as the API server checks them.

The patterns follow ``k8s.io/apimachinery/pkg/util/validation``; what a tool, the policy engine
or the sandbox refuses here is what a real cluster would refuse.
"""

from __future__ import annotations

import re
from typing import Final, Literal

DNS1123_LABEL_MAX: Final = 63
DNS1123_SUBDOMAIN_MAX: Final = 253
QUALIFIED_NAME_MAX: Final = 63

#: The unanchored expressions, as the API server quotes them in its messages.
DNS1123_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN: Final = rf"{DNS1123_LABEL}(\.{DNS1123_LABEL})*"
#: Anchored forms for JSON Schema ``pattern`` (which searches unless anchored).
DNS1123_LABEL_PATTERN: Final = rf"^{DNS1123_LABEL}$"
DNS1123_SUBDOMAIN_PATTERN: Final = rf"^{DNS1123_SUBDOMAIN}$"
#: A DNS-1035 label starts with a letter: KServe's rule for InferenceService names (they become Service names).
DNS1035_LABEL: Final = r"[a-z]([-a-z0-9]*[a-z0-9])?"
DNS1035_LABEL_PATTERN: Final = rf"^{DNS1035_LABEL}$"

LABEL_RE: Final = re.compile(DNS1123_LABEL)
SUBDOMAIN_RE: Final = re.compile(DNS1123_SUBDOMAIN)
DNS1035_RE: Final = re.compile(DNS1035_LABEL)
#: A label key's name part or a label value (IsQualifiedName, IsValidLabelValue).
QUALIFIED_NAME_RE: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

NameKind = Literal["label", "subdomain"]


def is_dns1123_label(value: str) -> bool:
    """A namespace or container name: one lowercase alphanumeric/'-' word of 1-63 characters."""
    return len(value) <= DNS1123_LABEL_MAX and LABEL_RE.fullmatch(value) is not None


def is_dns1123_subdomain(value: str) -> bool:
    """Most object names: dot-separated DNS-1123 labels, 1-253 characters in all."""
    return len(value) <= DNS1123_SUBDOMAIN_MAX and SUBDOMAIN_RE.fullmatch(value) is not None


def dns1123_problem(value: str, kind: NameKind) -> str | None:
    """Why ``value`` is not a DNS-1123 label/subdomain, or None when it is one.

    Labels (namespaces, container names) are one lowercase alphanumeric/'-' word of at most 63
    characters; subdomains (most object names) are dot-separated labels, at most 253 in all.
    """
    limit = DNS1123_LABEL_MAX if kind == "label" else DNS1123_SUBDOMAIN_MAX
    if not value:
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters (got {len(value)})"
    if (LABEL_RE if kind == "label" else SUBDOMAIN_RE).fullmatch(value):
        return None
    allowed = "lowercase letters, digits and '-'" + (" and '.'" if kind == "subdomain" else "")
    return (f"{value!r} is not a valid DNS-1123 {kind}: use {allowed}, "
            "starting and ending with a letter or digit")


def is_qualified_name(value: str) -> bool:
    """A label key's name part, or a non-empty label value: 1-63 of letters, digits, '-', '_', '.'."""
    return len(value) <= QUALIFIED_NAME_MAX and QUALIFIED_NAME_RE.fullmatch(value) is not None
