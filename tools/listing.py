"""list_workloads: the Deployments and InferenceServices of a namespace as one paged list of rows.

The one tool that covers both kinds at once: rows come from :mod:`.workloads` and :mod:`.kserve`,
sorted by name and paged under a JSON byte budget with a cursor bound to the listing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import Field

from opsgate.vocab.kinds import DEPLOYMENT, INFERENCE_SERVICE, WorkloadKind
from opsgate.vocab.names import DNS1123_SUBDOMAIN_MAX

from .context import CallContext
from .kserve.rows import inference_service_rows
from .kube import Kube
from .structs.freshness import SOURCE, Freshness, combine
from .structs.pages import CURSOR_MAX, PAGE_BUDGET_BYTES, decode_cursor, encode_cursor, fit_page, json_size
from .workload_types import Args, Namespace, Result, WorkloadRow
from .workloads import deployment_rows


class ListWorkloadsArgs(Args):
    namespace: Namespace
    kind: WorkloadKind | None = Field(
        default=None, description="Omit for both kinds."
    )
    cursor: str | None = Field(
        default=None, max_length=CURSOR_MAX,
        description="next_cursor of the previous page.",
    )


class ListWorkloadsResult(Result):
    namespace: str
    workloads: list[WorkloadRow]
    total: int = Field(description="Workloads in the namespace matching kind, over all pages.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")
    source: Freshness | None = Field(default=None, description=SOURCE)

    def audit_summary(self) -> dict[str, Any]:
        return {"count": len(self.workloads), "total": self.total}


@lru_cache(maxsize=256)
def _envelope_size(namespace: str, kind: WorkloadKind | None, total: int) -> int:
    """The page's own fields, with the longest cursor a name can make: they come out of the budget first.
    They depend on these three alone, so a poll of one namespace works them out once (10 us a call)."""
    longest_cursor = encode_cursor(namespace, kind, "x" * DNS1123_SUBDOMAIN_MAX + "/InferenceService")
    return json_size(ListWorkloadsResult(namespace=namespace, workloads=[], total=total,
                                         next_cursor=longest_cursor).model_dump(mode="json"))


def list_workloads(kube: Kube, args: ListWorkloadsArgs, ctx: CallContext) -> ListWorkloadsResult:
    """Deployments and InferenceServices in a namespace as compact rows, paginated under a ~4 KB JSON budget."""
    after = decode_cursor(args.cursor, args.namespace, args.kind) if args.cursor else None
    now = datetime.now(UTC)
    rows: list[WorkloadRow] = []
    sources: list[Freshness] = []
    if args.kind in (None, DEPLOYMENT):
        found, read_from = deployment_rows(kube, args.namespace, ctx, now)
        rows.extend(found)
        sources.append(read_from)
    if args.kind in (None, INFERENCE_SERVICE):
        found, read_from = inference_service_rows(kube, args.namespace, ctx, now, required=args.kind is not None)
        rows.extend(found)
        sources.append(read_from)
    source = combine(sources)
    rows.sort(key=lambda r: (r.name, r.kind))
    # The cursor names the last row as "name/kind": a Deployment and an InferenceService may share a name.
    resume = tuple(after.split("/", 1)) if after is not None else None
    remaining = [r for r in rows if resume is None or (r.name, r.kind) > resume]
    envelope = _envelope_size(args.namespace, args.kind, len(rows)) + json_size({"source": source.model_dump()})
    count = fit_page([json_size(r.model_dump(mode="json")) for r in remaining], PAGE_BUDGET_BYTES - envelope)
    page = remaining[:count]
    more = count < len(remaining)
    return ListWorkloadsResult(
        namespace=args.namespace, workloads=page, total=len(rows),
        next_cursor=encode_cursor(args.namespace, args.kind, f"{page[-1].name}/{page[-1].kind}") if more and page
        else None, source=source,
    )
