"""The ``opsgate`` command line: its subcommands, their flags, and what each runs.

Heavy imports (the MCP SDK, onnxruntime, the settings model) happen inside the subcommand
that needs them, so ``opsgate audit verify`` starts instantly."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opsgate.server import __version__

EXIT_OK, EXIT_DAMAGED, EXIT_UNUSABLE = 0, 1, 2


def _err(message: str) -> None:
    from opsgate.audit.redact import redact_text  # start-up errors quote paths, clusters' and files' text

    print(f"opsgate: {redact_text(message)}", file=sys.stderr)


def _emit(text: str) -> None:
    """A report command's answer (policy, doctor, config). Never used by `serve`, whose stdout is MCP's."""
    sys.stdout.write(text + "\n")


# The commands that take the settings; only they import the settings model (pydantic), so the others start fast.
SETTINGS_COMMANDS = ("serve", "doctor")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_settings: bool) -> None:
    p = sub.add_parser("serve", help="run the MCP server over stdio (what an IDE starts)")
    doctor = sub.add_parser("doctor", help="check this setup: versions, cluster, RBAC, policy, audit log, models")
    if with_settings:
        from .config import add_setting_flags

        for parser in (p, doctor):
            parser.add_argument("--config", type=Path, help="TOML file with the settings below")
            add_setting_flags(parser)


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_commands: bool) -> None:
    p = sub.add_parser("audit", help="verify, query, tail and show the audit log; make checkpoint keys")
    if with_commands:  # the audit reader (verify, query) is imported only for the command that runs it
        from opsgate.audit.cli import add_audit_commands

        add_audit_commands(p.add_subparsers(dest="audit_command", required=True))


def _add_policy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="lint a policy, or test it against a table of expected decisions")
    policy_sub = p.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="lint: exit 0 clean (warnings printed), 1 with errors")
    check.add_argument("path", type=Path, nargs="?", help="policy folder or .csv (default: the shipped one)")
    test = policy_sub.add_parser("test", help="decide every row of TABLE; print what differs")
    test.add_argument("table", type=Path)
    test.add_argument("--policy", type=Path, help="policy folder or .csv (default: the shipped one)")


def _policy(args: argparse.Namespace) -> int:
    from opsgate.policies import POLICY_FILE, SHIPPED_DIR, SourceError, default_policy, load_policy
    from opsgate.policies.lint import exit_code, format_findings, lint
    from opsgate.policies.table import format_table_result, run_table

    from .catalog import server_tools, tool_bounds, tool_verbs

    specs = server_tools()
    verbs = tool_verbs(specs)
    if args.policy_command == "check":
        path = args.path or SHIPPED_DIR / POLICY_FILE
        findings = lint(path, verbs, tool_bounds=tool_bounds(specs))
        _emit(format_findings(findings, path))
        return exit_code(findings)
    try:
        policy = load_policy(args.policy, known_tools=verbs) if args.policy else default_policy(known_tools=verbs)
        result = run_table(policy, args.table, verbs)
    except SourceError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    _emit(format_table_result(result))
    return EXIT_OK if result.ok else EXIT_DAMAGED


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sandbox", help="run the built-in sandbox Kubernetes API alone (for kubectl and other clients)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    p.add_argument("--write-kubeconfig", type=Path, help="write a kubeconfig for it here")
    p.add_argument("--namespaces", metavar="NS,NS",
                   help="namespaces to create at start, besides default and kube-* (default: team-a)")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("demo", help="watch an assistant's session against opsgate on the sandbox cluster")
    c = sub.add_parser("config", help="print the MCP client configuration snippet for this installation")
    c.add_argument("client", choices=["claude", "vscode", "cursor"])
    c.add_argument("--principal")
    c.add_argument("--policy", type=Path)
    c.add_argument("--audit-log", type=Path)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the command about to run, the settings flags are built only if it takes them."""
    parser = argparse.ArgumentParser(
        prog="opsgate",
        description="An MCP server that lets AI assistants operate Kubernetes and ONNX models "
        "through one policy-checked, audited gate.",
    )
    parser.add_argument("--version", action="version", version=f"opsgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub, with_settings=command is None or command in SETTINGS_COMMANDS)
    _add_audit(sub, with_commands=command is None or command == "audit")
    _add_policy(sub)
    _add_sandbox(sub)
    _add_demo(sub)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from .config import SettingsError, flag_settings, load_settings
    from .doctor import doctor_exit_code, format_checks, run_doctor, settings_error_check

    try:
        checks = run_doctor(load_settings(flag_settings(args), config_file=args.config))
    except SettingsError as exc:
        checks = [settings_error_check(exc)]
    _emit(format_checks(checks))
    return doctor_exit_code(checks)


def _client_config(args: argparse.Namespace) -> int:
    from .clientconfig import config_paths_hint, render_client_config

    try:
        text = render_client_config(args.client, principal=args.principal, policy=args.policy,
                                    audit_log=args.audit_log)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    _emit(text)
    print(config_paths_hint(args.client), file=sys.stderr)
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from .config import SettingsError, flag_settings, load_settings
    from .main import StartupError, serve

    try:
        settings = load_settings(flag_settings(args), config_file=args.config)
    except SettingsError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    try:
        serve(settings)
    except StartupError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((word for word in argv if not word.startswith("-")), None)  # top-level options take no value
    args = build_parser(command).parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "audit":
        from opsgate.audit.cli import run_audit_command

        return run_audit_command(args)
    if args.command == "policy":
        return _policy(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "config":
        return _client_config(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo()
    if args.command == "sandbox":
        from opsgate.sandbox import run_sandbox

        from .config import SettingsError, load_settings
        from .logs import configure_logging

        try:  # the same setting, and checks, as the built-in sandbox's
            env = {k: v for k, v in os.environ.items() if k == "OPSGATE_SANDBOX_NAMESPACES"}
            settings = load_settings({"sandbox_namespaces": args.namespaces}, environ=env)
        except SettingsError as exc:
            _err(str(exc).replace("setting sandbox_namespaces from --sandbox-namespaces", "--namespaces"))
            return EXIT_UNUSABLE
        configure_logging("info")
        run_sandbox(args.port, args.write_kubeconfig, settings.sandbox_namespaces)
        return EXIT_OK
    return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
