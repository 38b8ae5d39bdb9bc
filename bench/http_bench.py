"""The team server's figures (issue 21): streamable HTTP beside stdio, replicas sharing PostgreSQL.

* Round trip of one tool (``whoami``: the gate and two audit records, no cluster) over stdio and over HTTP
  (loopback without OAuth, and with a JWT checked on every request), beside the bare SDK server's no-op over
  both transports; every server called in turn, call by call, so all see the same machine weather.
* Calls per second from 8 concurrent sessions (each one call at a time, back to back): one replica with the
  file log, one replica on PostgreSQL, two replicas on one PostgreSQL chain (4 sessions each), beside the
  bare SDK server over HTTP; rounds taken in turns. One client process drives them all, as a gate's many
  agents would not: where the bare server's rate is close to ours, the client is the bottleneck.
* Audit appends per second on PostgreSQL beside the file log (bench/audit_pg_bench.py, in process).

PostgreSQL comes from the machine's packages (tests/pg/pgcluster.py starts a throwaway cluster); without its
binaries the PostgreSQL rows say so and the rest is measured. The OAuth issuer is the tests' (keys made here,
served on loopback). Figures, not tests; the chain written is checked (verified, and one decision and one
outcome for each call counted).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from mcp import ClientSession

Row = Callable[..., None]
SessionFor = Callable[[list[str]], AbstractAsyncContextManager[ClientSession]]
HERE = Path(__file__).resolve().parent
#: The URL clients reach the replicas at (one Service): every token's audience, on every replica.
RESOURCE = "http://opsgate.bench/mcp"
SESSIONS = 8
ROUND_SECONDS = 2.0
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bare_http() -> Iterator[str]:
    """The bare SDK server (bench/bare_server.py) over streamable HTTP; yields its URL once it accepts."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), "http", str(port)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare SDK server did not start over HTTP") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


