"""``opsgate doctor``: check the setup a user has, before an assistant finds out the hard way.

Each check is isolated (one that fails, or crashes, never stops the others) and
every step that touches the network is bounded by ``timeout``: it runs in a
daemon thread that is abandoned when it overruns, so an unreachable cluster, a
black-holed address or a hanging credential plugin costs at most ``timeout``
seconds, never the user's patience. Nothing here prints and nothing is started:
no sandbox, no server, no audit log is created. The CLI prints
:func:`format_checks` and exits with :func:`doctor_exit_code`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import platform
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from . import __version__
from .config import Settings, SettingsError
from .rbac import APPS, READ_VERBS, TOOL_NEEDS, ApiAccess, cluster_needs

if TYPE_CHECKING:
    from opsgate.policies import Policy
    from opsgate.tools.kube import Kube

    from .toolspec import ToolSpec

__all__ = [
    "REQUIRED_PACKAGES",
    "Check",
    "Status",
    "doctor_exit_code",
    "format_checks",
    "run_doctor",
    "settings_error_check",
]

Status = Literal["ok", "warning", "error"]
T = TypeVar("T")

# Distribution names (pycasbin is imported as ``casbin``).
REQUIRED_PACKAGES: Final = ("mcp", "kubernetes", "pydantic", "pycasbin", "structlog", "onnxruntime")
MIN_PYTHON: Final = (3, 11)
DEFAULT_NAMESPACE: Final = "default"
SA_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# All cluster steps together get this many times ``timeout``: 4.5 s at the default 3 s.
CLUSTER_BUDGET: Final = 1.5


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table; ``fix`` says what to do when ``status`` is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""


class _StepTimeout(Exception):
    pass


def _bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` in a daemon thread and give up after ``timeout`` s.

    Why a thread: a kubeconfig's exec credential plugin or a connect to a
    black-holed address can block for minutes inside the client, and only
    abandoning the thread bounds that from outside.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    thread = threading.Thread(target=run, name=f"opsgate-doctor-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _StepTimeout(f"{what}: no answer within {timeout:g} s")
    if error:
        raise error[0]
    return result[0]


class _Budget:
    """One deadline for the cluster steps, so several slow steps cannot add up past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def step(self, timeout: float) -> float:
        """The time the next step may take: ``timeout``, less if the deadline is nearer; 0 when it has passed."""
        return max(0.0, min(timeout, self.deadline - time.monotonic()))


