"""Watch fidelity of the sandbox: a client that hangs up ends its watch (and the thread serving it) at the
next quiet tick, not at the watch's timeout; a watch that asked for bookmarks gets BOOKMARK events with the
version it has reached, about every ``watch_bookmark_seconds``, and one that did not ask gets none.
Real clients over HTTPS: the Python ``kubernetes`` client and kubectl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.api import WatchStream
from tests.sandbox.test_sandbox_kubectl import KUBECTL

new_client_from_dict: Any = config.new_client_from_config_dict
POLL = 0.2  # the sandbox's quiet tick here (1 s by default)
BOOKMARK_SECONDS = 0.4


class OpenWatches:
    """How many watch streams the sandbox is serving now (counted as the HTTP edge opens and closes them)."""

    def __init__(self, cluster: SandboxCluster) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self._handle = cluster.api.handle
        cluster.api.handle = self._counting  # type: ignore[method-assign,assignment]

    def _counting(self, request: Any) -> Any:
        result = self._handle(request)
        return WatchStream(self._counted(result.events), result.content_type) if isinstance(result, WatchStream) \
            else result

    def _counted(self, events: Iterator[Any]) -> Iterator[Any]:
        with self.lock:
            self.open += 1
        try:
            yield from events
        finally:
            with self.lock:
                self.open -= 1

    def now(self) -> int:
        with self.lock:
            return self.open


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05, watch_bookmark_seconds=BOOKMARK_SECONDS) as sandbox:
        sandbox.api.watch_poll = POLL
        yield sandbox


@pytest.fixture(scope="module")
def watches(cluster: SandboxCluster) -> OpenWatches:
    return OpenWatches(cluster)


@pytest.fixture()
def api(cluster: SandboxCluster) -> Iterator[Any]:
    api_client = new_client_from_dict(cluster.kubeconfig())
    yield api_client
    api_client.close()


def core(api: Any) -> Any:
    """The client's methods are typed for its models; the tests pass dicts."""
    return client.CoreV1Api(api)


def namespace(api: Any) -> str:
    name = f"w-{uuid.uuid4().hex[:6]}"
    core(api).create_namespace({"metadata": {"name": name}})
    return name


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)
    return value


def serving_threads() -> int:
    """The sandbox's connection threads (``ThreadingHTTPServer`` names them after process_request_thread)."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def open_watch(api: Any, ns: str, **query: Any) -> Any:
    """A watch of ``ns``'s ConfigMaps as the raw urllib3 response (the client's own request, not preloaded)."""
    return core(api).list_namespaced_config_map(ns, watch=True, _preload_content=False, **query)


def lines(response: Any) -> Iterator[dict[str, Any]]:
    pending = b""
    for chunk in response.stream(1024):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (json.loads(line) for line in complete if line.strip())


def test_dropped_watches_end_their_threads_at_the_next_tick(cluster: SandboxCluster, watches: OpenWatches,
                                                            api: Any, tmp_path: Path) -> None:
    ns = namespace(api)
    core_v1 = core(api)
    core_v1.create_namespaced_config_map(ns, {"metadata": {"name": "one"}})
    before_threads, before_watches = serving_threads(), watches.now()
    responses, readers = [], []
    for _ in range(4):  # the Python client: read the first event, then hang up
        response = open_watch(api, ns, timeout_seconds=600)
        readers.append(reader := lines(response))  # kept: closing the reader hangs up too (urllib3)
        assert next(reader)["type"] == "ADDED"
        responses.append(response)
    kubectls = []
    if KUBECTL is not None:  # kubectl get --watch, killed: the kernel closes its sockets
        kubeconfig = tmp_path / "kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
        for _ in range(2):
            kubectls.append(subprocess.Popen([KUBECTL, f"--cache-dir={tmp_path / 'cache'}", "-n", ns, "get",
                                              "configmaps", "--watch"], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL))
    until(lambda: watches.now() == before_watches + len(responses) + len(kubectls), "every watch open", timeout=30)
    for response in responses:
        response.close()
    for proc in kubectls:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    until(lambda: watches.now() == before_watches, "every dropped watch ended", timeout=POLL * 10 + 2)
    until(lambda: serving_threads() <= before_threads, "no thread left serving them", timeout=POLL * 10 + 2)


def test_a_watch_that_asks_gets_bookmarks_with_the_version_it_has_reached(api: Any) -> None:
    ns, elsewhere = namespace(api), namespace(api)
    core_v1 = core(api)
    start = core_v1.list_namespaced_config_map(ns).metadata.resource_version
    response = open_watch(api, ns, resource_version=start, allow_watch_bookmarks=True, timeout_seconds=60)
    # a write this watch does not select: only a bookmark can tell the watch it has gone by
    written = core_v1.create_namespaced_config_map(elsewhere, {"metadata": {"name": "other"}}).metadata.resource_version
    seen = []
    for event in lines(response):
        seen.append(event)
        if event["type"] == "BOOKMARK" and int(event["object"]["metadata"]["resourceVersion"]) >= int(written):
            break
    response.close()
    assert {e["type"] for e in seen} == {"BOOKMARK"}
    assert seen[-1]["object"]["kind"] == "ConfigMap" and seen[-1]["object"]["apiVersion"] == "v1"


def test_a_watch_that_does_not_ask_gets_no_bookmark(api: Any) -> None:
    ns = namespace(api)
    core_v1 = core(api)
    start = core_v1.list_namespaced_config_map(ns).metadata.resource_version
    response = open_watch(api, ns, resource_version=start, timeout_seconds=2)  # 5 bookmark intervals long
    core_v1.create_namespaced_config_map(ns, {"metadata": {"name": "mine"}})
    events = list(lines(response))  # to the watch's end, its timeout
    response.close()
    assert [e["type"] for e in events] == ["ADDED"]
