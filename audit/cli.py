"""``opsgate audit ...``: the reviewer's commands (verify, keygen, query, tail, show).

``add_audit_commands`` registers them on the ``audit`` subcommand's subparsers
and ``run_audit_command`` runs the one parsed. These functions print to
stdout: that is the command's output. Exit codes: 0 fine, 1 damaged (verify)
or not found (show), 2 unusable (unreadable log, bad key, bad filter).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from .checkpoint import KeyRing, generate_keypair, load_hmac_key, load_public_key
from .query import (
    Call,
    Filters,
    Located,
    follow,
    iter_table,
    join_calls,
    last_records,
    matches,
    parse_when,
    read_records,
    record_line,
    render_call,
)
from .segments import hmac_key_path
from .verify import VerifyReport, verify_audit

__all__ = ["EXIT_DAMAGED", "EXIT_OK", "EXIT_UNUSABLE", "add_audit_commands", "main", "run_audit_command"]

EXIT_OK, EXIT_DAMAGED, EXIT_UNUSABLE = 0, 1, 2

def add_audit_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register verify, keygen, query, tail and show on the ``audit`` command's subparsers."""
    v = subparsers.add_parser(
        "verify",
        help="check the hash chain, segments and signed checkpoints; exit 0 intact, 1 damaged, 2 unreadable",
        description="Check every record, the chain across all segments, and each checkpoint: its signature "
        "and that the log still holds the (seq, hash) it signed. Without --pubkey/--hmac-key, the HMAC key "
        "beside the log is used if there is one (it proves integrity only to holders of that key).",
    )
    v.add_argument("path", type=Path, help="the live log file (audit.jsonl); its segments are found beside it")
    v.add_argument("--pubkey", type=Path, action="append", default=[], help="Ed25519 public key (PEM); repeatable")
    v.add_argument("--hmac-key", type=Path, action="append", default=[], help="HMAC key file; repeatable")
    v.add_argument("--checkpoints", type=Path, help="checkpoints file to check against (default: PATH.checkpoints), "
                   "e.g. a copy kept elsewhere")
    v.set_defaults(audit_action="verify")

    k = subparsers.add_parser("keygen", help="write an Ed25519 key pair for signing checkpoints",
                              description="Writes OUT (private key, PEM, mode 0600) and OUT.pub (public key). "
                              "Give the server OUT; give reviewers OUT.pub.")
    k.add_argument("out", type=Path, help="private key file to create (the public key goes to OUT.pub)")
    k.set_defaults(audit_action="keygen")

    q = subparsers.add_parser("query", help="list calls (decision + outcome) and server events matching filters",
                              description="One row per call: its decision joined with its outcome. Times are UTC; "
                              "--since/--until take RFC 3339 or a span back from now (90s, 15m, 1h, 2d, 1w).")
    q.add_argument("path", type=Path)
    q.add_argument("--principal", help="who the call was for (wildcards: ali*)")
    q.add_argument("--tool", help="tool name (wildcards allowed)")
    q.add_argument("--namespace", help="target namespace (wildcards allowed)")
    q.add_argument("--decision", choices=["allow", "deny", "invalid"])
    q.add_argument("--outcome", choices=["ok", "error"], help="how a call that ran ended")
    q.add_argument("--since", help="from this time (RFC 3339) or this long ago (1h)")
    q.add_argument("--until", help="up to this time (RFC 3339) or this long ago")
    q.add_argument("--call-id", help="a call id or its first characters")
    q.add_argument("--json", action="store_true", help="print the matching records as JSON Lines, as in the log")
    q.add_argument("--limit", type=int, help="only the last N matching calls")
    q.set_defaults(audit_action="query")

    t = subparsers.add_parser("tail", help="print the last records, and with --follow the new ones as they come")
    t.add_argument("path", type=Path)
    t.add_argument("-n", "--lines", type=int, default=10, help="how many records (default 10)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C to stop)")
    t.add_argument("--json", action="store_true", help="print records as JSON Lines, as in the log")
    t.set_defaults(audit_action="tail")

    s = subparsers.add_parser("show", help="one call: its decision and outcome records, readably")
    s.add_argument("path", type=Path)
    s.add_argument("call_id", help="a call id or its first characters (at least 6)")
    s.add_argument("--json", action="store_true", help="print the call's records as JSON Lines")
    s.set_defaults(audit_action="show")