def _guarded(name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """A check that crashes becomes an error row; the others still run."""
    try:
        return fn()
    except Exception as exc:
        return [Check(name, "error", f"the check itself failed: {type(exc).__name__}: {exc}",
                      "this is a bug in opsgate doctor; please report it with this line")]


def run_doctor(
    settings: Settings,
    *,
    timeout: float = 3.0,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[Check]:
    """Every check, in the order a newcomer would fix things. ``environ``/``home`` default to this process's."""
    env = os.environ if environ is None else environ
    home_dir = Path.home() if home is None else home
    checks: list[Check] = []
    checks += _guarded("python", _check_python)
    checks += _guarded("packages", _check_packages)
    cluster_user: list[str] = []  # what the cluster's SelfSubjectReview said, when it was asked and answered
    tools = _server_tools(settings)  # what serve would register: the policy and the cluster's RBAC are checked for it
    needs = _cluster_needs(tools, read_cache=not settings.disable_read_cache)
    checks += _guarded("cluster", lambda: _check_cluster(settings, env, home_dir, timeout, cluster_user, needs))
    policy_holder: list[Policy] = []
    checks += _guarded("policy", lambda: _check_policy(settings, policy_holder, tools))
    checks += _guarded("principal", lambda: _check_principal(settings, policy_holder, cluster_user))
    if settings.audit_db is not None:
        dsn = settings.audit_db.get_secret_value()
        checks += _guarded("audit log", lambda: _check_audit_db(dsn))
    else:
        checks += _guarded("audit log", lambda: _check_audit_log(settings.audit_log))
    checks += _guarded("models", lambda: _check_models(settings.models))
    return checks


def settings_error_check(exc: SettingsError) -> Check:
    """The row to show when the settings themselves do not load (so run_doctor cannot run)."""
    return Check("settings", "error", str(exc),
                 "fix or remove that setting (flag, OPSGATE_* variable or --config file); `opsgate serve` "
                 "would stop with the same message")


def doctor_exit_code(checks: Iterable[Check]) -> int:
    """0 when everything is ok or only warned about, 1 when anything is an error."""
    return 1 if any(c.status == "error" for c in checks) else 0


def format_checks(checks: Sequence[Check], *, width: int = 110) -> str:
    """An aligned table: status, check, detail, and for each row not ok a ``fix:`` line under it."""
    name_w = max([len("check"), *(len(c.name) for c in checks)])
    status_w = len("warning")
    indent = " " * (status_w + 2 + name_w + 2)
    text_w = max(40, width - len(indent))
    lines = [f"{'status':<{status_w}}  {'check':<{name_w}}  detail",
             f"{'-' * status_w}  {'-' * name_w}  {'-' * min(text_w, 40)}"]
    for c in checks:
        wrapped = _wrap(c.detail or "-", text_w)
        lines.append(f"{c.status:<{status_w}}  {c.name:<{name_w}}  {wrapped[0]}")
        lines.extend(indent + more for more in wrapped[1:])
        if c.status != "ok" and c.fix:
            lines.extend(indent + part for part in _wrap("fix: " + c.fix, text_w, subsequent="     "))
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warning", "error")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'ok' else ''}" for s, n in counts.items())
    lines.append("")
    lines.append(f"{len(checks)} checks: {summary}")
    return "\n".join(lines)


def _wrap(text: str, width: int, subsequent: str = "") -> list[str]:
    out = textwrap.wrap(text, width, subsequent_indent=subsequent, break_long_words=False,
                        break_on_hyphens=False)
    return out or [""]


# --------------------------------------------------------------------------- python and packages


def _check_python() -> list[Check]:
    version = platform.python_version()
    detail = f"Python {version} at {sys.executable}; opsgate {__version__}"
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return [Check("python", "error", detail, f"opsgate needs Python {need} or newer: "
                      f"create the venv with python{need} (python{need} -m venv .venv)")]
    return [Check("python", "ok", detail)]


def _declared_requirements() -> dict[str, str]:
    """name -> version specifier as declared by the installed opsgate distribution (empty from a source tree)."""
    try:
        declared = importlib.metadata.requires("opsgate") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    specs: dict[str, str] = {}
    for line in declared:
        if ";" in line:  # an extra's requirement (dev tools): not needed to serve
            continue
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*)", line)
        if match:
            specs[match.group(1).lower()] = match.group(2).strip().strip("()")
    return specs


def _satisfies(version: str, spec: str) -> bool | None:
    """None when it cannot be told (``packaging`` missing or an odd version string)."""
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:
        return None
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except (InvalidVersion, ValueError):
        return None


def _check_packages() -> list[Check]:
    declared = _declared_requirements()
    found: list[str] = []
    missing: list[str] = []
    outdated: list[str] = []
    for name in REQUIRED_PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        found.append(f"{name} {version}")
        spec = declared.get(name, "")
        if _satisfies(version, spec) is False:
            outdated.append(f"{name} {version} (needs {spec})")
    detail = ", ".join(found) or "none found"
    if missing or outdated:
        problems = []
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if outdated:
            problems.append(f"too old: {', '.join(outdated)}")
        return [Check("packages", "error", "; ".join(problems) + f" (found {detail})",
                      f"reinstall opsgate into this environment: {sys.executable} -m pip install --upgrade .")]
    return [Check("packages", "ok", detail)]


# --------------------------------------------------------------------------- cluster


@dataclass
class _Target:
    """Which cluster ``opsgate serve`` would use, found without any network call."""

    source: str  # "kubeconfig" or "in-cluster"
    kubeconfig: Path | None = None
    origin: str = ""  # where the kubeconfig path came from
    context: str | None = None
    namespace: str = DEFAULT_NAMESPACE


