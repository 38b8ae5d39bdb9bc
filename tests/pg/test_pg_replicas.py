"""Replicas of the team server on one audit chain (issue 21, Tests bullet 4, with server processes): two real
``opsgate serve --http`` processes behind one OAuth resource (as two pods behind one Service), sharing one
PostgreSQL audit database and one cluster, each taking 500 concurrent tool calls from the Python SDK's
streamable HTTP client; ``opsgate audit verify --audit-db`` then passes and every call is in the chain, its
decision and its outcome, under the principal its token named. Then one replica is killed (SIGKILL) in the
middle of a burst: every call whose result a client received has its outcome in the table, the chain still
verifies, and the other replica goes on serving.

Each call is told apart in the table: ``explain_access`` carries a tag of its own in its arguments (policy
only, no cluster), ``list_workloads`` (the cluster, as the token's person) and ``whoami`` are counted per
principal; every session has a principal of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit.checkpoint import generate_keypair
from opsgate.audit.pgread import pg_records
from opsgate.sandbox import SandboxCluster
from tests.harness import shipped_policy
from tests.http.oidc import Issuer
from tests.http.served import HttpServer, http_server, mcp_session

from .conftest import PgDb
from .test_pg_serve import audit_cli

pytestmark = pytest.mark.anyio
NS = "team-a"
#: The URL clients reach the replicas at (one Service): the audience every token names, on both replicas.
RESOURCE = "http://opsgate.test/mcp"
CALLS = 500  # per replica
SESSIONS = 5  # per replica, each with CALLS / SESSIONS calls in flight at once
CALL_TIMEOUT_S = 60.0
#: Calls in flight at once in each of b's sessions in the kill test: all 100 at once, the clients read their
#: answers long after the server wrote them (b would have finished before any was read); 20 at a time, answers
#: are read while later calls are still to be sent, so the kill falls in the middle of the burst.
B_IN_FLIGHT = 20

Call = tuple[str, str, str | None]  # principal, tool, explain_access's tag


@dataclass
class Burst:
    """What one replica's clients sent and what came back."""

    sent: list[Call] = field(default_factory=list)
    received: list[Call] = field(default_factory=list)
    failed: list[BaseException] = field(default_factory=list)


def plan(replica: str, session: int, count: int) -> list[tuple[str, dict[str, Any], Call]]:
    """``count`` calls of one session: explain_access with a tag of its own, list_workloads and whoami mixed."""
    principal = f"user-{replica}{session}"
    calls: list[tuple[str, dict[str, Any], Call]] = []
    for i in range(count):
        if i % 5 == 0:
            calls.append(("list_workloads", {"namespace": NS}, (principal, "list_workloads", None)))
        elif i % 5 == 1:
            calls.append(("whoami", {}, (principal, "whoami", None)))
        else:
            tag = f"{replica}{session}-{i}"
            calls.append(("explain_access", {"tool": "scale", "namespace": tag}, (principal, "explain_access", tag)))
    return calls


async def burst(server: HttpServer, issuer: Issuer, replica: str, burst: Burst, in_flight: int | None = None) -> None:
    """SESSIONS sessions on ``server``, each its own principal, all their calls at once (or, with
    ``in_flight``, that many at a time in each session, a new one as each is answered)."""

    async def one_session(n: int) -> None:
        principal = f"user-{replica}{n}"
        calls = plan(replica, n, CALLS // SESSIONS)
        slots = asyncio.Semaphore(in_flight or len(calls))
        async with mcp_session(server.url, issuer.mint(RESOURCE, sub=principal)) as session:

            async def call(tool: str, arguments: dict[str, Any], what: Call) -> None:
                async with slots:
                    burst.sent.append(what)
                    result = await session.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT_S)
                assert not result.is_error, result.content
                if tool == "whoami":
                    assert result.structured_content is not None
                    assert result.structured_content["principal"] == principal
                burst.received.append(what)

            outcomes = await asyncio.gather(*(call(*c) for c in calls), return_exceptions=True)
        burst.failed += [o for o in outcomes if isinstance(o, BaseException)]

    await asyncio.gather(*(one_session(n) for n in range(SESSIONS)))


def chain_calls(dsn: str) -> tuple[Counter[Call], Counter[Call], list[dict[str, Any]]]:
    """The calls in the chain: those with a decision (allowed) and those with both decision and outcome, as
    (principal, tool, tag); and every record."""
    records = [r.record for r in pg_records(dsn)]
    decisions = {r["call_id"]: r for r in records if r.get("stage") == "decision"}
    outcomes = {r["call_id"]: r for r in records if r.get("stage") == "outcome"}
    decided: Counter[Call] = Counter()
    complete: Counter[Call] = Counter()
    for call_id, d in decisions.items():
        assert d["principal_source"] == "oauth" and d["groups"] == ["group:platform"], d
        assert d["decision"]["effect"] == "allow", d
        tag = d["arguments"].get("namespace") if d["tool"] == "explain_access" else None
        what = (d["principal"], d["tool"], tag)
        decided[what] += 1
        outcome = outcomes.get(call_id)
        if outcome is not None:
            assert outcome["principal"] == d["principal"] and outcome["tool"] == d["tool"], (d, outcome)
            assert outcome["outcome"]["status"] == "ok", outcome
            complete[what] += 1
    return decided, complete, records


