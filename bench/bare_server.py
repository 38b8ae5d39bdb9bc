"""The floor for opsgate's figures: a bare SDK ``MCPServer`` with one no-op tool over stdio, or, with
``http PORT``, over the SDK's streamable HTTP on 127.0.0.1:PORT (bench/http_bench.py)."""

import sys

from mcp.server.mcpserver import MCPServer

HTTP = sys.argv[1:2] == ["http"]
server = MCPServer("bare", log_level="WARNING" if HTTP else "INFO")  # over HTTP, no uvicorn line per request


@server.tool()
def noop() -> str:
    """Does nothing; measures the SDK's own round trip."""
    return "ok"


if __name__ == "__main__":
    if HTTP:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
