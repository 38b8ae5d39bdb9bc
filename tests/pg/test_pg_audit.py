"""The audit chain in PostgreSQL (issue 21 item 4): replicas write one chain, acknowledged means committed,
the server's role cannot rewrite a record, and a rewrite by anyone else is found.

Real parts only: a PostgreSQL cluster from the machine's packages (conftest.py), writer processes, and
``opsgate audit verify --audit-db`` as a reviewer runs it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from opsgate.audit import AuditTrustError, AuditWriteError
from opsgate.audit.checkpoint import generate_keypair
from opsgate.audit.pgread import pg_records
from opsgate.audit.pgsink import PgAuditSink

from .conftest import PgDb

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, Path]:
    private, public, _ = generate_keypair(tmp_path / "audit.key")
    return private, public


def writer(db: PgDb, key: Path, count: int, threads: int, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_DSN": db.writer}
    return subprocess.Popen([sys.executable, "-m", "tests.pg.writer", "env:TEST_DSN", str(key), str(count),
                             str(threads), tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)


def audit_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "opsgate.server", "audit", *args], capture_output=True, text=True,
                          env=environment, timeout=60)


def acked(output: str) -> dict[int, str]:
    return {int(p[1]): p[2] for p in (line.split() for line in output.splitlines()) if p and p[0] == "acked"}


def test_two_writer_processes_with_500_concurrent_appends_each_write_one_chain(
    pgdb: PgDb, key: tuple[Path, Path]
) -> None:
    procs = [writer(pgdb, key[0], 500, 32, tag) for tag in ("a", "b")]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    seen = {**acked(outputs[0][0]), **acked(outputs[1][0])}
    assert sorted(seen) == list(range(1, 1001))  # every append acknowledged, one seq each, no gaps
    rows = list(pg_records(pgdb.writer))
    assert [r.record["seq"] for r in rows] == list(range(1, 1001))
    assert {r.record["principal"] for r in rows[:1000]} == {"writer-a", "writer-b"}
    # Interleaved: neither process wrote its 500 in one run (they shared the chain, not took turns).
    runs = sum(1 for x, y in itertools.pairwise(rows) if x.record["principal"] != y.record["principal"])
    assert runs > 2
    env = {"OPSGATE_AUDIT_DB": pgdb.writer}
    done = audit_cli("verify", "--pubkey", str(key[1]), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 1000 records, chain intact" in done.stdout
    assert "signed by ed25519" in done.stdout
    assert pgdb.cluster.passwords["opsgate_writer"] not in done.stdout + done.stderr


def test_kill_9_mid_burst_loses_no_acknowledged_record(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    proc = writer(pgdb, key[0], 5000, 16, "k")
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if sum(1 for x in lines if x.startswith("acked")) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)  # mid-burst: 16 threads with transactions in flight
    rest, _ = proc.communicate(timeout=30)
    seen = acked("".join(lines) + rest)
    assert 300 <= len(seen) < 5000
    stored = {r.record["seq"]: r.record["hash"] for r in pg_records(pgdb.writer)}
    assert all(stored.get(seq) == digest for seq, digest in seen.items())  # every acked record, as acked
    done = audit_cli("verify", "--audit-db", pgdb.writer, "--pubkey", str(key[1]))
    assert done.returncode == 0, done.stdout + done.stderr
    # A new writer (a replica restarting) vouches for the head and goes on with the same chain.
    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        assert sink.append({"stage": "start"})["seq"] == max(stored) + 1


def test_the_server_role_cannot_rewrite_a_record_and_a_superuser_rewrite_is_found(
    pgdb: PgDb, key: tuple[Path, Path]
) -> None:
    with PgAuditSink(pgdb.writer, signing_key=key[0], checkpoint_every=5) as sink:
        for i in range(12):
            sink.append({"stage": "decision", "call_id": f"c{i}", "principal": "alice"})
    with psycopg.connect(pgdb.writer, autocommit=True) as conn:
        for statement in ("UPDATE opsgate.audit_record SET line = line WHERE seq = 3",
                          "DELETE FROM opsgate.audit_record WHERE seq = 12",
                          "TRUNCATE opsgate.audit_record",
                          "DELETE FROM opsgate.audit_checkpoint",
                          "ALTER TABLE opsgate.audit_record DISABLE TRIGGER USER"):
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState)):
                conn.execute(statement)
    # The owner holds the privileges, and still meets the append-only trigger.
    with psycopg.connect(pgdb.owner, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                                               match="append-only"):
        conn.execute("DELETE FROM opsgate.audit_record WHERE seq = 12")
    # A writer logging in as the owner (who could rewrite) is refused before it writes anything.
    with pytest.raises(AuditWriteError, match="INSERT and SELECT only"):
        PgAuditSink(pgdb.owner, signing_key=key[0])
    verified = audit_cli("verify", "--audit-db", pgdb.writer, "--pubkey", str(key[1]))
    assert verified.returncode == 0, verified.stdout
    # A superuser goes around the trigger and edits one record in place.
    with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # triggers off for this session
        conn.execute("UPDATE opsgate.audit_record SET line = convert_to(replace(convert_from(line, 'UTF8'), "
                     "'alice', 'mallory'), 'UTF8') WHERE seq = 7")
    damaged = audit_cli("verify", "--audit-db", pgdb.writer, "--pubkey", str(key[1]))
    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert "DAMAGED" in damaged.stdout and "(seq 7): hash-mismatch" in damaged.stdout
    # A writer checks what it signs from its latest checkpoint on (as the file writer does): the head edited
    # the same way, no writer signs that table's head again.
    with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE opsgate.audit_record SET line = convert_to(replace(convert_from(line, 'UTF8'), "
                     "'alice', 'mallory'), 'UTF8') WHERE seq = 12")
    with pytest.raises(AuditTrustError, match="does not match its latest checkpoint"):
        PgAuditSink(pgdb.writer, signing_key=key[0])


def test_a_superuser_who_cuts_the_tail_is_caught_by_the_checkpoints(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    with PgAuditSink(pgdb.writer, signing_key=key[0], checkpoint_every=4) as sink:
        for i in range(10):
            sink.append({"stage": "decision", "call_id": f"c{i}"})
    with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM opsgate.audit_record WHERE seq > 8")
    damaged = audit_cli("verify", "--audit-db", pgdb.writer, "--pubkey", str(key[1]))
    assert damaged.returncode == 1 and "truncated" in damaged.stdout, damaged.stdout
    with pytest.raises(AuditTrustError, match="records were removed"):
        PgAuditSink(pgdb.writer, signing_key=key[0])


def test_an_unserialisable_body_fails_its_own_caller_only(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        with pytest.raises(AuditWriteError, match="cannot be serialised"):
            sink.append({"stage": "x", "bad": float("nan")})
        assert sink.append({"stage": "y"})["seq"] == 1
        pair = sink.append_many([{"stage": "decision"}, {"stage": "outcome"}])
        assert [r["seq"] for r in pair] == [2, 3] and pair[1]["prev"] == pair[0]["hash"]


def test_a_running_writer_refuses_to_extend_a_table_rewritten_under_it(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        for i in range(5):
            sink.append({"stage": "decision", "call_id": f"c{i}"})
        with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM opsgate.audit_record WHERE seq = 5")
        with pytest.raises(AuditWriteError, match="behind seq 5 written before"):
            sink.append({"stage": "decision"})
        with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE opsgate.audit_record SET hash = repeat('a', 64) WHERE seq = 4")
            conn.execute("INSERT INTO opsgate.audit_record SELECT 5, repeat('a', 64), repeat('b', 64), NULL, "
                         "'{}'::bytea")
        with pytest.raises(AuditWriteError, match="not the one this writer wrote or saw"):
            sink.append({"stage": "decision"})


def test_doctor_checks_the_audit_database(pgdb: PgDb, key: tuple[Path, Path], tmp_path: Path) -> None:
    from pydantic import SecretStr

    from opsgate.server.config import Settings
    from opsgate.server.doctor import run_doctor

    def audit_rows(dsn: str) -> dict[str, tuple[str, str]]:
        checks = run_doctor(Settings(audit_db=SecretStr(dsn), audit_signing_key=key[0]), environ={}, home=tmp_path)
        return {c.name: (c.status, c.detail) for c in checks if c.name.startswith("audit")}

    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        sink.append({"stage": "decision"})
    rows = audit_rows(pgdb.writer)
    assert rows["audit log"][0] == "ok" and rows["audit chain"] == ("ok", "1 records, chain intact"), rows
    owner = audit_rows(pgdb.owner)
    assert owner["audit log"][0] == "error" and "INSERT and SELECT only" in owner["audit log"][1]
    assert pgdb.cluster.passwords["opsgate_owner"] not in str(owner)


def test_a_lost_connection_refuses_the_call_and_the_next_append_reconnects(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        sink.append({"stage": "decision", "call_id": "before"})
        with psycopg.connect(pgdb.superuser, autocommit=True) as conn:  # the database drops the session
            ended = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'opsgate' AND datname = current_database()").fetchall()
        assert ended == [(True,)]
        with pytest.raises(AuditWriteError, match="audit database postgresql://opsgate_writer@"):
            sink.append({"stage": "decision", "call_id": "lost"})
        assert sink.append({"stage": "decision", "call_id": "after"})["seq"] == 2
    assert [r.record.get("call_id") for r in pg_records(pgdb.writer)] == ["before", "after"]


def test_tail_follow_emits_records_committed_after_it_started(pgdb: PgDb, key: tuple[Path, Path]) -> None:
    import threading

    from opsgate.audit.pgread import pg_follow
    from opsgate.audit.query import Located

    seen: list[Located] = []
    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        sink.append({"stage": "decision", "call_id": "old"})  # before: not followed
        follower = threading.Thread(target=pg_follow, args=(pgdb.writer, seen.append),
                                    kwargs={"poll": 0.05, "stop": lambda: len(seen) >= 3})
        follower.start()
        time.sleep(0.5)
        sink.append_many([{"stage": "decision", "call_id": "a"}, {"stage": "outcome", "call_id": "a"}])
        sink.append({"stage": "decision", "call_id": "b"})
        follower.join(timeout=10)
    assert not follower.is_alive()
    assert [(x.line, x.record["call_id"]) for x in seen] == [(2, "a"), (3, "a"), (4, "b")]


def test_readiness_says_when_the_database_stops_taking_records(
    pgdb: PgDb, key: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opsgate.audit import pgsink
    from opsgate.audit.sink import sink_problem

    with PgAuditSink(pgdb.writer, signing_key=key[0]) as sink:
        assert sink_problem(sink) is None
        with psycopg.connect(pgdb.owner, autocommit=True) as conn:
            conn.execute("REVOKE INSERT ON opsgate.audit_record FROM opsgate_writer")
        assert sink_problem(sink) is None  # the last answer holds for PROBE_EVERY_S: probes are not load
        monkeypatch.setattr(pgsink, "PROBE_EVERY_S", 0.0)
        problem = sink_problem(sink)
        assert problem is not None and "may not insert" in problem
        with psycopg.connect(pgdb.superuser, autocommit=True) as conn:
            conn.execute(f"REVOKE CONNECT ON DATABASE {pgdb.name} FROM PUBLIC")
        problem = sink_problem(sink)
        assert problem is not None and "cannot connect to audit database" in problem
        assert pgdb.cluster.passwords["opsgate_writer"] not in problem
