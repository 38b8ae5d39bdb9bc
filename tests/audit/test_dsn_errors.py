"""A mistyped or bad audit database DSN is refused without showing any of it (review leftover, H13 item 2).

libpq quotes what it cannot parse: ``missing "=" after "passwordS3cret"`` echoes a ``key=value`` DSN whose
``=`` was lost, ``invalid sslmode value: "..."`` a value, ``invalid URI query parameter`` a URI's piece.
Real psycopg calls (the DSN is parsed, or the connection refused, before any server is needed), through
the library, ``opsgate audit verify``, ``opsgate doctor`` and ``opsgate serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from opsgate.audit import AuditWriteError
from opsgate.audit.checkpoint import generate_keypair
from opsgate.audit.pgsink import connect, dsn_label

pytest.importorskip("psycopg")

SECRET = "S3cretPw77"
BAD_DSNS = [
    f"host=127.0.0.1 port=1 user=opsgate password{SECRET} dbname=audit",  # the "=" lost
    f"host=127.0.0.1 port=1 user=opsgate {SECRET}",
    f"host=127.0.0.1 port=1 user=opsgate password='{SECRET} dbname=audit",  # an unterminated quote
    f"host=127.0.0.1 port=1 user=opsgate password={SECRET} sslmode={SECRET}",  # the password pasted twice
    f"host=127.0.0.1 port=1 user=opsgate password={SECRET} {SECRET}=1",
    f"postgresql://opsgate:{SECRET}@127.0.0.1:1/audit?sslmode={SECRET}",
    f"postgresql://opsgate:{SECRET}@127.0.0.1:1/audit?{SECRET}=x",
    f"postgresql://opsgate:{SECRET}@[::1:1/audit",
    f"postgresql://opsgate:{SECRET}@127.0.0.1:1/audit",  # parses; the connection is refused
    f"host=127.0.0.1 port=1 user=opsgate password={SECRET} dbname=audit",
]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSGATE_")}
    return {**env, **extra}


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_a_refused_connect_names_the_database_never_the_dsn(dsn: str) -> None:
    with pytest.raises(AuditWriteError) as caught:
        connect(dsn, connect_timeout=2)
    message = str(caught.value)
    assert SECRET not in message and SECRET[:6] not in message, message
    assert message.startswith(f"cannot connect to audit database {dsn_label(dsn)}: ")
    assert SECRET not in dsn_label(dsn)


def test_the_reason_still_says_what_is_wrong() -> None:
    """The scrub takes the DSN's text out, not libpq's explanation of it."""
    cases = {
        BAD_DSNS[0]: 'missing "=" after',
        BAD_DSNS[2]: "unterminated quoted string",
        BAD_DSNS[3]: "invalid sslmode value",
        BAD_DSNS[-1]: "Connection refused",
    }
    for dsn, words in cases.items():
        with pytest.raises(AuditWriteError) as caught:
            connect(dsn, connect_timeout=2)
        assert words in str(caught.value), caught.value


def test_audit_verify_shows_no_dsn_on_stdout_or_stderr() -> None:
    for dsn in (BAD_DSNS[0], BAD_DSNS[5]):
        done = subprocess.run([sys.executable, "-m", "opsgate.server", "audit", "verify"], capture_output=True,
                              text=True, env=_clean_env(OPSGATE_AUDIT_DB=dsn), timeout=60, check=False)
        assert done.returncode != 0
        assert "cannot connect to audit database" in done.stderr + done.stdout, done.stderr
        assert SECRET not in done.stdout + done.stderr, done.stderr


def test_serve_refuses_to_start_without_showing_the_dsn(tmp_path: Path) -> None:
    private, _, _ = generate_keypair(tmp_path / "audit-key")
    policy = tmp_path / "policy.csv"
    policy.write_text("p, bench, *, *, *, allow\n")
    done = subprocess.run(
        [sys.executable, "-m", "opsgate.server", "serve", "--principal", "bench", "--policy", str(policy),
         "--audit-signing-key", str(private)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        env=_clean_env(OPSGATE_AUDIT_DB=BAD_DSNS[0]),
    )
    assert done.returncode != 0 and done.stdout == ""
    assert "audit database" in done.stderr, done.stderr
    assert SECRET not in done.stderr, done.stderr


def test_doctor_shows_no_dsn(tmp_path: Path) -> None:
    from opsgate.server.config import Settings
    from opsgate.server.doctor import run_doctor

    private, _, _ = generate_keypair(tmp_path / "audit-key")
    for dsn in (BAD_DSNS[0], BAD_DSNS[3]):
        checks = run_doctor(Settings(audit_db=SecretStr(dsn), audit_signing_key=private), environ={}, home=tmp_path)
        audit = [c for c in checks if c.name == "audit log"]
        assert audit and audit[0].status == "error", checks
        assert SECRET not in str(checks), checks
