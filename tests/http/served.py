"""A real ``opsgate serve --http`` process for the tests, and the SDK's streamable HTTP client against it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.harness import server_env


@dataclass
class HttpServer:
    url: str  # .../mcp
    base: str  # http://127.0.0.1:PORT
    audit_log: Path
    stderr_path: Path
    process: subprocess.Popen[bytes]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_bytes().split(b"\n") if line.strip()]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def http_server(tmp_path: Path, *flags: str, env: dict[str, str] | None = None,
                address: str = "127.0.0.1:0") -> Iterator[HttpServer]:
    """``opsgate serve --http ADDRESS`` with ``flags``; the URL read from its ``serving`` log line."""
    audit_log = tmp_path / "audit.jsonl"
    stderr_path = tmp_path / "server.stderr"
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "opsgate.server", "serve", "--http", address, "--audit-log", str(audit_log),
            *flags]
    with stderr_path.open("wb") as errlog:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog,
                                   env=server_env({"HOME": str(home), **(env or {})}))
    try:
        url = _wait_for_url(process, stderr_path)
        yield HttpServer(url, url.removesuffix("/mcp"), audit_log, stderr_path, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen[bytes], stderr_path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in stderr_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == "serving" and entry.get("url"):
                    return str(entry["url"])
        if process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}: {stderr_path.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"server did not serve within {timeout} s: {stderr_path.read_text()}")


@asynccontextmanager
async def mcp_session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    """The Python SDK's streamable HTTP client, initialized, with a bearer token when given."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    async with (
        create_mcp_http_client(headers=headers) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "raw-test", "version": "1"}}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