@dataclass
class Team:
    a: HttpServer
    b: HttpServer
    issuer: Issuer
    public_key: Path


@pytest.fixture
def team(pgdb: PgDb, tmp_path: Path) -> Iterator[Team]:
    """Two replicas on one database and one sandbox cluster, behind one OAuth resource."""
    private, public, _ = generate_keypair(tmp_path / "audit.key")
    with ExitStack() as stack:
        cluster = stack.enter_context(SandboxCluster(rollout_delay=0.05, namespaces=[NS]))
        issuer = stack.enter_context(Issuer())
        kubeconfig = tmp_path / "kubeconfig"
        cluster.write_kubeconfig(kubeconfig)
        policy = shipped_policy(tmp_path / "policy", "g, group:platform, role:operator, team-*")
        flags = ("--oauth-issuer", issuer.url, "--oauth-resource", RESOURCE, "--policy", str(policy),
                 "--kubeconfig", str(kubeconfig), "--audit-signing-key", str(private))
        replicas = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            replicas.append(stack.enter_context(http_server(tmp_path / name, *flags,
                                                            env={"OPSGATE_AUDIT_DB": pgdb.writer})))
        yield Team(replicas[0], replicas[1], issuer, public)


async def test_two_replicas_each_taking_500_concurrent_calls_write_one_chain(team: Team, pgdb: PgDb) -> None:
    a, b, issuer, public = team.a, team.b, team.issuer, team.public_key
    bursts = Burst(), Burst()
    await asyncio.gather(burst(a, issuer, "a", bursts[0]), burst(b, issuer, "b", bursts[1]))
    for done in bursts:
        assert not done.failed, done.failed[:3]
        assert len(done.received) == CALLS
    verified = audit_cli("verify", "--pubkey", str(public), dsn=pgdb.writer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain intact" in verified.stdout and "signed by ed25519" in verified.stdout
    decided, complete, records = chain_calls(pgdb.writer)
    answered = Counter(bursts[0].received + bursts[1].received)
    assert decided == answered and complete == answered  # each call once, decision and outcome, its principal
    starts = [r for r in records if r.get("stage") == "start"]
    assert len(starts) == 2  # both replicas on the one chain
    # Interleaved: the replicas shared the chain, not took turns.
    order = [r["principal"][-2] for r in records if r.get("stage") == "decision"]
    assert sum(1 for x, y in itertools.pairwise(order) if x != y) > 10


async def test_a_replica_killed_mid_burst_loses_no_acknowledged_call_and_the_other_serves_on(
        team: Team, pgdb: PgDb) -> None:
    a, b, issuer, public = team.a, team.b, team.issuer, team.public_key
    bursts = Burst(), Burst()

    async def kill_b_mid_burst() -> None:
        """Once b's clients have received a fifth of their answers: b then has calls in flight (in the gate,
        in a transaction, answered but not yet read) and calls not yet sent."""
        while len(bursts[1].received) < CALLS // 5:
            await asyncio.sleep(0.002)
        os.kill(b.process.pid, signal.SIGKILL)

    async def b_burst() -> None:
        try:
            await burst(b, issuer, "b", bursts[1], in_flight=B_IN_FLIGHT)
        except Exception as exc:  # its sessions end with the server gone: expected
            bursts[1].failed.append(exc)

    await asyncio.gather(burst(a, issuer, "a", bursts[0]), b_burst(), kill_b_mid_burst())
    assert b.process.wait(10) == -signal.SIGKILL
    assert not [e for e in bursts[1].failed if isinstance(e, AssertionError)], bursts[1].failed  # lost, not wrong
    assert not bursts[0].failed, bursts[0].failed[:3]
    assert len(bursts[0].received) == CALLS  # the surviving replica answered all of its burst
    assert CALLS // 5 <= len(bursts[1].received) < CALLS, len(bursts[1].received)
    verified = audit_cli("verify", "--pubkey", str(public), dsn=pgdb.writer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    decided, complete, _ = chain_calls(pgdb.writer)
    acknowledged = Counter(bursts[0].received + bursts[1].received)
    b_decided = sum(n for (principal, _, _), n in decided.items() if principal.startswith("user-b"))
    assert b_decided < CALLS, b_decided  # b died before it had decided all its calls: mid-burst
    assert not acknowledged - complete, acknowledged - complete  # every result received has its outcome
    assert all(what in Counter(bursts[0].sent + bursts[1].sent) for what in decided)
    # The surviving replica goes on serving, onto the same chain.
    async with mcp_session(a.url, issuer.mint(RESOURCE, sub="after")) as session:
        result = await session.call_tool("whoami", {})
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["principal"] == "after"
    _, complete_after, _ = chain_calls(pgdb.writer)
    assert complete_after[("after", "whoami", None)] == 1
    verified = audit_cli("verify", "--pubkey", str(public), dsn=pgdb.writer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
