"""Per call against one sandbox: opsgate over stdio, the Go reference server, and the direct client (issue 18).

    python bench/run.py per-call     # this part alone, printed, nothing written
    python bench/run.py polls        # API requests per 100 polls of rollout_status

The sandbox runs in its own process (bench/sandbox_process.py), so the direct client does not
fight it for the GIL. For each operation the clients take turns call by call (the order rotates
every round), so all of them see the same machine weather. The direct ``kubernetes`` client makes
the very requests the tool makes, checked by counting them at the sandbox:

* list: ``list_workloads`` for Deployments = one chunked list (``limit=500``);
* get one: ``rollout_status`` = one read of the Deployment;
* scale: ``scale`` = a read of the scale subresource, then a JSON Patch on it guarded by a ``test``
  of the replica count read.

The Go reference server (containers/kubernetes-mcp-server: ``resources_list``, ``resources_get``,
``resources_scale``) takes its turn when its npm package is installed
(``npm ci --prefix tests/interop-go``, or ``OPSGATE_KUBERNETES_MCP_SERVER=/path/to/binary``). client-go
limits its own requests (5/s, burst 10): called back to back, the Go server answers in about 200 ms
per request, all of it waiting on that limiter. So it is compared two ways, all clients taking turns:

* **paced rounds** (one round per 0.22 s per request it makes): each client's call comes after a fraction
  of a second of quiet, as an agent's calls do. Then the disk's flush after idle is most of what a durable
  record costs (1-1.5 ms here, against 0.2 ms back to back), so two floors take their turn too: the bare
  SDK server's no-op, and the same no-op with one fsynced record-sized append (bench/bare_server.py
  ``--durable``), the least any server that records a call durably before answering it can take;
* **bursts** inside client-go's token bucket: every 2.2 s (the bucket full again), each client makes a few
  calls back to back (8 of the Go server's requests at most); the first of each burst is not counted.

Every scale here changes the Deployment a few milliseconds after the last, so opsgate reads it from the
API server as the direct client does; a scale of a Deployment quiet for a second, its watch live, is
computed from the cached copy and sends only the guarded patch: the ``polls`` part counts that too.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from bench.sandbox_process import SandboxProcess

Row = Callable[..., None]
NS = "bench"
NAME = "web"
PRINCIPAL = "bench"
JSON_PATCH = "application/json-patch+json"
OPS = ("list", "get", "scale")
POLLS = 100
GO_ROUNDS = 40
GO_SECONDS_PER_REQUEST = 0.22  # client-go: 5 requests/s
BURST_ROUNDS = 15
GO_BUCKET = 8  # requests of the Go server's per burst, of client-go's 10: room for a conflict it retries
GO_REFILL_SECONDS = 2.2  # 10 tokens at 5/s, and a margin
QUIET_SECONDS = 1.5  # over the second an object must be unchanged before opsgate writes from its cached copy
BARE = "bare SDK no-op"
DURABLE = "bare SDK no-op + one fsynced append"
HERE = Path(__file__).resolve().parent

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
_PACKAGE = f"kubernetes-mcp-server-{platform.system().lower()}-{_ARCH}"
GO_BINARY = Path(os.environ.get("OPSGATE_KUBERNETES_MCP_SERVER") or Path(__file__).resolve().parents[1]
                 / "tests" / "interop-go" / "node_modules" / _PACKAGE / "bin" / _PACKAGE)

Call = Callable[[int], Awaitable[None]]  # one call of an operation; the argument is the replica count to set
# p50 in ms, by way of running ("back to back": opsgate and direct; "paced": all three), client, operation:
# the issue-style table bench/run.py writes under the rows.
TABLE: dict[str, dict[str, dict[str, float]]] = {"back to back": {}, "paced": {}, "bursts": {}}
SHM = Path("/dev/shm")
TMPFS = "opsgate, audit log on tmpfs"


def _policy(tmp: Path) -> Path:
    """The shipped policy and bounds, with the bench principal as admin (no rate limit on its scales)."""
    folder = tmp / "percall-policy"
    folder.mkdir(exist_ok=True)
    shipped = files("opsgate.policies")
    for name in ("model.conf", "policy.csv", "bounds.toml"):
        (folder / name).write_text(shipped.joinpath(name).read_text())
    with (folder / "policy.csv").open("a") as fh:
        fh.write(f"g, {PRINCIPAL}, role:admin, *\n")
    return folder


@asynccontextmanager
async def _stdio(command: str, args: list[str], env: dict[str, str], errlog: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command, args=args, env=env)
    with errlog.open("w") as err:
        async with stdio_client(params, errlog=err) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            yield s


async def _tool(s: ClientSession, tool: str, arguments: dict[str, Any]) -> None:
    result = await s.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {str(result.content)[:300]}")


def _opsgate_calls(s: ClientSession) -> dict[str, Call]:
    where = {"name": NAME, "namespace": NS}
    return {
        "list": lambda _: _tool(s, "list_workloads", {"namespace": NS, "kind": "Deployment"}),
        "get": lambda _: _tool(s, "rollout_status", where),
        "scale": lambda n: _tool(s, "scale", {**where, "replicas": n}),
    }


GO_CONFLICTS = [0]  # the Go server's scale is a read and an update guarded by resourceVersion, without a retry


def _go_calls(s: ClientSession) -> dict[str, Call]:
    kind = {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": NS}

    async def scale(n: int) -> None:
        """A 409 (the controller wrote status between its read and its update) is retried, as a caller would."""
        for _ in range(5):
            try:
                return await _tool(s, "resources_scale", {**kind, "name": NAME, "scale": n})
            except RuntimeError as exc:
                if "has been modified" not in str(exc):
                    raise
                GO_CONFLICTS[0] += 1
        raise RuntimeError("resources_scale: 5 conflicts in a row")

    return {
        "list": lambda _: _tool(s, "resources_list", kind),
        "get": lambda _: _tool(s, "resources_get", {**kind, "name": NAME}),
        "scale": scale,
    }


def _direct_calls(apps: Any) -> dict[str, Call]:
    """What the tools send, as opsgate's Kube.call sends it: raw bodies parsed with json, an Audit-ID header."""

    def opts() -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": 30, "_headers": {"Audit-ID": uuid.uuid4().hex}}

    def body(response: Any) -> Any:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    async def list_(_: int) -> None:
        body(apps.list_namespaced_deployment(NS, limit=500, **opts()))

    async def get(_: int) -> None:
        body(apps.read_namespaced_deployment(NAME, NS, **opts()))

    async def scale(n: int) -> None:
        current = body(apps.read_namespaced_deployment_scale(NAME, NS, **opts()))
        ops = [{"op": "test", "path": "/spec/replicas", "value": current["spec"]["replicas"]},
               {"op": "add", "path": "/spec/replicas", "value": n}]
        body(apps.patch_namespaced_deployment_scale(NAME, NS, ops, _content_type=JSON_PATCH, **opts()))

    return {"list": list_, "get": get, "scale": scale}


