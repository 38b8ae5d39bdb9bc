"""The same deploy/scale/rollback scenario against a REAL cluster.

Runs only when OPSGATE_E2E_KUBECONFIG names a kubeconfig (and optionally
OPSGATE_E2E_NAMESPACE, default ``opsgate-e2e``, created if missing); it
creates and deletes one Deployment, ``opsgate-e2e-web``, there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.harness import serve

KUBECONFIG = os.environ.get("OPSGATE_E2E_KUBECONFIG")
NAMESPACE = os.environ.get("OPSGATE_E2E_NAMESPACE", "opsgate-e2e")
NAME = "opsgate-e2e-web"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not KUBECONFIG, reason="set OPSGATE_E2E_KUBECONFIG to run against a real cluster"),
]


def _apps() -> Any:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=KUBECONFIG)
    try:
        client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    return client.AppsV1Api(api_client)


async def test_round_trip_on_a_real_cluster(tmp_path: Path) -> None:
    apps = _apps()
    policy = tmp_path / "policy.csv"
    policy.write_text(
        "g, role:everyone, role:viewer, *\np, role:viewer, *, *, read, allow\n"
        f"p, e2e, {NAMESPACE}, *, write, allow\n"
    )
    try:
        async with serve(tmp_path, "--principal", "e2e", "--kubeconfig", str(KUBECONFIG),
                         "--policy", str(policy)) as s:
            base = {"name": NAME, "namespace": NAMESPACE}
            for image in ("nginx:1.26", "nginx:1.27"):
                result = await s.call("deploy", {**base, "image": image, "replicas": 1, "wait": True})
                assert not result.is_error, result.content
            history = (await s.call("rollout_history", base)).structured_content
            assert [r["revision"] for r in history["revisions"]][-2:] == [1, 2]
            preview = await s.call("rollback", {**base, "dry_run": True})
            assert not preview.is_error, preview.content
            back = await s.call("rollback", base)
            assert not back.is_error, back.content
            image = apps.read_namespaced_deployment(NAME, NAMESPACE).spec.template.spec.containers[0].image
            assert image == "nginx:1.26"
            scaled = await s.call("scale", {**base, "replicas": 2})
            assert not scaled.is_error, scaled.content
    finally:
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            apps.delete_namespaced_deployment(NAME, NAMESPACE)
