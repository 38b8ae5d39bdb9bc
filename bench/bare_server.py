"""The floor for opsgate's figures: a bare SDK ``MCPServer`` with one no-op tool over stdio."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("bare")


@server.tool()
def noop() -> str:
    """Does nothing; measures the SDK's own round trip."""
    return "ok"


if __name__ == "__main__":
    server.run("stdio")