def _kubeconfig_origin(settings: Settings, environ: Mapping[str, str]) -> str:
    if settings.kubeconfig is not None:
        return "from --kubeconfig / OPSGATE_KUBECONFIG"
    if environ.get("KUBECONFIG"):
        return "from $KUBECONFIG"
    return "the default ~/.kube/config"


def _check_cluster(settings: Settings, environ: Mapping[str, str], home: Path, timeout: float,
                   cluster_user: list[str], needs: Sequence[ApiAccess]) -> list[Check]:
    """Which cluster, kubeconfig, context, API reachable, discovery, RBAC: each step needs the one before."""
    from .cluster import find_kubeconfig

    path = find_kubeconfig(settings, environ, home)
    if path is None:
        if environ.get("KUBERNETES_SERVICE_HOST"):
            namespace = DEFAULT_NAMESPACE
            with contextlib.suppress(OSError):
                namespace = SA_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or DEFAULT_NAMESPACE
            in_cluster = _Target("in-cluster", namespace=namespace)
            checks = [Check("cluster", "ok", f"in-cluster service account (namespace {namespace})")]
            return checks + _check_api(in_cluster, timeout, cluster_user, needs)
        return [Check(
            "cluster", "warning",
            "no kubeconfig: `opsgate serve` would use the built-in sandbox (in memory, not a real cluster)",
            "to use a real cluster, pass --kubeconfig (or set OPSGATE_KUBECONFIG or $KUBECONFIG), or create "
            "~/.kube/config; the sandbox is fine for trying opsgate out",
        )]
    origin = _kubeconfig_origin(settings, environ)
    checks = [Check("cluster", "ok", f"kubeconfig {path} ({origin})")]
    target, more = _check_kubeconfig(settings, path, origin)
    checks += more
    if target is None:
        return checks
    return checks + _check_api(target, timeout, cluster_user, needs)


def _check_kubeconfig(settings: Settings, path: Path, origin: str) -> tuple[_Target | None, list[Check]]:
    """The file parses and the context exists; no credential plugin runs here (that is the API step)."""
    from kubernetes import config as k8s_config

    try:
        contexts, current = k8s_config.list_kube_config_contexts(config_file=str(path))
    except Exception as exc:  # ConfigException, bad YAML, unreadable file
        return None, [Check("kubeconfig", "error", f"{path} does not load: {exc}",
                            f"check it with `kubectl config view --kubeconfig {path}`")]
    names = [c.get("name") for c in contexts or [] if isinstance(c, dict)]
    checks = [Check("kubeconfig", "ok", f"{path}: {len(names)} context(s)")]
    wanted = settings.context
    if wanted is None:
        chosen = current if isinstance(current, dict) else None
        if chosen is None:
            checks.append(Check("context", "error", f"{path} has no current-context and no --context was given",
                                f"pass --context (one of: {', '.join(map(str, names)) or 'none'}) or run "
                                "`kubectl config use-context NAME`"))
            return None, checks
        how = "current-context"
    else:
        chosen = next((c for c in contexts or [] if isinstance(c, dict) and c.get("name") == wanted), None)
        if chosen is None:
            checks.append(Check("context", "error", f"context {wanted!r} is not in {path}",
                                f"pass --context with one of: {', '.join(map(str, names)) or 'none'}"))
            return None, checks
        how = "from --context / OPSGATE_CONTEXT"
    ctx = chosen.get("context") or {}
    namespace = str(ctx.get("namespace") or DEFAULT_NAMESPACE)
    name = str(chosen.get("name"))
    checks.append(Check("context", "ok", f"{name} ({how}): cluster {ctx.get('cluster')}, user {ctx.get('user')}, "
                                         f"namespace {namespace}"))
    return _Target("kubeconfig", kubeconfig=path, origin=origin, context=name, namespace=namespace), checks


def _reach_hint(target: _Target) -> str:
    if target.kubeconfig is None:
        return "`kubectl get --raw /version` from this pod"
    return f"`kubectl --kubeconfig {target.kubeconfig} --context {target.context} get --raw /version`"