def _noop_calls(s: ClientSession) -> dict[str, Call]:
    return dict.fromkeys(OPS, lambda _: _tool(s, "noop", {}))


class _Replicas:
    """Every scale call, whoever makes it, flips the Deployment between 2 and 3 replicas: none is a no-op."""

    def __init__(self) -> None:
        self.n = 2

    def next(self) -> int:
        self.n = 5 - self.n
        return self.n


async def _interleaved(clients: dict[str, dict[str, Call]], op: str, n: int, flip: _Replicas,
                       round_seconds: float = 0.0, warmup: int = 20) -> dict[str, list[float]]:
    """``n`` rounds (after ``warmup``), each client once per round, the first one rotating; a round lasts at
    least ``round_seconds``."""
    names = list(clients)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(-warmup, n):
        began = time.perf_counter()
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            replicas = flip.next()
            started = time.perf_counter()
            await clients[name][op](replicas)
            if i >= 0:
                times[name].append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(max(0.0, round_seconds - (time.perf_counter() - began)))
    return times


async def _bursts(clients: dict[str, dict[str, Call]], op: str, rounds: int, calls: int,
                  flip: _Replicas) -> dict[str, list[float]]:
    """Every ``GO_REFILL_SECONDS``, each client (the first rotating) makes ``calls`` calls back to back; the
    first of each burst is not counted (it comes after the quiet that refilled client-go's bucket)."""
    names = list(clients)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        began = time.perf_counter()
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            for j in range(calls):
                replicas = flip.next()
                started = time.perf_counter()
                await clients[name][op](replicas)
                if j:
                    times[name].append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(max(0.0, GO_REFILL_SECONDS - (time.perf_counter() - began)))
    return times


async def _requests_per_call(sandbox: SandboxProcess, calls: dict[str, Call], op: str, flip: _Replicas,
                             k: int = 10) -> tuple[float, Counter[str]]:
    sandbox.reset()
    for _ in range(k):
        await calls[op](flip.next())
    counts = sandbox.counts()
    return sum(counts.values()) / k, counts


def table() -> list[str]:
    """The per-call p50s as the issue's table: one line per client, list / get one / scale."""
    names = {"opsgate": "opsgate", "Go": "Go reference server", "direct": "direct Python `kubernetes` client",
             BARE: "bare SDK server, no-op (floor)", DURABLE: "bare SDK server, no-op + one fsynced append (floor)"}
    lines = []
    for mode, by_client in TABLE.items():
        if not by_client:
            continue
        lines += ["", f"| p50, ms ({mode}) | list Deployments | get one | scale |", "| --- | --- | --- | --- |"]
        for name, by_op in by_client.items():
            cells = " | ".join(f"{by_op[op]:.2f}" if op in by_op else "" for op in OPS)
            lines.append(f"| {names.get(name, name)} | {cells} |")
    return lines


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{n} x {what}" for what, n in counts.most_common())


