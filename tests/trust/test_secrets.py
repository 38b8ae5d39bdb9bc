"""Issue 15 item 7: no secret reaches the audit log, the server's stderr or a tool result.

Each kind of secret (an AWS access key id, ``password=...``, a bearer token, a
PEM private key, kubeconfig's ``client-key-data``, a URL's ``user:password@``)
is planted in each place a caller or the outside world can put text: the
arguments (accepted and rejected), a label, an image (accepted, refused by a
bound, rejected as malformed), the cluster's error message (the sandbox, like
the API server, quotes an invalid label value back) and a model server's error
(an input name the model server names in its answer). A real server on the
sandbox cluster, over stdio; then no planted secret may appear in the log file,
stderr, or any text or structured content the client received.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import opsgate.sandbox.http as sandbox_http
from opsgate.sandbox import SandboxCluster
from opsgate.sandbox.errors import ApiError
from opsgate.tools.tensors import MODELS_DIR_DEFAULT
from tests.harness import serve, shipped_policy

pytestmark = pytest.mark.anyio

NS = "team-a"
# Each secret and the part of it that must never be seen again.
SECRETS: dict[str, tuple[str, str]] = {
    "aws": ("AKIAQWERTYUIOPASDFGH", "AKIAQWERTYUIOPASDFGH"),
    "password": ("password=Hunter2-Sekrit-77", "Hunter2-Sekrit-77"),
    "bearer": ("Authorization: Bearer Zx9kQ2mVt7LpR4wY8nB3", "Zx9kQ2mVt7LpR4wY8nB3"),
    "pem": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpQIBAAKCAQEAsEcReTpEmKeYbYtEs\n-----END RSA PRIVATE KEY-----",
            "MIIEpQIBAAKCAQEAsEcReTpEmKeYbYtEs"),
    "client-key-data": ("client-key-data: LS0tQ2xpZW50S2V5RGF0YVNlY3JldA", "LS0tQ2xpZW50S2V5RGF0YVNlY3JldA"),
    "url": ("https://deployer:Url-Pa55word-99@registry.example.com/v2/", "Url-Pa55word-99"),
}
MARKERS = [marker for _, marker in SECRETS.values()]
ROWS = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture
def cluster() -> Iterator[SandboxCluster]:
    with SandboxCluster(rollout_delay=0.05) as sandbox:
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config_dict
        api = new_client(sandbox.kubeconfig())
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NS}})
        api.close()
        yield sandbox


class _Says:
    """What the outside world (the cluster's error, the model server's error) says next: a planted secret."""

    text = ""


class _ModelServer(BaseHTTPRequestHandler):
    """A model server that fails every request with an error text holding the planted secret."""

    def _fail(self) -> None:
        body = json.dumps({"error": f"model load failed: {_Says.text}"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _texts(result: Any) -> str:
    """Everything a client received for one call: every content text and the structured content."""
    parts = [getattr(c, "text", "") or "" for c in result.content]
    parts.append(json.dumps(result.structured_content) if result.structured_content is not None else "")
    return "\n".join(parts)


async def test_item7_no_planted_secret_reaches_the_log_stderr_or_a_result(
    tmp_path: Path, cluster: SandboxCluster, model_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 7: each secret kind in each place; none is ever written or answered back."""
    kubeconfig = tmp_path / "kubeconfig"
    cluster.write_kubeconfig(kubeconfig)
    policy = shipped_policy(tmp_path / "policy", "g, alice, role:operator, team-*")
    bounds = policy / "bounds.toml"  # operators may deploy only from registry.example.com
    allowed = f'image_prefixes = ["registry.example.com/"]\nstorage_uri_prefixes = ["file://{MODELS_DIR_DEFAULT}/"]\n'
    text = bounds.read_text().replace('[subject."role:operator"]\n', f'[subject."role:operator"]\n{allowed}', 1)
    viewer = '[subject."role:viewer"]\n'  # the shipped file has the table (its read rate limit): add to it
    assert viewer in text
    bounds.write_text(text.replace(viewer, f"{viewer}allow_url_override = true\n", 1))
    # The cluster's error text (an admission webhook's, say) quotes whatever it was given.
    monkeypatch.setattr(sandbox_http, "generic", lambda code, message=None: ApiError(
        code, "BadRequest", f'admission webhook "policy.example.com" denied the request: {_Says.text}'))
    seen: list[str] = []
    refusals: list[str] = []
    async with serve(tmp_path, "--principal", "alice", "--kubeconfig", str(kubeconfig),
                     "--policy", str(policy)) as s:

        async def call(tool: str, arguments: dict[str, Any], *, fails: bool | None = None) -> Any:
            result = await s.call(tool, arguments)
            seen.append(_texts(result))
            if fails is not None:
                assert result.is_error is fails, (tool, arguments, _texts(result))
            if result.is_error:
                refusals.append(_texts(result))
            return result

        web = {"name": "web", "namespace": NS}
        # Accepted: an AWS key id is a valid label value and a valid image tag; both are written to the cluster.
        await call("deploy", {**web, "image": f"registry.example.com/web:{SECRETS['aws'][0]}",
                              "labels": {"key-id": SECRETS["aws"][0]}}, fails=False)
        await call("list_workloads", {"namespace": NS}, fails=False)
        await call("rollout_history", web)
        for kind, (secret, _) in SECRETS.items():
            # Arguments the tool does not take, under a telling key and under a plain one (recorded as sent).
            await call("deploy", {**web, "image": "registry.example.com/web:1", kind: secret, "note": secret})
            if kind == "aws":
                continue  # a valid label value and image tag: planted in the accepted deploy above
            # A label value the cluster refuses, quoting it back in its error message.
            await call("deploy", {**web, "image": "registry.example.com/web:1", "labels": {"note": secret}},
                       fails=True)
            # A malformed image, rejected before any decision.
            await call("deploy", {**web, "image": f"registry.example.com/web:{secret}"}, fails=True)
        for secret, _ in SECRETS.values():
            # The cluster's error message.
            _Says.text = secret
            cluster.inject_fault(None, f"/namespaces/{NS}/deployments", status=400, times=1)
            await call("deploy", {**web, "image": "registry.example.com/web:2"}, fails=True)
        # A well-formed image outside the allowed registries: refused by a bound.
        await call("deploy", {**web, "image": f"docker.io/evil/web:{SECRETS['aws'][0]}"}, fails=True)
        await call("deploy", {**web, "image": "docker.io/evil/web:1", "env": {"DB_PASSWORD": "Hunter2-Sekrit-77"}},
                   fails=True)
        # A model server's error: it names the input it does not know, which the caller chose.
        iris = {"name": "iris", "namespace": NS}
        await call("deploy_model", {**iris, "storage_uri": f"file://{MODELS_DIR_DEFAULT}/iris.onnx", "wait": True},
                   fails=False)
        for secret, _ in SECRETS.values():
            _Says.text = secret
            await call("kserve_infer", {**iris, "inputs": {secret: ROWS}}, fails=True)  # the input name is quoted
            await call("kserve_infer", {**iris, "inputs": {"features": ROWS}, "url": model_server}, fails=True)
        with_userinfo = model_server.replace("http://", "http://deployer:Url-Pa55word-99@")
        await call("kserve_infer", {**iris, "inputs": {"features": ROWS}, "url": with_userinfo}, fails=True)
        await call("kserve_infer", {**iris, "inputs": {"features": ROWS},
                                    "url": "http://deployer:Url-Pa55word-99@127.0.0.1:9/"}, fails=True)

    log = s.audit_log.read_text()
    stderr = s.stderr_path.read_text()
    assert len(refusals) >= 20, "the planted calls were refused as planned"
    assert "[REDACTED]" in log
    leaks = [f"{kind} in the audit log" for kind, (_, marker) in SECRETS.items() if marker in log]
    leaks += [f"{kind} on stderr" for kind, (_, marker) in SECRETS.items() if marker in stderr]
    leaks += [f"{kind} in a result: {text[:300]}" for text in seen for kind, (_, marker) in SECRETS.items()
              if marker in text]
    assert not leaks, "\n".join(leaks)
