"""``opsgate config claude|vscode|cursor``: the exact MCP client snippet for this installation.

Why absolute paths everywhere: a desktop client starts the server with its own
working directory and, on macOS, a minimal ``PATH``, so ``opsgate`` alone or a
relative ``--policy`` would not be found (or, worse, would find another install).

The formats, as the clients document them:

- Claude Desktop (``claude_desktop_config.json``) and Cursor (``mcp.json``):
  ``{"mcpServers": {NAME: {"command": ..., "args": [...]}}}``; a stdio server needs no ``type``.
- VS Code (``.vscode/mcp.json`` or the user profile's ``mcp.json``):
  ``{"servers": {NAME: {"type": "stdio", "command": ..., "args": [...]}}}``.

Nothing here prints; the CLI prints what these functions return.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Final, Literal, get_args

from opsgate.policies.names import validate_principal

__all__ = ["CLIENTS", "SERVER_NAME", "Client", "client_config", "config_paths_hint", "render_client_config",
           "server_command"]

Client = Literal["claude", "vscode", "cursor"]
CLIENTS: Final[tuple[str, ...]] = get_args(Client)
SERVER_NAME: Final = "opsgate"


def _absolute(path: Path) -> Path:
    """Absolute, ``~`` expanded, symlinks kept: the path the user named, valid from any working directory."""
    return Path(os.path.abspath(path.expanduser()))


def server_command(executable: Path | None = None) -> list[str]:
    """``[command, *leading args]`` that starts this installation's opsgate.

    The console script beside ``sys.executable`` (the venv's ``bin/``) when it is
    there; else this interpreter with ``-m opsgate.server``. ``sys.executable`` is
    made absolute but not resolved: resolving a venv's ``python`` symlink would
    leave the venv and lose its packages.
    """
    if executable is not None:
        exe = _absolute(executable)
        if not exe.is_file():
            raise ValueError(f"executable {exe} does not exist")
        return [str(exe)]
    bindir = Path(sys.executable).parent
    for name in ("opsgate", "opsgate.exe"):
        script = bindir / name
        if script.is_file():
            return [str(script.resolve())]
    return [str(_absolute(Path(sys.executable))), "-m", "opsgate.server"]


def client_config(
    client: Client,
    *,
    principal: str | None,
    policy: Path | None,
    audit_log: Path | None,
    executable: Path | None = None,
) -> dict[str, Any]:
    """The client's whole config document with one ``opsgate`` server; ValueError on a bad input."""
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}: choose one of {', '.join(CLIENTS)}")
    command = server_command(executable)
    args = [*command[1:], "serve"]
    if principal is not None:
        try:
            validate_principal(principal)
        except ValueError as exc:
            raise ValueError(f"--principal {principal!r}: {exc}") from None
        args += ["--principal", principal]
    if policy is not None:
        policy_path = _absolute(policy)
        if not policy_path.exists():
            raise ValueError(f"--policy {policy_path} does not exist")
        args += ["--policy", str(policy_path)]
    if audit_log is not None:
        log_path = _absolute(audit_log)
        if log_path.is_dir():
            raise ValueError(f"--audit-log {log_path} is a folder; give a file path")
        args += ["--audit-log", str(log_path)]
    if client == "vscode":
        return {"servers": {SERVER_NAME: {"type": "stdio", "command": command[0], "args": args}}}
    return {"mcpServers": {SERVER_NAME: {"command": command[0], "args": args}}}


def render_client_config(
    client: Client,
    *,
    principal: str | None,
    policy: Path | None,
    audit_log: Path | None,
    executable: Path | None = None,
) -> str:
    """Pretty JSON, ready to paste (or to merge into an existing file's server map)."""
    config = client_config(client, principal=principal, policy=policy, audit_log=audit_log, executable=executable)
    return json.dumps(config, indent=2, ensure_ascii=False)


_HINTS: Final[dict[str, str]] = {
    "claude": (
        "Claude Desktop: Settings > Developer > Edit Config opens claude_desktop_config.json:\n"
        "  macOS    ~/Library/Application Support/Claude/claude_desktop_config.json\n"
        "  Windows  %APPDATA%\\Claude\\claude_desktop_config.json\n"
        'If the file already has "mcpServers", add the "opsgate" entry to it. Quit and restart Claude Desktop.'
    ),
    "vscode": (
        "VS Code: one workspace, or every workspace:\n"
        "  workspace  .vscode/mcp.json in the project folder\n"
        "  user       Command Palette > 'MCP: Open User Configuration' (the profile's mcp.json:\n"
        "             macOS ~/Library/Application Support/Code/User/mcp.json,\n"
        "             Linux ~/.config/Code/User/mcp.json, Windows %APPDATA%\\Code\\User\\mcp.json)\n"
        'If the file already has "servers", add the "opsgate" entry to it; start it from the file\'s Start action.'
    ),
    "cursor": (
        "Cursor: one project, or every project:\n"
        "  project  .cursor/mcp.json in the project folder\n"
        "  global   ~/.cursor/mcp.json (Windows %USERPROFILE%\\.cursor\\mcp.json)\n"
        'If the file already has "mcpServers", add the "opsgate" entry to it; then enable it in Cursor\'s MCP '
        "settings."
    ),
}


def config_paths_hint(client: Client) -> str:
    """Where the snippet goes for that client, per OS (for the CLI to print on stderr, beside the JSON)."""
    if client not in _HINTS:
        raise ValueError(f"unknown client {client!r}: choose one of {', '.join(CLIENTS)}")
    return _HINTS[client]