async def run(tmp: Path, row: Row, opsgate_args: Callable[..., list[str]], n: int = 200,
              parts: tuple[str, ...] = ("per-call", "polls")) -> None:
    """The per-call comparison and the polling cost, reported through ``row``."""
    from kubernetes import client, config

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_") and k != "KUBECONFIG"}
    with SandboxProcess(tmp / "percall-kubeconfig", [NS]) as sandbox:
        api_client = config.new_client_from_config(str(sandbox.kubeconfig))
        apps = client.AppsV1Api(api_client)
        args = opsgate_args(tmp, "--principal", PRINCIPAL, "--kubeconfig", str(sandbox.kubeconfig),
                            "--policy", str(_policy(tmp)))
        async with AsyncExitStack() as stack:
            ours = await stack.enter_async_context(_stdio(sys.executable, args, env, tmp / "opsgate.stderr"))
            await _tool(ours, "deploy", {"name": NAME, "namespace": NS, "image": "nginx:1.27", "replicas": 2})
            clients = {"opsgate": _opsgate_calls(ours), "direct": _direct_calls(apps)}
            if "per-call" in parts and SHM.is_dir():
                # The same server with its audit log in memory: the disk's fsync-after-idle (0.2-0.9 ms here,
                # against 0.05 back to back) is most of what a lone call waits for; this row shows the rest.
                shm = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=SHM)))
                fast = await stack.enter_async_context(_stdio(sys.executable, [
                    *opsgate_args(shm, "--principal", PRINCIPAL, "--kubeconfig", str(sandbox.kubeconfig),
                                  "--policy", str(_policy(tmp)))], env, tmp / "opsgate-tmpfs.stderr"))
                clients[TMPFS] = _opsgate_calls(fast)
            floors: dict[str, dict[str, Call]] = {}
            if "per-call" in parts:
                bare = str(HERE / "bare_server.py")
                floors[BARE] = _noop_calls(await stack.enter_async_context(
                    _stdio(sys.executable, [bare], env, tmp / "bare.stderr")))
                # Its record goes to the disk opsgate's audit log is on.
                floors[DURABLE] = _noop_calls(await stack.enter_async_context(
                    _stdio(sys.executable, [bare, "--durable", str(tmp / "bare-durable.log")], env,
                           tmp / "bare-durable.stderr")))
            if GO_BINARY.exists():
                home = tmp / "go-home"
                home.mkdir(exist_ok=True)
                go = await stack.enter_async_context(_stdio(
                    str(GO_BINARY), ["--kubeconfig", str(sandbox.kubeconfig)],
                    {"HOME": str(home), "PATH": os.environ.get("PATH", "")}, tmp / "go.stderr"))
                clients["Go"] = _go_calls(go)
            else:
                row("per call: Go reference server", "not installed", "",
                    f"npm ci --prefix tests/interop-go ({GO_BINARY.name})")
            flip = _Replicas()
            if "per-call" in parts:
                await _per_call(sandbox, clients, floors, row, n, flip)
            if "polls" in parts:
                # Fresh opsgate servers: the per-call part has already started the first one's watch cache.
                pollers: dict[str, tuple[str, dict[str, Call]]] = {}
                for name, extra in (("opsgate", ()), ("opsgate --disable-read-cache", ("--disable-read-cache",))):
                    fresh = await stack.enter_async_context(_stdio(
                        sys.executable, [*args, *extra], env, tmp / f"polls-{len(pollers)}.stderr"))
                    pollers[name] = ("rollout_status", _opsgate_calls(fresh))
                if "Go" in clients:
                    pollers["Go"] = ("resources_get", clients["Go"])
                for name, (tool, calls) in pollers.items():
                    sandbox.reset()
                    for _ in range(POLLS):
                        await calls["get"](0)
                    counts = sandbox.counts()
                    if name == "opsgate":  # its watch request is made by a thread of its own: wait for it, briefly
                        deadline = time.monotonic() + 2.0
                        while not any(k.startswith("WATCH") for k in counts) and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                            counts = sandbox.counts()
                    row(f"API requests per {POLLS} polls of one Deployment, {name} ({tool})",
                        f"{sum(counts.values())}", "1 a poll without the cache" if name == "opsgate" else "",
                        "list + watch only (watch cache, issue 18)" if name == "opsgate" else "")
                    row(f"  {name}: what they were", _describe(counts) or "none")
                    # Then one scale of that Deployment, quiet for longer than the second a write from the
                    # cache asks for (opsgate's watch is live from the polls).
                    await asyncio.sleep(QUIET_SECONDS)
                    sandbox.reset()
                    await calls["scale"](flip.next())
                    counts = sandbox.counts()
                    row(f"  API requests for one scale of it after {QUIET_SECONDS:g} s of quiet, {name}",
                        f"{sum(counts.values())}", _describe(counts),
                        "1: the guarded patch, computed from the cached copy" if name == "opsgate" else "")
        api_client.close()


