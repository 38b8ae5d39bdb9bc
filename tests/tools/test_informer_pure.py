"""The watch cache's pure parts: resourceVersion order, the store's events and cap, freshness, its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opsgate.server.cli import build_parser
from opsgate.server.config import flag_settings, load_settings
from opsgate.tools.informer.store import ObjectStore
from opsgate.tools.informer.versions import RECENT, Seen
from opsgate.tools.structs.freshness import Freshness, combine


def obj(name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv, **extra}}


def test_integer_versions_compare_as_integers() -> None:
    seen = Seen()
    seen.reset("9")
    assert seen.covers("9") and seen.covers("8") and not seen.covers("10")
    seen.add("10")
    assert seen.covers("10") and seen.latest == "10"  # "10" > "9" as integers, not as strings
    seen.add("7")  # never goes back
    assert seen.latest == "10"


def test_opaque_versions_are_seen_only_by_equality() -> None:
    seen = Seen()
    seen.reset("abc")
    assert seen.covers("abc") and not seen.covers("abd")
    seen.add("x1")
    assert seen.covers("x1") and seen.covers("abc")
    for i in range(RECENT):
        seen.add(f"v{i}")
    assert not seen.covers("abc")  # bounded memory: only the last RECENT are remembered


def test_store_applies_events_in_order_and_relists_on_error() -> None:
    store = ObjectStore(cap=10)
    assert store.replace([obj("a", "1"), obj("b", "2")], "5", 0.0)
    assert store.apply({"type": "MODIFIED", "object": obj("a", "6")}, 1.0) == "applied"
    assert store.apply({"type": "ADDED", "object": obj("c", "7")}, 1.0) == "applied"
    assert store.apply({"type": "DELETED", "object": obj("b", "8")}, 1.0) == "applied"
    assert store.apply({"type": "BOOKMARK", "object": obj("", "9")}, 1.0) == "applied"
    assert sorted(store.objects) == ["a", "c"] and store.objects["a"]["metadata"]["resourceVersion"] == "6"
    assert store.seen.latest == "9" and store.seen.covers("8")
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    assert store.apply(gone, 1.0) == "relist"
    assert store.apply({"type": "SURPRISE", "object": obj("a", "10")}, 1.0) == "relist"


def test_store_knows_when_each_object_last_changed() -> None:
    store = ObjectStore(cap=10)
    store.replace([obj("a", "1"), obj("b", "2")], "2", 10.0)
    assert store.changed == {"a": 10.0, "b": 10.0}  # a list says nothing of before: all changed then
    store.apply({"type": "MODIFIED", "object": obj("a", "3")}, 12.5)
    store.apply({"type": "BOOKMARK", "object": obj("", "4")}, 13.0)  # a bookmark changes nothing
    store.apply({"type": "DELETED", "object": obj("b", "5")}, 14.0)
    assert store.changed == {"a": 12.5}


def test_store_drops_field_sets_but_keeps_the_managers() -> None:
    managed = [{"manager": "argocd-controller", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
    store = ObjectStore(cap=10)
    store.replace([obj("a", "1", managedFields=managed)], "1", 0.0)
    assert store.objects["a"]["metadata"]["managedFields"] == [{"manager": "argocd-controller", "operation": "Apply"}]


def test_store_refuses_more_than_its_cap() -> None:
    store = ObjectStore(cap=2)
    assert not store.replace([obj("a", "1"), obj("b", "2"), obj("c", "3")], "3", 0.0)
    assert store.objects == {}
    assert store.replace([obj("a", "1"), obj("b", "2")], "3", 0.0)
    assert store.apply({"type": "MODIFIED", "object": obj("b", "4")}, 1.0) == "applied"  # a known name: fine
    assert store.apply({"type": "ADDED", "object": obj("c", "5")}, 1.0) == "over-cap"
    assert sorted(store.objects) == ["a", "b"]


def test_freshness_of_two_reads_is_the_least_fresh() -> None:
    cache = Freshness(via="cache", resource_version="12", age_seconds=0.5)
    older = Freshness(via="cache", resource_version="9", age_seconds=3.0)
    assert combine([cache, older]) == Freshness(via="cache", resource_version="9", age_seconds=3.0)
    api = Freshness(via="api", note="the cache's watch is reconnecting")
    assert combine([cache, api]) == Freshness(via="api", resource_version="12", age_seconds=0.5,
                                              note="the cache's watch is reconnecting")
    assert combine([]).via == "api"


def test_the_cache_is_on_by_default_and_turned_off_from_flag_env_or_file(tmp_path: Path) -> None:
    assert load_settings({}, None, environ={}).disable_read_cache is False
    parser = build_parser("serve")
    given = flag_settings(parser.parse_args(["serve", "--disable-read-cache", "--read-cache-idle-seconds", "5"]))
    s = load_settings(given, None, environ={})
    assert s.disable_read_cache is True and s.read_cache_idle_seconds == 5
    assert load_settings({}, None, environ={"OPSGATE_DISABLE_READ_CACHE": "true"}).disable_read_cache is True
    cfg = tmp_path / "opsgate.toml"
    cfg.write_text("disable-read-cache = true\nread-cache-idle-seconds = 60\n")
    s = load_settings({}, cfg, environ={})
    assert s.disable_read_cache is True and s.read_cache_idle_seconds == 60


@pytest.mark.parametrize("seconds", ["0", "-1", "100000"])
def test_idle_seconds_out_of_range_is_refused(seconds: str) -> None:
    from opsgate.server.config import SettingsError

    with pytest.raises(SettingsError, match="read_cache_idle_seconds"):
        load_settings({}, None, environ={"OPSGATE_READ_CACHE_IDLE_SECONDS": seconds})
