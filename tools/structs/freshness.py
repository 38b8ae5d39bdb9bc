"""How fresh a read tool's answer is: from the watch cache or the API server, at which resourceVersion. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Freshness(BaseModel):
    """Where a read came from: ``source`` of list_workloads, rollout_status, rollout_history, model_status."""

    model_config = ConfigDict(extra="forbid")

    via: Literal["cache", "api"] = Field(description="cache: a watch kept current by the API server (behind it "
                                         "by the watch's latency); api: read from the API server now.")
    resource_version: str | None = Field(default=None, description="resourceVersion of what was read.")
    age_seconds: float | None = Field(default=None, description="cache: since its watch last heard from the API "
                                      "server (a quiet watch means nothing changed).")
    note: str | None = Field(default=None, description="api: why the cache was not used.")


API: Freshness = Freshness(via="api")


def _rv_key(value: str | None) -> tuple[int, int | str]:
    return (0, int(value)) if value is not None and value.isdigit() else (1, value or "")


def combine(parts: Iterable[Freshness]) -> Freshness:
    """One answer's freshness from its reads: the least fresh of them (api over cache, oldest, first note)."""
    seen = list(parts)
    if not seen:
        return API
    via: Literal["cache", "api"] = "api" if any(p.via == "api" for p in seen) else "cache"
    versions = [p.resource_version for p in seen if p.resource_version is not None]
    ages = [p.age_seconds for p in seen if p.age_seconds is not None]
    notes = [p.note for p in seen if p.note]
    return Freshness(via=via, resource_version=min(versions, key=_rv_key) if versions else None,
                     age_seconds=max(ages) if ages else None, note=notes[0] if notes else None)


#: The ``source`` field's description, the same in every read tool's result.
SOURCE = "Where this was read: the watch cache or the API server, and how fresh."