async def _in_turns(calls: dict[str, Callable[[], Awaitable[Any]]], n: int) -> dict[str, list[float]]:
    """ms of each call, the callers taking turns call by call (and turns at going first); 20 warm-up rounds."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(-20, n):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            result = await calls[name]()
            elapsed = (time.perf_counter() - started) * 1000
            assert not result.is_error, result.content
            if i >= 0:
                times[name].append(elapsed)
    return times


async def _rate(sessions: list[ClientSession], tool: str, seconds: float) -> tuple[float, int]:
    """Calls per second of ``sessions`` calling ``tool`` back to back for ``seconds``, and the calls made."""
    stop = time.perf_counter() + seconds
    made = 0

    async def loop(session: ClientSession) -> None:
        nonlocal made
        while time.perf_counter() < stop:
            result = await session.call_tool(tool, {})
            assert not result.is_error, result.content
            made += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(s) for s in sessions))
    return made / (time.perf_counter() - started), made


def _median(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f}/s"


async def run(tmp: Path, row: Row, session_for: SessionFor, opsgate_args: Callable[..., list[str]],
              n: int = 400) -> None:
    from opsgate.audit.checkpoint import generate_keypair
    from tests.http.oidc import Issuer
    from tests.http.served import http_server, mcp_session
    from tests.pg.pgcluster import WRITER, find_bin_dir, start_cluster

    key, public, _ = generate_keypair(tmp / "http-bench.key")
    with ExitStack() as stack:
        issuer = stack.enter_context(Issuer())
        token = issuer.mint(RESOURCE, sub="bench")
        oauth = ("--oauth-issuer", issuer.url, "--oauth-resource", RESOURCE, "--audit-signing-key", str(key))

        def replica(name: str, *flags: str, env: dict[str, str] | None = None) -> str:
            (tmp / name).mkdir()
            return stack.enter_context(http_server(tmp / name, *flags, env=env)).url

        plain_url = replica("http-plain")
        file_url = replica("http-file", *oauth)
        bare_url = stack.enter_context(bare_http())
        cluster = None
        if find_bin_dir() is None:
            skipped = "skipped: no PostgreSQL server binaries (apt-get install postgresql)"
        else:
            cluster = start_cluster()
            stack.callback(cluster.stop)
            dsn = cluster.dsn(WRITER, cluster.new_database())
            pg_urls = [replica(f"http-pg-{i}", *oauth, env={"OPSGATE_AUDIT_DB": dsn}) for i in (1, 2)]

        async with AsyncExitStack() as sessions:
            async def open_(url_or_args: str | list[str], bearer: str | None = None) -> ClientSession:
                if isinstance(url_or_args, list):
                    return await sessions.enter_async_context(session_for(url_or_args))
                return await sessions.enter_async_context(mcp_session(url_or_args, bearer))

            stdio = await open_(opsgate_args(tmp, "--principal", "bench"))
            bare_stdio = await open_([str(HERE / "bare_server.py")])
            plain = await open_(plain_url)
            oauth_session = await open_(file_url, token)
            bare = await open_(bare_url)
            times = await _in_turns({
                "stdio": lambda: stdio.call_tool("whoami", {}),
                "http": lambda: plain.call_tool("whoami", {}),
                "oauth": lambda: oauth_session.call_tool("whoami", {}),
                "bare-stdio": lambda: bare_stdio.call_tool("noop", {}),
                "bare-http": lambda: bare.call_tool("noop", {}),
            }, n)
            p50 = {name: statistics.median(samples) for name, samples in times.items()}
            row("whoami round trip p50, stdio (the per-call rows' transport)", f"{p50['stdio']:.2f} ms",
                f"{p50['bare-stdio']:.2f} ms bare SDK no-op", "")
            row("whoami round trip p50, streamable HTTP (loopback, no OAuth)", f"{p50['http']:.2f} ms",
                f"{p50['bare-http']:.2f} ms bare SDK no-op", f"stdio {p50['stdio']:.2f} ms")
            row("whoami round trip p50, HTTP with OAuth (JWT checked each request)", f"{p50['oauth']:.2f} ms",
                f"{p50['bare-http']:.2f} ms bare SDK no-op", f"stdio {p50['stdio']:.2f} ms")

            series: dict[str, tuple[str, list[ClientSession]]] = {
                "bare": ("noop", [bare, *[await open_(bare_url) for _ in range(SESSIONS - 1)]]),
                "file": ("whoami", [oauth_session, *[await open_(file_url, token) for _ in range(SESSIONS - 1)]]),
            }
            if cluster is not None:
                first = [await open_(pg_urls[0], token) for _ in range(SESSIONS)]
                second = [await open_(pg_urls[1], token) for _ in range(SESSIONS // 2)]
                series["pg-1"] = ("whoami", first)
                series["pg-2"] = ("whoami", first[:SESSIONS // 2] + second)
            rates: dict[str, list[float]] = {name: [] for name in series}
            pg_calls = 0
            for _ in range(ROUNDS):
                for name, (tool, group) in series.items():
                    rate, made = await _rate(group, tool, ROUND_SECONDS)
                    rates[name].append(rate)
                    pg_calls += made if name.startswith("pg") else 0
        floor = f"{_median(rates['bare'])} bare SDK no-op"
        row(f"calls/s, {SESSIONS} sessions, 1 replica, file log (whoami over HTTP, OAuth)", _median(rates["file"]),
            floor, "")
        if cluster is None:
            row(f"calls/s, {SESSIONS} sessions, replicas on PostgreSQL", skipped)
            row("audit appends/s on PostgreSQL", skipped)
            return
        row(f"calls/s, {SESSIONS} sessions, 1 replica, PostgreSQL audit", _median(rates["pg-1"]), floor,
            f"file log {_median(rates['file'])}")
        row(f"calls/s, {SESSIONS} sessions, 2 replicas on one PostgreSQL chain", _median(rates["pg-2"]), floor,
            f"file log {_median(rates['file'])}")
        _check_chain(dsn, public, pg_calls)
        _audit_appends(row, cluster)


def _check_chain(dsn: str, public: Path, calls: int) -> None:
    """The replicas' chain verifies and holds one decision and one outcome for each call counted (after the
    warm-up-free rounds, so the counts must match exactly)."""
    from opsgate.audit.checkpoint import KeyRing, load_public_key
    from opsgate.audit.pgread import pg_records, pg_verify

    report = pg_verify(dsn, keys=KeyRing(public_keys=(load_public_key(public),)))
    assert report.ok, report
    stages = [r.record.get("stage") for r in pg_records(dsn)]
    assert stages.count("decision") == stages.count("outcome") == calls, (stages.count("decision"), calls)


def _audit_appends(row: Row, cluster: Any) -> None:
    from bench.audit_pg_bench import measure

    rounds = {name: statistics.median(rates) for name, rates in measure(cluster).items()}
    floor = f"{rounds['floor']:,.0f}/s 1-row commits, 8 conns"
    row("audit appends/s on PostgreSQL, 1 replica, 8 threads", f"{rounds['pg-1']:,.0f}/s", floor,
        f"file log {rounds['file']:,.0f}/s")
    row("audit appends/s on PostgreSQL, 2 replicas x 4 threads, one chain", f"{rounds['pg-2']:,.0f}/s", floor,
        f"file log {rounds['file']:,.0f}/s")