def _short(message: str) -> str:
    """Drop urllib3's object reprs ("<...HTTPConnection object at 0x7f..>: ") from a message."""
    return re.sub(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*", "", message)


def _check_api(target: _Target, timeout: float, cluster_user: list[str], needs: Sequence[ApiAccess]) -> list[Check]:
    from kubernetes import client as k8s  # imported here, not in a bounded thread: imports take a lock

    from opsgate.tools.errors import ToolError
    from opsgate.tools.kube import ClusterUnreachable, Kube, KubeApiError, KubeTarget

    kt = (KubeTarget(in_cluster=True) if target.source == "in-cluster"
          else KubeTarget(kubeconfig=target.kubeconfig, context=target.context))
    kube = Kube(kt, request_timeout=(timeout, timeout))
    budget = _Budget(timeout * CLUSTER_BUDGET)
    try:
        try:
            _bounded(kube.connect, budget.step(timeout), "load the cluster credentials")
        except (ToolError, _StepTimeout) as exc:
            text = exc.message if isinstance(exc, ToolError) else f"{exc} (an exec credential plugin?)"
            return [Check("credentials", "error", text,
                          "check the user entry of the context (tokens, certificates, exec plugin); "
                          f"{_reach_hint(target)} shows the same problem")]
        server = kube.server
        started = time.monotonic()
        limit = budget.step(timeout)
        try:
            version = _bounded(lambda: kube.call(k8s.VersionApi(kube.connect()).get_code,
                                                 what="GET /version"), limit, "GET /version")
        except (ClusterUnreachable, _StepTimeout) as exc:
            why = _short(exc.message) if isinstance(exc, ClusterUnreachable) else (
                f"the cluster at {server} did not answer GET /version within {limit:.2g} s")
            if isinstance(exc, ClusterUnreachable) and exc.rule == "tls":
                return [Check("api", "error", why,
                              f"the TLS connection to {server} failed: check the server address and the cluster's "
                              f"certificate-authority in the kubeconfig; try {_reach_hint(target)}")]
            return [Check("api", "error", why,
                          f"is the cluster running (a local kind/minikube/k3d cluster may be stopped) and is {server} "
                          f"the right address? Try {_reach_hint(target)}. Without a kubeconfig, `opsgate serve` uses "
                          "the built-in sandbox instead")]
        except KubeApiError as exc:
            if exc.status == 401:
                fix = "the credentials are refused: refresh them (log in again) or pick another --context"
            elif exc.status == 403:
                fix = "this identity may not even read /version: check its RBAC with the cluster admin"
            else:
                fix = f"{server} does not answer like a Kubernetes API server: check the server URL in the kubeconfig"
            return [Check("api", "error", _short(exc.message), fix)]
        elapsed = time.monotonic() - started
        git = version.get("gitVersion") if isinstance(version, dict) else None
        checks = [Check("api", "ok", f"{server} answered in {elapsed:.2f} s: Kubernetes {git or '?'}")]
        checks.append(_check_cluster_user(kube, budget, timeout, cluster_user))
        discovery = _check_discovery(kube, budget, timeout, needs)
        checks.append(discovery)
        if discovery.status != "error":
            checks.append(_check_rbac(kube, target.namespace, budget, timeout, needs))
        return checks
    finally:
        kube.close()


def _out_of_time(name: str, budget: _Budget) -> Check:
    return Check(name, "error", f"not checked: the cluster answered too slowly (doctor gives it {budget.seconds:g} s)",
                 "check the cluster's load and the network to it; pass a longer timeout to doctor")


def _check_cluster_user(kube: Kube, budget: _Budget, timeout: float, cluster_user: list[str]) -> Check:
    """Who the cluster says these credentials are: the principal when --principal is not given."""
    from opsgate.tools.errors import ToolError

    from .identity import cluster_username

    limit = budget.step(timeout)
    if limit <= 0:
        return _out_of_time("cluster user", budget)
    try:
        name = _bounded(lambda: cluster_username(kube), limit, "SelfSubjectReview")
    except (ToolError, _StepTimeout) as exc:
        text = exc.message if isinstance(exc, ToolError) else str(exc)
        return Check("cluster user", "warning", f"the cluster did not say who these credentials are: {_short(text)}",
                     "without --principal, `opsgate serve` then acts as the OS user; SelfSubjectReview needs "
                     "Kubernetes 1.28 or later")
    cluster_user.append(name)
    return Check("cluster user", "ok", f"the cluster knows these credentials as {name!r} (kubectl auth whoami)")


def _check_discovery(kube: Kube, budget: _Budget, timeout: float, needs: Sequence[ApiAccess]) -> Check:
    """apps/v1 serves the resources and verbs the Deployment tools need (KServe is optional: its tools say so)."""
    from opsgate.tools.errors import ToolError

    limit = budget.step(timeout)
    if limit <= 0:
        return _out_of_time("discovery", budget)
    try:
        listing = _bounded(lambda: kube.call(kube.apps.get_api_resources, what="discover apps/v1"), limit,
                           "GET /apis/apps/v1")
    except (ToolError, _StepTimeout) as exc:
        text = exc.message if isinstance(exc, ToolError) else str(exc)
        return Check("discovery", "error", _short(text),
                     "the API does not serve apps/v1 to this identity: check the cluster version and the credentials")
    served: dict[str, set[str]] = {}
    for res in (listing.get("resources") or []) if isinstance(listing, dict) else []:
        if isinstance(res, dict) and isinstance(res.get("name"), str):
            served[res["name"]] = {str(v) for v in res.get("verbs") or []}
    apps = {a.resource: a.verbs for a in needs if a.group == APPS and not a.optional}
    lacking = [f"{name} ({', '.join(v for v in verbs if v not in served.get(name, set()))})"
               for name, verbs in apps.items() if not set(verbs) <= served.get(name, set())]
    if lacking:
        return Check("discovery", "error", f"/apis/apps/v1 does not offer: {'; '.join(lacking)}",
                     "opsgate's Deployment tools need these resources and verbs; use a conformant Kubernetes API")
    shown = "; ".join(f"{name} {', '.join(verbs)}" for name, verbs in apps.items())
    return Check("discovery", "ok", f"apps/v1 serves {shown}")


def _access_review(namespace: str, group: str, resource: str, verb: str) -> dict[str, Any]:
    name, _, sub = resource.partition("/")
    attrs: dict[str, str] = {"namespace": namespace, "verb": verb, "group": group, "resource": name}
    if sub:
        attrs["subresource"] = sub
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}


