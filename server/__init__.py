"""opsgate's server: the MCP edge, the settings, the CLI and the gate every tool call passes."""

__version__ = "0.1.0"
