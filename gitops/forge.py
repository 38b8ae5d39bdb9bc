"""Opening a merge request through the forge's API: GitHub's pulls, GitLab's merge_requests.

GitHub: ``POST {api}/repos/{owner}/{repo}/pulls`` with ``title``, ``head``, ``base``, ``body`` and a bearer
token; the answer's ``html_url`` is the link. GitLab: ``POST {api}/projects/{id or url-encoded path}/merge_requests``
with ``source_branch``, ``target_branch``, ``title``, ``description`` and the ``PRIVATE-TOKEN`` header; the
answer's ``web_url``. Whatever the forge answers is outside text: a link is kept only when it is an http(s)
URL, capped, and its error text is quoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import SecretStr

from opsgate.tools.errors import ToolError

from .git import said

ForgeKind = Literal["github", "gitlab"]
FORGE_TIMEOUT_SECONDS: Final = 20.0
LINK_MAX: Final = 300
DEFAULT_API: Final = {"github": "https://api.github.com", "gitlab": "https://gitlab.com/api/v4"}


@dataclass(frozen=True)
class Forge:
    kind: ForgeKind
    api_url: str
    project: str  # GitHub owner/repo; GitLab the project id or its path (group/name)
    token: SecretStr


@dataclass(frozen=True)
class MergeRequest:
    title: str
    branch: str
    base: str
    body: str


def request_of(forge: Forge, mr: MergeRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of the documented create call. Pure (the token is read into a header)."""
    api = forge.api_url.rstrip("/")
    secret = forge.token.get_secret_value()
    if forge.kind == "github":
        return (f"{api}/repos/{forge.project}/pulls",
                {"Authorization": f"Bearer {secret}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": "2022-11-28"},
                {"title": mr.title, "head": mr.branch, "base": mr.base, "body": mr.body})
    project = forge.project if forge.project.isdigit() else quote(forge.project, safe="")
    return (f"{api}/projects/{project}/merge_requests", {"PRIVATE-TOKEN": secret},
            {"source_branch": mr.branch, "target_branch": mr.base, "title": mr.title, "description": mr.body})


def link_of(answer: Any, kind: ForgeKind) -> str | None:
    """The merge request's web link from the forge's answer, if it is an http(s) URL. Pure."""
    url = answer.get("html_url" if kind == "github" else "web_url") if isinstance(answer, dict) else None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http") or len(url) > LINK_MAX:
        return None
    return url


def open_merge_request(forge: Forge, mr: MergeRequest) -> str | None:
    """Open it; the link, or ToolError ``forge_error`` with the forge's words quoted."""
    url, headers, body = request_of(forge, mr)
    try:
        reply = httpx.post(url, headers=headers, json=body, timeout=FORGE_TIMEOUT_SECONDS, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ToolError(f"opening the merge request failed: {said(type(exc).__name__ + ': ' + str(exc))}",
                        code="forge_error", rule="forge-unreachable") from None
    if reply.status_code not in (200, 201):
        raise ToolError(f"the forge refused the merge request (HTTP {reply.status_code}): "
                        f"{said(reply.text)}", code="forge_error", rule="forge-refused",
                        status=reply.status_code)
    try:
        answer = reply.json()
    except ValueError:
        answer = None
    return link_of(answer, forge.kind)