def _check_rbac(kube: Kube, namespace: str, budget: _Budget, timeout: float, needs: Sequence[ApiAccess]) -> Check:
    """Ask the API (SelfSubjectAccessReview) whether this identity may do what the tools do (server/rbac.py)."""
    from kubernetes import client as k8s

    from opsgate.tools.errors import ToolError
    from opsgate.tools.kube import KubeApiError

    authz = k8s.AuthorizationV1Api(kube.connect())
    asks = [(access, verb) for access in needs for verb in access.verbs]

    def review_all() -> list[tuple[ApiAccess, str, dict[str, Any]]]:
        return [(access, verb, kube.call(authz.create_self_subject_access_review,
                                         _access_review(namespace, access.group, access.resource, verb),
                                         what=f"review {verb} {access.resource}"))
                for access, verb in asks]

    limit = budget.step(timeout)
    if limit <= 0:
        return _out_of_time("rbac", budget)
    try:
        answers = _bounded(review_all, limit, "SelfSubjectAccessReview")
    except KubeApiError as exc:
        if exc.status in (404, 405):
            return Check("rbac", "warning",
                         "not checked: the API does not serve SelfSubjectAccessReview (the sandbox does not)",
                         "on a real cluster, check with `kubectl auth can-i --list -n " + namespace + "`")
        return Check("rbac", "error", f"the access review was refused: {_short(exc.message)}",
                     f"check with `kubectl auth can-i --list -n {namespace}`")
    except (ToolError, _StepTimeout) as exc:
        text = exc.message if isinstance(exc, ToolError) else str(exc)
        return Check("rbac", "error", _short(text), f"check with `kubectl auth can-i --list -n {namespace}`")
    denied = [(access, verb) for access, verb, ans in answers
              if not (isinstance(ans, dict) and (ans.get("status") or {}).get("allowed") is True)]
    if not denied:
        return Check("rbac", "ok", f"the cluster identity may {_verbs(asks)} in namespace {namespace}")
    cache_only = [d for d in denied if d[0].optional]
    denied = [d for d in denied if not d[0].optional]
    if not denied:  # only the watch cache's list/watch: the reads still work, with a get each
        first, verb = cache_only[0]
        kinds = " or ".join(dict.fromkeys(access.kind for access, _ in cache_only))
        return Check("rbac", "warning",
                     f"in namespace {namespace} the cluster identity may not {_verbs(cache_only)}, so the watch cache "
                     f"cannot keep {kinds}: the read tools ask the API server at every call instead (checked with "
                     "SelfSubjectAccessReview)",
                     f"for the cache, ask a cluster admin for a Role in {namespace} granting {_role(cache_only)}; or "
                     f"turn the cache off (disable_read_cache); verify with "
                     f"`kubectl auth can-i {verb} {_resource_name(first)} -n {namespace}`")
    reads = [d for d in denied if d[1] in READ_VERBS]
    status: Status = "error" if reads else "warning"
    what = "read" if reads else "change"
    kinds = " or ".join(dict.fromkeys(access.kind for access, _ in (reads or denied)))
    role = _role(denied)
    first, verb = denied[0]
    return Check("rbac", status,
                 f"in namespace {namespace} the cluster identity may not {_verbs(denied)}, so opsgate cannot "
                 f"{what} {kinds} there (checked with SelfSubjectAccessReview)",
                 f"ask a cluster admin for a Role in {namespace} granting {role}; verify with "
                 f"`kubectl auth can-i {verb} {_resource_name(first)} -n {namespace}`")


