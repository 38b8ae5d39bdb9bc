"""bench/sandbox_process.py: the sandbox in its own process counts every request it answers, by verb and path.

The benchmark's "API requests per 100 polls" and its check that the direct client makes the tool's
very requests rest on these counts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bench.sandbox_process import SandboxProcess

LIST = "GET /apis/apps/v1/namespaces/bench/deployments"


def test_the_bench_sandbox_counts_each_request_by_verb_and_path(tmp_path: Path) -> None:
    with SandboxProcess(tmp_path / "kubeconfig", ["bench"]) as sandbox:
        api: Any = config.new_client_from_config(str(sandbox.kubeconfig))
        apps: Any = client.AppsV1Api(api)
        try:
            sandbox.reset()
            assert sandbox.counts() == Counter()
            apps.list_namespaced_deployment("bench")
            apps.list_namespaced_deployment("bench", limit=500)
            with pytest.raises(ApiException) as missing:
                apps.read_namespaced_deployment("ghost", "bench")
            assert missing.value.status == 404
            apps.list_namespaced_deployment("bench", watch=True, timeout_seconds=1, _preload_content=False).read()
            assert sandbox.counts() == Counter({LIST: 2, f"{LIST}/ghost": 1, f"WATCH {LIST.split(' ', 1)[1]}": 1})
            sandbox.reset()
            assert sandbox.counts() == Counter()
        finally:
            api.close()
