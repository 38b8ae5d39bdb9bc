"""A throwaway PostgreSQL cluster from the machine's own binaries (Debian's ``postgresql`` package).

``initdb`` into a fresh folder, then ``postgres`` as a child process on a loopback port and a
socket in that folder; password (SCRAM) authentication over TCP, so the DSNs tests use carry a
secret as a real deployment's do. PostgreSQL refuses to run as root: as root, the cluster is made
and run as the ``postgres`` user the package creates. Roles, once per cluster: the
superuser ``postgres``, ``opsgate_owner`` (owns the schema), ``opsgate_writer`` (what the server
logs in as: INSERT and SELECT on the audit tables only).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from opsgate.audit.pgschema import install_schema

SUPERUSER = "postgres"
OWNER = "opsgate_owner"
WRITER = "opsgate_writer"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with ``initdb`` and ``postgres``, else ``initdb`` on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                            reverse=True):
        if os.access(Path(candidate) / "initdb", os.X_OK) and os.access(Path(candidate) / "postgres", os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """One running cluster; ``dsn(role, db)`` builds a libpq URL with that role's password."""

    bin_dir: Path
    root: Path
    port: int
    passwords: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def dsn(self, role: str = SUPERUSER, dbname: str = "postgres") -> str:
        return f"postgresql://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/{dbname}"

    def _as_owner(self) -> dict[str, Any]:
        """As root, run the server's programs as ``postgres`` directly (no runuser in between: signals reach
        postgres itself, and no process is left behind)."""
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam("postgres")
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": str(self.root)}

    def start(self) -> None:
        data = self.root / "data"
        pwfile = self.root / "pw"
        self.passwords = {SUPERUSER: uuid.uuid4().hex, OWNER: uuid.uuid4().hex, WRITER: uuid.uuid4().hex}
        pwfile.write_text(self.passwords[SUPERUSER] + "\n")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER,
             "--pwfile", str(pwfile), "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, **self._as_owner(),
        )
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "wb"),  # noqa: SIM115
            **self._as_owner(),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"postgres did not start: {log}") from None
                time.sleep(0.1)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            for role in (OWNER, WRITER):
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{self.passwords[role]}'")

    def new_database(self) -> str:
        """A fresh database owned by the owner role, its schema installed for the writer; returns its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {OWNER}")
        with psycopg.connect(self.dsn(OWNER, name)) as conn:
            install_schema(conn, writer=WRITER)
        return name

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # "immediate" shutdown: the data is thrown away next
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PgCluster:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="opsgate-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    os.chmod(root, 0o700)
    cluster = PgCluster(bin_dir, root, _free_port())
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