def _role(denied: Sequence[tuple[ApiAccess, str]]) -> str:
    """The rules a Role would need, one a resource: ``(apps) deployments: list, watch``."""
    return "; ".join(f"({access.group}) {access.resource}: {', '.join(v for a, v in denied if a == access)}"
                     for access in dict.fromkeys(a for a, _ in denied))


def _resource_name(access: ApiAccess) -> str:
    """As kubectl takes it: a custom resource by its full name (``inferenceservices.serving.kserve.io``)."""
    return access.resource if access.group in ("", APPS) else f"{access.resource}.{access.group}"


def _verbs(pairs: Sequence[tuple[ApiAccess, str]]) -> str:
    by_res: dict[str, list[str]] = {}
    for access, verb in pairs:
        by_res.setdefault(_resource_name(access), []).append(verb)
    return "; ".join(f"{'/'.join(verbs)} {res}" for res, verbs in by_res.items())


def _cluster_needs(tools: list[ToolSpec[Any, Any]] | None, *, read_cache: bool) -> list[ApiAccess]:
    """What the tools serve would register call on the cluster (every tool's, if that list could not be made),
    and with the watch cache on, what it lists and watches (optional verbs)."""
    return cluster_needs(TOOL_NEEDS if tools is None else [tool.name for tool in tools], read_cache=read_cache)


# --------------------------------------------------------------------------- policy and principal


def _server_tools(settings: Settings) -> list[ToolSpec[Any, Any]] | None:
    """The tools the server would register, listed once: the policy is loaded and linted, and the cluster's
    RBAC checked, for them as serve does. None when they cannot be listed (the checks then do without)."""
    try:
        from .catalog import server_tools

        return server_tools(settings)
    except Exception:
        return None