def run_audit_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the audit subcommand in ``args`` (as parsed by the parser ``add_audit_commands`` built)."""
    stream = out if out is not None else sys.stdout
    action = getattr(args, "audit_action", None) or getattr(args, "audit_command", None)
    commands: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "verify": _verify,
        "keygen": _keygen,
        "query": _query,
        "tail": _tail,
        "show": _show,
    }
    command = commands.get(str(action))
    if command is None:
        _err(f"unknown audit command {action!r}")
        return EXIT_UNUSABLE
    try:
        return command(args, stream)
    except BrokenPipeError:  # `opsgate audit query ... | head`: the reader has seen enough
        if stream is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit does not complain
            os.close(devnull)
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m opsgate.audit.cli verify PATH``: the same commands without the server's CLI."""
    parser = argparse.ArgumentParser(prog="opsgate audit")
    add_audit_commands(parser.add_subparsers(dest="audit_command", required=True))
    return run_audit_command(parser.parse_args(argv))


def _err(message: str) -> None:
    print(f"opsgate: {message}", file=sys.stderr)


def _say(stream: TextIO, text: str = "") -> None:
    print(text, file=stream)


# --- verify ----------------------------------------------------------------------------------------


def _keyring(args: argparse.Namespace) -> tuple[KeyRing | None, str | None]:
    """The keys to check signatures with, and a note on where they came from. Raises OSError/ValueError."""
    publics = tuple(load_public_key(p) for p in args.pubkey)
    hmacs = tuple(load_hmac_key(p) for p in args.hmac_key)
    if publics or hmacs:
        return KeyRing(publics, hmacs, strict=True), None
    beside = hmac_key_path(args.path)
    if not beside.exists():
        return None, None
    try:
        ring = KeyRing((), (load_hmac_key(beside),), strict=False)
    except (OSError, ValueError) as exc:
        return None, f"the HMAC key beside the log ({beside.name}) cannot be read ({exc}); pass --hmac-key"
    return ring, f"the HMAC key beside the log ({beside.name}); it proves integrity only to holders of that key"


def _name(path: Path | None) -> str:
    return str(path) if path is not None else "-"


def _files_line(report: VerifyReport) -> str:
    files = report.files
    if len(files) <= 1:
        return _name(files[0]) if files else "-"
    return f"{len(files)} files, {files[0].name} .. {files[-1].name}"


def _checkpoint_lines(report: VerifyReport, note: str | None) -> Iterator[str]:
    summary = report.checkpoints
    if summary is None:
        return
    if summary.total == 0 and summary.unreadable == 0:
        yield f"  checkpoints  none ({summary.path} is missing or empty): truncation of the tail cannot be detected"
        return
    parts = [f"{summary.total} in {summary.path.name}"]
    if summary.keys:
        parts.append(f"{summary.trusted} signed by {', '.join(summary.keys)}")
        if summary.unchecked:
            parts.append(f"{summary.unchecked} signed by other keys, not checked")
    else:
        parts.append("signatures NOT checked (give --pubkey or --hmac-key)")
    if summary.unreadable:
        parts.append(f"{summary.unreadable} unreadable line(s) ignored")
    if summary.latest:
        parts.append(f"latest at seq {summary.latest} of {report.head_seq}")
    yield f"  checkpoints  {'; '.join(parts)}"
    if note:
        yield f"  key          {note}"


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    try:
        keys, note = _keyring(args)
    except (OSError, ValueError) as exc:
        _err(f"cannot load key: {exc}")
        return EXIT_UNUSABLE
    try:
        report = verify_audit(args.path, keys=keys, checkpoints=args.checkpoints)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    if report.ok:
        _say(out, f"ok: {report.records} records, chain intact ({args.path})")
        _say(out, f"  files        {_files_line(report)}")
        for line in _checkpoint_lines(report, note):
            _say(out, line)
        return EXIT_OK
    where = f"{_name(report.file)} line {report.first_bad_line}" if report.first_bad_line else _name(report.file)
    seq = f" (seq {report.bad_seq})" if report.bad_seq is not None else ""
    _say(out, f"DAMAGED: {where}{seq}: {report.problem}: {report.detail or ''}".rstrip(": "))
    _say(out, f"  intact before it: {report.records} records, up to seq {report.head_seq}")
    for line in _checkpoint_lines(report, note):
        _say(out, line)
    return EXIT_DAMAGED


