"""Checks of the names a Deployment carries beyond DNS-1123: label keys and values, env var names, image references.

They follow ``k8s.io/apimachinery`` validation and ``distribution/reference`` so that what we refuse is what
the cluster would refuse, only earlier and with a sentence the assistant can act on.
"""

from __future__ import annotations

import re
from typing import Final

from opsgate.vocab.names import QUALIFIED_NAME_MAX, QUALIFIED_NAME_RE, dns1123_problem

# Label keys and values (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue).



def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {key!r} has an empty prefix before '/'"
    if slash:
        why = dns1123_problem(prefix, "subdomain")
        if why is not None:
            return f"label key prefix {prefix!r}: {why}"
    if not name or len(name) > QUALIFIED_NAME_MAX or not QUALIFIED_NAME_RE.fullmatch(name):
        return (f"label key {key!r}: the name part must be 1-63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty is allowed), or None."""
    if value == "":
        return None
    if len(value) > QUALIFIED_NAME_MAX or not QUALIFIED_NAME_RE.fullmatch(value):
        return (f"label value {value!r} must be at most 63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return None


ENV_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_ENV_NAME_RE: Final = re.compile(ENV_NAME_PATTERN)


def env_name_problem(name: str) -> str | None:
    if not name or len(name) > 256 or not _ENV_NAME_RE.fullmatch(name):
        return (f"environment variable name {name!r} must be letters, digits, '_', '-', '.', "
                "not starting with a digit")
    return None


# Image references, after github.com/distribution/reference: [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_MAX: Final = 512
_IMAGE_RE: Final = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def image_problem(image: str) -> str | None:
    """Why ``image`` is not a container image reference, or None."""
    if not image:
        return "must not be empty"
    if len(image) > IMAGE_MAX:
        return f"must be at most {IMAGE_MAX} characters"
    if any(ch.isspace() for ch in image):
        return "must not contain whitespace"
    if _IMAGE_RE.fullmatch(image) is None:
        return (f"{image!r} is not an image reference: expected [registry[:port]/]repository[:tag][@digest], "
                "with a lowercase repository path, e.g. 'ghcr.io/acme/web:1.4.2'")
    return None


def image_registry(image: str) -> str:
    """The registry host an image is pulled from ("docker.io" when none is named), for policy bounds.

    As Docker does: the first path component is a registry only when it has a '.' or ':' or is
    'localhost'; otherwise the image is on Docker Hub.
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return "docker.io"