def _check_policy(settings: Settings, holder: list[Policy], tools: list[ToolSpec[Any, Any]] | None) -> list[Check]:
    from opsgate.policies import POLICY_FILE, SHIPPED_DIR, PolicyError, default_policy, load_policy

    from .catalog import tool_verbs

    known = tool_verbs(tools) if tools is not None else None
    try:
        policy = default_policy(known_tools=known) if settings.policy is None else load_policy(
            settings.policy, known_tools=known)
    except PolicyError as exc:
        where = f"{exc.path}:{exc.line}" if exc.line is not None else str(exc.path)
        return [Check("policy", "error", str(exc),
                      f"edit {where}; `opsgate serve` refuses to start until the policy loads")]
    holder.append(policy)
    sources = ", ".join(str(s) for s in policy.sources)
    which = "shipped" if settings.policy is None else "from --policy"
    checks = [Check("policy", "ok", f"{which}: {sources}; {len(policy.rules)} rules, sha256 {policy.hash[:12]}")]
    note = policy.bounds_note().removeprefix("bounds: ")
    if policy.bounds_path is not None:
        checks.append(Check("bounds", "ok", note))
    else:  # not an error (a policy may mean it), but nothing else would say that no bound applies
        checks.append(Check("bounds", "warning", note, f"to bound arguments, put a bounds.toml beside "
                            f"{settings.policy} (start from {SHIPPED_DIR / 'bounds.toml'})"))
    lint = _lint(settings.policy or SHIPPED_DIR / POLICY_FILE, tools)
    if lint is not None:
        checks.append(lint)
    return checks


def _lint(load_path: Path, tools: list[ToolSpec[Any, Any]] | None) -> Check | None:
    """The same lint as ``opsgate policy check``, with this server's tools, their verbs and what they bound."""
    from opsgate.policies.lint import lint

    try:
        from .catalog import tool_bounds, tool_verbs

        findings = lint(load_path, tool_verbs(tools), tool_bounds=tool_bounds(tools)) if tools is not None else lint(
            load_path)
    except Exception as exc:  # one check failing never stops the others
        return Check("policy lint", "warning", f"the lint could not run here: {type(exc).__name__}: {exc}",
                     "run `opsgate policy check` instead")
    errors = [f for f in findings if f.severity == "error"]
    if not findings:
        return Check("policy lint", "ok", "no findings")
    status: Status = "error" if errors else "warning"
    return Check("policy lint", status, f"{len(findings)} finding(s); the first: {findings[0]}",
                 "run `opsgate policy check` to see them all")


def _check_principal(settings: Settings, holder: list[Policy], cluster_user: list[str]) -> list[Check]:
    from .identity import resolve_identity

    told = cluster_user[0] if cluster_user else None
    try:
        identity = resolve_identity(settings.principal, (lambda: told) if told is not None else None)
    except ValueError as exc:
        return [Check("principal", "error", f"the OS user cannot be a principal: {exc}",
                      "pass --principal NAME (or set OPSGATE_PRINCIPAL)")]
    source = {"config": "from --principal / OPSGATE_PRINCIPAL", "cluster": "the cluster's SelfSubjectReview",
              "os-user": "the OS user"}[identity.source]
    detail = f"{identity.principal} ({source})" + (f"; {identity.note}" if identity.note else "")
    if holder:
        assigned = [f"{r.fields[1]} in {r.fields[2]}" for r in holder[0].rules
                    if r.ptype == "g" and r.fields[0] == identity.principal]
        direct = sum(1 for r in holder[0].rules if r.ptype == "p" and r.fields[0] == identity.principal)
        if assigned or direct:
            detail += "; the policy assigns it " + ", ".join(assigned or ["no role"])
            detail += f" and {direct} rule(s) by name" if direct else ""
        else:
            detail += ("; no role is assigned to it in the policy, so it has only role:everyone's grants "
                       f"(to grant one: g, {identity.principal}, role:operator, NAMESPACE)")
    return [Check("principal", "ok", detail)]


