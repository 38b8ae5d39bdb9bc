"""End to end (issue 21 item 4): ``opsgate serve`` with its audit in PostgreSQL, driven by a real MCP client,
then ``opsgate audit verify|query|tail|show|export --audit-db`` reading what it wrote. The schema is
installed by ``opsgate audit db-init`` as its owner; the server logs in as the writer role. The DSN,
password included, never shows in a record, a result, the server's stderr or a reviewer's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from opsgate.audit.checkpoint import generate_keypair
from opsgate.audit.pgread import pg_records
from tests.harness import ok, serve, write_policy

from .conftest import PgDb
from .pgcluster import OWNER, SUPERUSER, WRITER, PgCluster


def audit_cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    env["OPSGATE_AUDIT_DB"] = dsn  # as a reviewer keeps it: in the environment, not on the command line
    return subprocess.run([sys.executable, "-m", "opsgate.server", "audit", *args], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.mark.anyio
async def test_serve_audits_to_postgres_and_the_audit_commands_read_it(pg: PgCluster, tmp_path: Path) -> None:
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn(SUPERUSER), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}")
    init = audit_cli("db-init", "--writer", WRITER, "--audit-db", pg.dsn(OWNER, name), dsn="")
    assert init.returncode == 0, init.stderr
    assert pg.passwords[OWNER] not in init.stdout + init.stderr
    dsn = pg.dsn(WRITER, name)
    private, public, _ = generate_keypair(tmp_path / "audit.key")

    async with serve(tmp_path, "--principal", "alice", "--audit-signing-key", str(private),
                     env={"OPSGATE_AUDIT_DB": dsn}) as served:
        who = ok(await served.call("whoami"))
        assert who["audit_log"].startswith(f"postgresql://{WRITER}@127.0.0.1:") and pg.passwords[WRITER] not in str(who)
        await served.call("list_workloads", {"namespace": "team-a"})
        bad = await served.call("scale", {"namespace": "team-a", "name": "web", "replicas": -1})
        assert bad.is_error
        read = await served.session.read_resource("opsgate://audit/mine")  # read back from the table
        own = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert {"whoami", "list_workloads", "scale"} <= {r.get("tool") for r in own["records"]}
    assert not served.audit_log.exists()  # the file log is not written when --audit-db is set
    stderr = served.stderr_path.read_text()
    assert pg.passwords[WRITER] not in stderr

    verified = audit_cli("verify", "--pubkey", str(public), dsn=dsn)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "chain intact" in verified.stdout and "signed by ed25519" in verified.stdout

    query = audit_cli("query", "--json", dsn=dsn)
    assert query.returncode == 0, query.stderr
    records = [json.loads(line) for line in query.stdout.splitlines()]
    tools = {r.get("tool") for r in records}
    assert {"whoami", "list_workloads", "scale", "audit_log"} <= tools
    invalid = next(r for r in records if r.get("tool") == "scale")
    assert invalid["decision"]["effect"] == "invalid"

    table = audit_cli("query", "--tool", "list_*", dsn=dsn)
    assert "list_workloads" in table.stdout and "(1 call or event)" in table.stdout
    tail = audit_cli("tail", "-n", "2", dsn=dsn)
    assert tail.returncode == 0 and tail.stdout.splitlines()[-1].split()[3] == "stop", tail.stdout
    shown = audit_cli("show", invalid["call_id"][:10], dsn=dsn)
    assert shown.returncode == 0 and "invalid" in shown.stdout and "opsgate.audit_record line" in shown.stdout
    exported = audit_cli("export", "--format", "ocsf", dsn=dsn)
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == len(records)  # one event per record, start and stop included
    report = audit_cli("report", "--out", str(tmp_path / "report.html"), "--pubkey", str(public), dsn=dsn)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "chain intact" in page and "list_workloads" in page
    everything = query.stdout + table.stdout + tail.stdout + shown.stdout + exported.stdout + verified.stdout + page
    assert pg.passwords[WRITER] not in everything
    with psycopg.connect(dsn) as conn:
        lines = b"\n".join(bytes(row[0]) for row in conn.execute("SELECT line FROM opsgate.audit_record"))
    assert pg.passwords[WRITER].encode() not in lines


@pytest.mark.anyio
async def test_two_servers_on_one_database_share_a_principals_rate_limit(pgdb: PgDb, tmp_path: Path) -> None:
    """Two replicas (two ``opsgate serve`` processes, one database): alice's 2 changing calls a minute are
    spent across both; the third, on either, is refused by the rate limit, and both servers' records are
    one chain."""
    policy = write_policy(tmp_path / "policy", ["g, alice, role:operator, *", "g, role:operator, role:viewer, *",
                                                "p, role:viewer, *, *, read, allow",
                                                "p, role:operator, *, *, write, allow"])
    (policy / "bounds.toml").write_text('[subject."role:operator"]\nrate_limit_per_minute = 2\n')
    private, public, _ = generate_keypair(tmp_path / "audit.key")
    flags = ("--principal", "alice", "--policy", str(policy), "--audit-signing-key", str(private))
    env = {"OPSGATE_AUDIT_DB": pgdb.writer}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    scale = {"namespace": "team-a", "name": "web", "replicas": 1, "dry_run": True}
    async with serve(tmp_path / "a", *flags, env=env) as a, serve(tmp_path / "b", *flags, env=env) as b:
        first = await a.call("scale", scale)
        second = await b.call("scale", scale)
        third = await a.call("scale", scale)
    for ran in (first, second):  # allowed: they ran (the sandbox has no Deployment web: a 404 from the cluster)
        assert json.loads(ran.content[0].text)["error"]["code"] == "api_error", ran.content[0].text
    refused = json.loads(third.content[0].text)["error"]
    assert refused["code"] == "denied" and refused["errors"][0]["rule"] == "rate-limit", refused
    verified = audit_cli("verify", "--pubkey", str(public), dsn=pgdb.writer)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    starts = [r for r in pg_records(pgdb.writer) if r.record.get("stage") == "start"]
    assert len({r.record["session_id"] for r in starts}) == 2