# --- keygen ----------------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace, out: TextIO) -> int:
    try:
        private, public, key_id = generate_keypair(args.out)
    except (OSError, ValueError) as exc:
        _err(f"cannot write key: {exc}")
        return EXIT_UNUSABLE
    _say(out, f"private key  {private}  (0600: give it to the server only)")
    _say(out, f"public key   {public}  (give it to reviewers: opsgate audit verify --pubkey {public.name})")
    _say(out, f"key id       ed25519 {key_id}")
    return EXIT_OK


# --- query, tail, show -----------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> Filters:
    now = datetime.now(UTC)
    return Filters(
        principal=args.principal,
        tool=args.tool,
        namespace=args.namespace,
        decision=args.decision,
        outcome=args.outcome,
        since=parse_when(args.since, now) if args.since else None,
        until=parse_when(args.until, now) if args.until else None,
        call_id=args.call_id,
    )


def _emit_json(out: TextIO, located: Located) -> None:
    out.write(located.raw.decode("utf-8", "replace") + "\n")


def _query(args: argparse.Namespace, out: TextIO) -> int:
    try:
        filters = _filters(args)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    if args.limit is not None and args.limit < 0:
        _err("--limit must not be negative")
        return EXIT_UNUSABLE
    count = 0

    def chosen() -> Iterator[Call]:
        nonlocal count
        matching = (call for call in join_calls(read_records(args.path)) if matches(call, filters))
        for call in deque(matching, maxlen=args.limit) if args.limit is not None else matching:
            count += 1
            yield call

    try:
        if args.json:
            for call in chosen():
                for located in call.records:
                    _emit_json(out, located)
            return EXIT_OK
        for line in iter_table(chosen()):
            _say(out, line)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    _say(out, f"({count} {'call or event' if count == 1 else 'calls and events'})")
    return EXIT_OK


def _tail(args: argparse.Namespace, out: TextIO) -> int:
    def emit(located: Located) -> None:
        if args.json:
            _emit_json(out, located)
        else:
            _say(out, record_line(located))
        out.flush()

    try:
        for located in last_records(args.path, max(0, args.lines)):
            emit(located)
        out.flush()
        if args.follow:
            follow(args.path, emit)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _show(args: argparse.Namespace, out: TextIO) -> int:
    wanted = args.call_id.strip()
    if len(wanted) < 6:
        _err("give at least 6 characters of the call id")
        return EXIT_UNUSABLE
    found: dict[str, Call] = {}
    try:
        for located in read_records(args.path):
            call_id = located.record.get("call_id")
            if not isinstance(call_id, str) or not call_id.startswith(wanted):
                continue
            call = found.setdefault(call_id, Call())
            stage = located.record.get("stage")
            if stage == "decision" and call.decision is None:
                call.decision = located
            elif stage == "outcome" and call.outcome is None:
                call.outcome = located
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    if not found:
        _err(f"no call {wanted!r} in {args.path}")
        return EXIT_DAMAGED
    if len(found) > 1:
        _err(f"{wanted!r} matches {len(found)} calls: " + ", ".join(sorted(found)[:10]))
        return EXIT_DAMAGED
    call = next(iter(found.values()))
    if args.json:
        for located in call.records:
            _emit_json(out, located)
        return EXIT_OK
    for line in render_call(call):
        _say(out, line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

