"""The audit tables in PostgreSQL: what the schema owner installs, and what the server checks before writing.

Two roles, kept apart on purpose: the **owner** (runs :func:`install_schema` once, owns the tables) and
the **writer** (what ``opsgate serve`` logs in as). The writer gets INSERT and SELECT on the audit
tables and nothing else: a server, or whoever takes it over, cannot change or remove a record. A
trigger refuses UPDATE, DELETE and TRUNCATE as well (defense in depth: it also stops the owner by
mistake; a superuser can still disable it, which is what the hash chain and the signed checkpoints
are for), and an insert trigger refuses a record that does not chain onto the one before it.
The writer may update the rate-limit buckets (``rate_bucket``), which are not evidence.

``check_writer`` is run by every sink at open: a server that could rewrite its own log (it logs in as
the owner, a superuser, a member of the owner role, or with UPDATE/DELETE/TRUNCATE granted), or whose
append-only trigger is missing or disabled, refuses to start (a setup that drops a protection is an
error, never a silent default). Nothing here is psycopg-specific beyond the connection it is given.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHAIN_LOCK", "SCHEMA", "check_writer", "install_schema"]

SCHEMA = "opsgate"

CHAIN_LOCK = 0x6F70736761746501
"""``pg_advisory_xact_lock`` key held by the transaction that extends the chain ("opsgate" + 1)."""

_DDL = """
CREATE SCHEMA IF NOT EXISTS opsgate;
CREATE TABLE IF NOT EXISTS opsgate.audit_record (
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    prev text NOT NULL CHECK (prev ~ '^[0-9a-f]{64}$'),
    hash text NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    call_id text,
    line bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS audit_record_call_id ON opsgate.audit_record (call_id text_pattern_ops)
    WHERE call_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS opsgate.audit_checkpoint (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size bigint NOT NULL CHECK (size >= 0),
    line bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS opsgate.rate_bucket (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    stamp double precision NOT NULL
);
CREATE OR REPLACE FUNCTION opsgate.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'opsgate: % on %.% refused: the audit tables are append-only', TG_OP, TG_TABLE_SCHEMA,
        TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE OR REPLACE FUNCTION opsgate.chain_link() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = 1 THEN
        IF NEW.prev <> repeat('0', 64) THEN
            RAISE EXCEPTION 'opsgate: audit record 1 must start the chain' USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM opsgate.audit_record WHERE seq = NEW.seq - 1 AND hash = NEW.prev) THEN
        RAISE EXCEPTION 'opsgate: audit record % does not chain onto record %', NEW.seq, NEW.seq - 1
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER audit_record_chain BEFORE INSERT ON opsgate.audit_record
    FOR EACH ROW EXECUTE FUNCTION opsgate.chain_link();
CREATE OR REPLACE TRIGGER audit_record_append_only BEFORE UPDATE OR DELETE ON opsgate.audit_record
    FOR EACH ROW EXECUTE FUNCTION opsgate.append_only();
CREATE OR REPLACE TRIGGER audit_record_no_truncate BEFORE TRUNCATE ON opsgate.audit_record
    FOR EACH STATEMENT EXECUTE FUNCTION opsgate.append_only();
CREATE OR REPLACE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON opsgate.audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION opsgate.append_only();
CREATE OR REPLACE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON opsgate.audit_checkpoint
    FOR EACH STATEMENT EXECUTE FUNCTION opsgate.append_only();
REVOKE ALL ON opsgate.audit_record, opsgate.audit_checkpoint, opsgate.rate_bucket FROM PUBLIC;
"""

_AUDIT_TABLES = ("opsgate.audit_record", "opsgate.audit_checkpoint")
_REQUIRED_TRIGGERS = {
    "opsgate.audit_record": ("audit_record_append_only", "audit_record_no_truncate", "audit_record_chain"),
    "opsgate.audit_checkpoint": ("audit_checkpoint_append_only", "audit_checkpoint_no_truncate"),
}


def _ident(name: str) -> str:
    """A role name as an SQL identifier, double-quoted (the only way it reaches DDL text)."""
    if not name or "\x00" in name:
        raise ValueError(f"not a role name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def install_schema(conn: Any, *, writer: str) -> None:
    """Create (or bring up to date) the audit schema as the connected role, the owner, and grant ``writer``
    INSERT and SELECT on the audit tables (and read-write on the rate buckets). Commits."""
    role = _ident(writer)
    with conn.transaction():
        conn.execute(_DDL)
        conn.execute(f"GRANT USAGE ON SCHEMA opsgate TO {role}")
        conn.execute(f"GRANT SELECT, INSERT ON opsgate.audit_record, opsgate.audit_checkpoint TO {role}")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON opsgate.rate_bucket TO {role}")


def check_writer(conn: Any) -> list[str]:
    """Why the connected role must not write the audit log (empty: it may). See the module docstring."""
    problems: list[str] = []
    row = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    user, superuser = row[0], bool(row[1])
    if superuser:
        problems.append(f"role {user} is a superuser")
    for table in _AUDIT_TABLES:
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        if found is None:
            problems.append(f"table {table} does not exist (run `opsgate audit db-init` as the schema owner)")
            continue
        owner, may_change = conn.execute(
            "SELECT pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE') "
            "OR has_table_privilege(current_user, c.oid, 'UPDATE') "
            "OR has_table_privilege(current_user, c.oid, 'DELETE') "
            "OR has_table_privilege(current_user, c.oid, 'TRUNCATE') "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
        if may_change and not superuser:
            problems.append(f"role {user} may update, delete or truncate {table} (or is, or acts as, its owner "
                            f"{owner}): the server must log in as a role with INSERT and SELECT only")
        enabled = {
            name: state
            for name, state in conn.execute(
                "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                (table,),
            ).fetchall()
        }
        for trigger in _REQUIRED_TRIGGERS[table]:
            if enabled.get(trigger) not in ("O", "A"):
                problems.append(f"trigger {trigger} on {table} is missing or disabled")
    return problems
