"""The floor for opsgate's figures: a bare SDK ``MCPServer`` with one no-op tool over stdio, or, with
``http PORT``, over the SDK's streamable HTTP on 127.0.0.1:PORT (bench/http_bench.py).

With ``--durable PATH`` the no-op first appends one record-sized line (1.4 KB) to PATH and fsyncs it: the
floor of any server that keeps a durable record of a call before answering it (bench/deployments_bench.py)."""

import os
import sys

from mcp.server.mcpserver import MCPServer

HTTP = sys.argv[1:2] == ["http"]
server = MCPServer("bare", log_level="WARNING" if HTTP else "INFO")  # over HTTP, no uvicorn line per request


DURABLE = sys.argv[sys.argv.index("--durable") + 1] if "--durable" in sys.argv else None
_fd = os.open(DURABLE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if DURABLE else -1


@server.tool()
def noop() -> str:
    """Does nothing (or, with --durable, one fsynced append); measures the SDK's own round trip."""
    if _fd >= 0:
        os.write(_fd, b"x" * 1400 + b"\n")
        os.fsync(_fd)
    return "ok"


if __name__ == "__main__":
    if HTTP:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