async def _per_call(sandbox: SandboxProcess, clients: dict[str, dict[str, Call]], floors: dict[str, dict[str, Call]],
                    row: Row, n: int, flip: _Replicas) -> None:
    labels = {"list": "list Deployments (list_workloads)", "get": "get one (rollout_status)", "scale": "scale"}
    for op in OPS:
        these = {name: calls for name, calls in clients.items() if op in calls}
        per_call = {name: await _requests_per_call(sandbox, calls, op, flip) for name, calls in these.items()}
        tight = {name: calls for name, calls in these.items() if name != "Go"}
        times = await _interleaved(tight, op, n, flip)
        p50 = {name: statistics.median(t) for name, t in times.items()}
        for name, value in p50.items():
            TABLE["back to back"].setdefault(name, {})[op] = value
        row(f"per call p50, {labels[op]}", f"{p50['opsgate']:.2f} ms", f"direct {p50['direct']:.2f} ms",
            "<= direct + 1 ms" if op != "scale" else "")
        row(f"  {op}: opsgate over direct", f"{p50['opsgate'] - p50['direct']:+.2f} ms",
            f"x{p50['opsgate'] / p50['direct']:.2f}", "")
        if TMPFS in p50:
            row(f"  {op}: {TMPFS}", f"{p50[TMPFS]:.2f} ms", f"direct {p50['direct']:.2f} ms",
                "<= direct + 1 ms" if op != "scale" else "")
        if "Go" in these:
            # client-go limits its own requests (5/s, burst 10, unless the program raises it): back to back, the
            # Go server's calls wait for it. Paced rounds measure its per-call cost, all three taking turns.
            pace = GO_SECONDS_PER_REQUEST * per_call["Go"][0]
            paced = await _interleaved({**these, **floors}, op, GO_ROUNDS, flip, round_seconds=pace, warmup=3)
            q = {name: statistics.median(t) for name, t in paced.items()}
            for name, value in q.items():
                TABLE["paced"].setdefault(name, {})[op] = value
            row(f"  {op}, paced rounds ({GO_ROUNDS}, one per {pace:.2f} s): opsgate beside Go",
                f"{q['opsgate']:.2f} ms", f"Go {q['Go']:.2f} ms; direct {q['direct']:.2f} ms", "<= Go")
            if TMPFS in q:
                row(f"  {op}, paced: {TMPFS}", f"{q[TMPFS]:.2f} ms", f"Go {q['Go']:.2f} ms",
                    f"<= Go: x{q[TMPFS] / q['Go']:.2f}")
            if DURABLE in q:
                row(f"  {op}, paced: floors, a tools/call of a no-op", f"{q[DURABLE]:.2f} ms with one fsynced append",
                    f"{q[BARE]:.2f} ms bare SDK",
                    f"the floor with a durable record beside Go: x{q[DURABLE] / q['Go']:.2f}")
            row(f"  {op}: ratios (paced)", f"opsgate/Go x{q['opsgate'] / q['Go']:.2f}",
                f"opsgate/direct x{q['opsgate'] / q['direct']:.2f}",
                f"Go's scale met {GO_CONFLICTS[0]} conflicts (retried, in its time)" if op == "scale" else "")
            calls = max(2, int(GO_BUCKET // per_call["Go"][0]) if per_call["Go"][0] else GO_BUCKET)
            burst = await _bursts({**these, **floors}, op, BURST_ROUNDS, calls, flip)
            b = {name: statistics.median(t) for name, t in burst.items()}
            for name, value in b.items():
                TABLE["bursts"].setdefault(name, {})[op] = value
            row(f"  {op}, bursts ({BURST_ROUNDS} of {calls} calls, one per {GO_REFILL_SECONDS:g} s): opsgate beside Go",
                f"{b['opsgate']:.2f} ms", f"Go {b['Go']:.2f} ms; direct {b['direct']:.2f} ms",
                f"<= Go: x{b['opsgate'] / b['Go']:.2f}")
            if DURABLE in b:
                row(f"  {op}, bursts: floors, a tools/call of a no-op", f"{b[DURABLE]:.2f} ms with one fsynced append",
                    f"{b[BARE]:.2f} ms bare SDK", "")
        row(f"  {op}: API requests per call", "; ".join(f"{name} {r:g}" for name, (r, _) in per_call.items()),
            "", "opsgate = direct (the direct client does what the tool does)")
