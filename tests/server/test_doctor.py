"""``opsgate doctor`` against real things: closed ports, the sandbox over HTTP, broken files on disk."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit import AuditLog
from opsgate.sandbox import SandboxCluster
from opsgate.server.config import Settings, SettingsError, load_settings
from opsgate.server.doctor import (
    Check,
    doctor_exit_code,
    format_checks,
    run_doctor,
    settings_error_check,
)
from tests.harness import server_env


def _kubeconfig(path: Path, server: str, *, context: str = "test", namespace: str | None = None) -> Path:
    ctx: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        ctx["namespace"] = namespace
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
    }))
    return path


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def _doctor(tmp_path: Path, *, timeout: float = 3.0, **settings: Any) -> list[Check]:
    """run_doctor with no ambient kubeconfig: an empty environment and a home without ~/.kube."""
    settings.setdefault("audit_log", tmp_path / "state" / "audit.jsonl")
    return run_doctor(Settings(**settings), timeout=timeout, environ={}, home=tmp_path)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


# ----------------------------------------------------------------------------- cluster


def test_unreachable_cluster_is_an_error_with_the_url_within_5_seconds(tmp_path: Path) -> None:
    port = _closed_port()
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
    started = time.monotonic()
    checks = _doctor(tmp_path, kubeconfig=kubeconfig)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"doctor took {elapsed:.2f} s on an unreachable cluster"
    by = _by_name(checks)
    assert by["cluster"].status == "ok" and str(kubeconfig) in by["cluster"].detail
    assert by["kubeconfig"].status == "ok" and by["context"].status == "ok"
    api = by["api"]
    assert api.status == "error"
    assert f"127.0.0.1:{port}" in api.detail and "did not answer" in api.detail
    assert f"127.0.0.1:{port}" in api.fix and "kubectl" in api.fix
    assert "discovery" not in by and "rbac" not in by  # nothing more to learn from a cluster that is not there
    # the other checks still ran
    assert {"python", "packages", "policy", "principal", "audit log", "models"} <= by.keys()
    assert doctor_exit_code(checks) == 1


def test_a_cluster_that_accepts_but_never_answers_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    try:
        port = listener.getsockname()[1]
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}")
        started = time.monotonic()
        checks = _doctor(tmp_path, kubeconfig=kubeconfig, timeout=1.0)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 3, f"doctor took {elapsed:.2f} s with a 1 s timeout"
    api = _by_name(checks)["api"]
    assert api.status == "error" and "within 1 s" in api.detail and f"127.0.0.1:{port}" in api.detail


def test_sandbox_cluster_is_reachable_and_serves_what_opsgate_needs(tmp_path: Path) -> None:
    with SandboxCluster() as sandbox:
        kubeconfig = tmp_path / "kubeconfig"
        sandbox.write_kubeconfig(kubeconfig)
        checks = _doctor(tmp_path, kubeconfig=kubeconfig)
        url = sandbox.url
    by = _by_name(checks)
    assert by["context"].status == "ok" and "opsgate-sandbox" in by["context"].detail
    assert by["api"].status == "ok" and url in by["api"].detail and "v1." in by["api"].detail
    assert by["discovery"].status == "ok" and "deployments/scale" in by["discovery"].detail
    # the sandbox answers access reviews (it authorizes everything), so the RBAC check runs and passes
    assert by["rbac"].status == "ok" and "may " in by["rbac"].detail
    # who the cluster says these credentials are is who serve would act as, with no --principal
    assert by["cluster user"].status == "ok" and "'sandbox-admin'" in by["cluster user"].detail
    assert by["principal"].detail.startswith("sandbox-admin (the cluster's SelfSubjectReview)")
    assert doctor_exit_code(checks) == 0


def test_no_kubeconfig_is_a_warning_and_starts_no_sandbox(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    checks = _doctor(tmp_path)
    by = _by_name(checks)
    assert by["cluster"].status == "warning"
    assert "no kubeconfig" in by["cluster"].detail and "sandbox" in by["cluster"].detail
    assert "api" not in by
    assert "sandbox-http" not in {t.name for t in threading.enumerate()} - before
    assert doctor_exit_code(checks) == 0


def test_kubeconfig_from_the_environment_is_found_like_serve_finds_it(tmp_path: Path) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{_closed_port()}")
    checks = run_doctor(Settings(audit_log=tmp_path / "a.jsonl"), environ={"KUBECONFIG": str(kubeconfig)},
                        home=tmp_path)
    cluster = _by_name(checks)["cluster"]
    assert cluster.status == "ok" and str(kubeconfig) in cluster.detail and "$KUBECONFIG" in cluster.detail


def test_a_context_that_is_not_in_the_kubeconfig_is_an_error_naming_the_ones_there(tmp_path: Path) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", context="kind-dev")
    by = _by_name(_doctor(tmp_path, kubeconfig=kubeconfig, context="prod"))
    assert by["context"].status == "error" and "'prod'" in by["context"].detail
    assert "kind-dev" in by["context"].fix
    assert "api" not in by


def test_a_kubeconfig_that_does_not_parse_is_an_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("clusters: [unclosed\n")
    by = _by_name(_doctor(tmp_path, kubeconfig=kubeconfig))
    assert by["kubeconfig"].status == "error" and str(kubeconfig) in by["kubeconfig"].detail


class _AuthzApi(BaseHTTPRequestHandler):
    """A minimal API server that does serve SelfSubjectAccessReview, denying the verbs in ``denied``."""

    denied: frozenset[str] = frozenset()
    discovery_delay = 0.0
    reviews: list[dict[str, Any]] = []  # noqa: RUF012 - shared by design, reset per test

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/version":
            self._send(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        elif self.path.rstrip("/") == "/apis/apps/v1":
            time.sleep(type(self).discovery_delay)
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            self._send(200, {"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
                {"name": "deployments", "namespaced": True, "kind": "Deployment", "verbs": verbs},
                {"name": "deployments/scale", "namespaced": True, "kind": "Scale", "verbs": ["get", "patch"]},
                {"name": "replicasets", "namespaced": True, "kind": "ReplicaSet", "verbs": verbs},
            ]})
        else:
            self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.rstrip("/") != "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})
            return
        type(self).reviews.append(body)
        attrs = body["spec"]["resourceAttributes"]
        allowed = attrs["verb"] not in type(self).denied
        self._send(201, {**body, "status": {"allowed": allowed, "reason": "" if allowed else "no role grants it"}})


@pytest.fixture
def authz_api() -> Iterator[tuple[str, type[_AuthzApi]]]:
    handler = type("Handler", (_AuthzApi,), {"denied": frozenset(), "reviews": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_rbac_all_allowed_is_ok_and_asks_in_the_context_namespace(
    tmp_path: Path, authz_api: tuple[str, type[_AuthzApi]]
) -> None:
    url, handler = authz_api
    kubeconfig = _kubeconfig(tmp_path / "kc", url, namespace="team-a")
    rbac = _by_name(_doctor(tmp_path, kubeconfig=kubeconfig))["rbac"]
    assert rbac.status == "ok" and "team-a" in rbac.detail
    asked = {(r["spec"]["resourceAttributes"]["verb"], r["spec"]["resourceAttributes"]["resource"]
              + "/" + r["spec"]["resourceAttributes"].get("subresource", "")) for r in handler.reviews}
    assert {("get", "deployments/"), ("list", "deployments/"), ("create", "deployments/"),
            ("patch", "deployments/"), ("patch", "deployments/scale"), ("list", "replicasets/")} <= asked
    assert {r["spec"]["resourceAttributes"]["namespace"] for r in handler.reviews} == {"team-a"}


def test_rbac_denied_writes_warn_and_denied_reads_are_errors(
    tmp_path: Path, authz_api: tuple[str, type[_AuthzApi]]
) -> None:
    url, handler = authz_api
    kubeconfig = _kubeconfig(tmp_path / "kc", url)
    handler.denied = frozenset({"create", "patch"})
    rbac = _by_name(_doctor(tmp_path, kubeconfig=kubeconfig))["rbac"]
    assert rbac.status == "warning"
    assert "create" in rbac.detail and "default" in rbac.detail and "kubectl auth can-i" in rbac.fix
    handler.denied = frozenset({"list"})
    checks = _doctor(tmp_path, kubeconfig=kubeconfig)
    rbac = _by_name(checks)["rbac"]
    assert rbac.status == "error" and "list" in rbac.detail
    assert doctor_exit_code(checks) == 1


def test_rbac_without_list_and_watch_for_the_cache_warns_that_reads_fall_back_to_get(
    tmp_path: Path, authz_api: tuple[str, type[_AuthzApi]]
) -> None:
    url, handler = authz_api
    kubeconfig = _kubeconfig(tmp_path / "kc", url)
    handler.denied = frozenset({"watch"})
    checks = _doctor(tmp_path, kubeconfig=kubeconfig)
    rbac = _by_name(checks)["rbac"]
    assert rbac.status == "warning" and doctor_exit_code(checks) == 0
    assert "watch deployments" in rbac.detail and "watch replicasets" in rbac.detail
    assert "watch cache" in rbac.detail and "disable_read_cache" in rbac.fix and "(apps) deployments: watch" in rbac.fix
    handler.reviews.clear()
    rbac = _by_name(_doctor(tmp_path, kubeconfig=kubeconfig, disable_read_cache=True))["rbac"]
    assert rbac.status == "ok"  # the cache off: watch is not needed, and not asked
    assert "watch" not in {r["spec"]["resourceAttributes"]["verb"] for r in handler.reviews}


def test_a_slow_api_is_cut_off_and_the_cluster_steps_share_one_budget(
    tmp_path: Path, authz_api: tuple[str, type[_AuthzApi]]
) -> None:
    url, handler = authz_api
    handler.discovery_delay = 5.0
    started = time.monotonic()
    checks = _doctor(tmp_path, kubeconfig=_kubeconfig(tmp_path / "kc", url), timeout=1.0)
    elapsed = time.monotonic() - started
    by = _by_name(checks)
    assert by["api"].status == "ok"
    assert by["discovery"].status == "error" and "no answer within 1 s" in by["discovery"].detail
    assert "rbac" not in by
    assert elapsed < 2.5, f"{elapsed:.2f} s with a 1 s timeout"


# ----------------------------------------------------------------------------- policy


def test_a_broken_policy_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "mine.csv"
    policy.write_text("p, role:viewer, *, *, read, allow\np, role:x, *, *, read, Deny\n")
    checks = _doctor(tmp_path, policy=policy)
    check = _by_name(checks)["policy"]
    assert check.status == "error"
    assert f"{policy}:2" in check.detail and "Deny" in check.detail
    assert f"{policy}:2" in check.fix
    assert doctor_exit_code(checks) == 1


def test_the_shipped_policy_loads_with_its_hash(tmp_path: Path) -> None:
    check = _by_name(_doctor(tmp_path))["policy"]
    assert check.status == "ok" and "policy.csv" in check.detail and "sha256" in check.detail


def test_a_policy_that_names_an_unknown_tool_is_caught_as_serve_would(tmp_path: Path) -> None:
    policy = tmp_path / "mine.csv"
    policy.write_text("p, role:viewer, *, *, read, allow\np, alice, prod, scael, write, allow\n")
    check = _by_name(_doctor(tmp_path, policy=policy))["policy"]
    assert check.status == "error" and ":2" in check.detail and "scale" in check.detail  # the did-you-mean


def test_principal_shows_what_the_policy_lets_it_change(tmp_path: Path) -> None:
    policy = tmp_path / "mine.csv"
    policy.write_text("p, role:viewer, *, *, read, allow\np, role:operator, *, *, write, allow\n"
                      "g, alice, role:operator, team-*\n")
    by = _by_name(_doctor(tmp_path, policy=policy, principal="alice"))
    assert by["principal"].status == "ok" and "alice" in by["principal"].detail
    assert "role:operator in team-*" in by["principal"].detail
    bob = _by_name(_doctor(tmp_path, policy=policy, principal="bob"))["principal"]
    assert bob.status == "ok" and "no role" in bob.detail


# ----------------------------------------------------------------------------- audit log


def test_an_audit_log_that_cannot_be_created_is_an_error(tmp_path: Path) -> None:
    # Tests may run as root, for whom permission bits do not bind: use a parent that is a file.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    checks = _doctor(tmp_path, audit_log=blocker / "audit.jsonl")
    check = _by_name(checks)["audit log"]
    assert check.status == "error" and str(blocker) in check.detail and "--audit-log" in check.fix
    assert doctor_exit_code(checks) == 1
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert _by_name(_doctor(tmp_path, audit_log=folder))["audit log"].status == "error"


def test_a_missing_audit_log_is_not_created_by_doctor(tmp_path: Path) -> None:
    log = tmp_path / "deep" / "er" / "audit.jsonl"
    by = _by_name(_doctor(tmp_path, audit_log=log))
    assert by["audit log"].status == "ok" and "will be created" in by["audit log"].detail
    assert not (tmp_path / "deep").exists()


def test_an_intact_audit_log_verifies(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditLog(log) as audit:
        for i in range(3):
            audit.append({"stage": "decision", "i": i})
    size = log.stat().st_size
    by = _by_name(_doctor(tmp_path, audit_log=log))
    assert by["audit log"].status == "ok" and by["audit chain"].status == "ok"
    assert "3 records" in by["audit chain"].detail
    assert log.stat().st_size == size  # opened for append, nothing written


def test_a_damaged_audit_log_is_an_error_naming_the_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditLog(log) as audit:
        for i in range(3):
            audit.append({"stage": "decision", "tool": "scale", "i": i})
    lines = log.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"scale"', b'"SCALE"')
    log.write_bytes(b"\n".join(lines))
    checks = _doctor(tmp_path, audit_log=log)
    chain = _by_name(checks)["audit chain"]
    assert chain.status == "error" and "line 2" in chain.detail and "hash-mismatch" in chain.detail
    assert doctor_exit_code(checks) == 1


# ----------------------------------------------------------------------------- models


def test_shipped_models_are_listed(tmp_path: Path) -> None:
    check = _by_name(_doctor(tmp_path))["models"]
    assert check.status == "ok" and "iris" in check.detail


def test_an_empty_models_folder_is_a_warning_and_a_bad_model_is_named(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    check = _by_name(_doctor(tmp_path, models=models))["models"]
    assert check.status == "warning" and "no *.onnx" in check.detail
    (models / "broken.onnx").write_bytes(b"\xff\xff\xff not a model")
    check = _by_name(_doctor(tmp_path, models=models))["models"]
    assert check.status == "warning" and "broken" in check.detail


# ----------------------------------------------------------------------------- the table and the CLI path


def test_the_table_shows_every_check_and_what_to_do(tmp_path: Path) -> None:
    port = _closed_port()
    policy = tmp_path / "bad.csv"
    policy.write_text("p, role:viewer, *, *, read, allow\np, role:x, *, *, read, Deny\n")
    checks = _doctor(tmp_path, kubeconfig=_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}"),
                     policy=policy)
    table = format_checks(checks)
    lines = table.splitlines()
    assert lines[0].split() == ["status", "check", "detail"]
    name_at, detail_at = lines[0].index("check"), lines[0].index("detail")
    for check in checks:  # one aligned row per check: status, name, then the detail in its column
        assert any(line.startswith(check.status) and line[name_at:detail_at].strip() == check.name
                   and line[detail_at:].startswith(check.detail[:20]) for line in lines), check
        if check.status != "ok":
            assert check.fix.split()[0] in table
    assert table.count("fix: ") == sum(1 for c in checks if c.status != "ok" and c.fix)
    assert f"{len(checks)} checks:" in lines[-1] and "error" in lines[-1]


def test_settings_that_do_not_load_become_one_error_row(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"policy": tmp_path / "missing.csv"}, environ={})
    row = settings_error_check(caught.value)
    assert row.status == "error" and "policy" in row.detail
    assert doctor_exit_code([row]) == 1 and "settings" in format_checks([row])


def test_doctor_through_the_settings_loader_in_a_fresh_process(tmp_path: Path) -> None:
    """What ``opsgate doctor --kubeconfig ...`` will do once wired: settings as serve loads them, one table."""
    kubeconfig = _kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{_closed_port()}")
    code = (
        "import sys; from pathlib import Path\n"
        "from opsgate.server.config import load_settings\n"
        "from opsgate.server.doctor import run_doctor, format_checks, doctor_exit_code\n"
        "s = load_settings({'kubeconfig': Path(sys.argv[1]), 'audit_log': Path(sys.argv[2])})\n"
        "checks = run_doctor(s)\n"
        "print(format_checks(checks))\n"
        "sys.exit(doctor_exit_code(checks))\n"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(kubeconfig), str(tmp_path / "a.jsonl")],
                          capture_output=True, text=True, timeout=60, env=server_env({"HOME": str(tmp_path)}))
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""  # doctor itself prints nothing: the table is the caller's to print
    assert "error    api" in proc.stdout and "did not answer" in proc.stdout
    assert elapsed < 10  # interpreter and imports included
