"""The GitOps tests' shared parts: one sandbox cluster a module, and a fresh repository a test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from opsgate.sandbox import SandboxCluster
from tests.gitops.repo import Repo, make_repo, namespace


@pytest.fixture(scope="module")
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def api(cluster: SandboxCluster) -> Any:
    return config.new_client_from_config_dict(cluster.kubeconfig())


@pytest.fixture
def repo(tmp_path: Path, api: Any) -> Repo:
    return make_repo(tmp_path / "git", namespace(api, "gk"), namespace(api, "gp"))