# --------------------------------------------------------------------------- audit log


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _check_audit_db(dsn: str) -> list[Check]:
    """The shared log in PostgreSQL: reachable, usable by this role as serve would use it, and its chain verifies
    (signatures are not checked here: that needs the public key, ``opsgate audit verify --pubkey``)."""
    from opsgate.audit import AuditWriteError
    from opsgate.audit.pgread import pg_verify
    from opsgate.audit.pgschema import check_writer
    from opsgate.audit.pgsink import connect, dsn_label

    where = dsn_label(dsn)
    try:
        with connect(dsn) as conn:
            problems = check_writer(conn)
    except AuditWriteError as exc:
        return [Check("audit log", "error", str(exc), "check --audit-db (host, database, role, password)")]
    if problems:
        return [Check("audit log", "error", f"{where}: " + "; ".join(problems),
                      "run `opsgate audit db-init` as the tables' owner, and serve as a role with INSERT and "
                      "SELECT only")]
    checks = [Check("audit log", "ok", f"{where}: tables present, this role may only insert and read")]
    try:
        report = pg_verify(dsn)
    except AuditWriteError as exc:
        return [*checks, Check("audit chain", "error", str(exc), "check the database")]
    if report.ok:
        return [*checks, Check("audit chain", "ok", f"{report.records} records, chain intact")]
    return [*checks, Check("audit chain", "error", f"record {report.first_bad_line} (seq {report.bad_seq}): "
                           f"{report.problem}: {report.detail}",
                           "run `opsgate audit verify --audit-db` with --pubkey; keep the tables as evidence")]


def _check_audit_log(path: Path) -> list[Check]:
    """Writable without creating it; if it exists, its chain verifies."""
    from opsgate.audit import verify_log

    path = path.expanduser()
    if path.exists():
        if not path.is_file():
            return [Check("audit log", "error", f"{path} exists but is not a file",
                          "pass --audit-log with a file path")]
        try:
            with path.open("ab"):
                pass
        except OSError as exc:
            return [Check("audit log", "error", f"{path} cannot be opened for appending: {exc.strerror or exc}",
                          "fix its permissions or pass --audit-log with a writable path; `opsgate serve` refuses "
                          "to start without a writable log")]
        checks = [Check("audit log", "ok", f"{path} is writable ({path.stat().st_size} bytes)")]
        try:
            report = verify_log(path)
        except OSError as exc:
            return [*checks, Check("audit chain", "error", f"cannot read {path}: {exc.strerror or exc}",
                                   "fix its permissions")]
        if report.ok:
            checks.append(Check("audit chain", "ok", f"{report.records} records, chain intact"))
        else:
            checks.append(Check(
                "audit chain", "error",
                f"{path} line {report.first_bad_line}: {report.problem}: {report.detail or ''}".rstrip(": "),
                "the log was changed or damaged after it was written: keep it for review, "
                "and point --audit-log at a new file to start a new chain",
            ))
        return checks
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return [Check("audit log", "error", f"{path} cannot be created: {existing} is not a folder",
                      "pass --audit-log with a path inside a folder you can write")]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Check("audit log", "error", f"{path} cannot be created: {existing} is not writable",
                      "pass --audit-log with a path inside a folder you can write")]
    made = "" if existing == path.parent else f" (with its folders under {existing})"
    return [Check("audit log", "ok", f"{path} will be created on first start{made}"),
            Check("audit chain", "ok", "no log yet: nothing to verify")]


# --------------------------------------------------------------------------- models


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _check_models(folder: Path | None) -> list[Check]:
    from opsgate.tools.inference import ModelStore
    from opsgate.tools.tensors import MODELS_DIR_DEFAULT

    path = folder if folder is not None else MODELS_DIR_DEFAULT
    which = "shipped" if folder is None else "from --models"
    if not path.is_dir():
        return [Check("models", "error", f"{path} is not a folder", "pass --models with a folder of *.onnx files")]
    # ModelStore logs each model it skips; collect those (this also keeps them off stderr).
    logger = logging.getLogger("opsgate.tools.inference")
    collect = _Collect()
    logger.addHandler(collect)
    try:
        listed = ModelStore(path).list_models().models
    finally:
        logger.removeHandler(collect)
    names = ", ".join(m.name for m in listed)
    if collect.messages:
        return [Check("models", "warning", f"{which} {path}: {len(listed)} loaded ({names or 'none'}); "
                      + "; ".join(collect.messages),
                      "replace or remove the files that do not load (onnx.checker.check_model tells why)")]
    if not listed:
        return [Check("models", "warning", f"{which} {path}: no *.onnx models",
                      "put NAME.onnx files there or pass --models; infer and list_models will have nothing to offer")]
    return [Check("models", "ok", f"{which} {path}: {len(listed)} model(s): {names}")]
