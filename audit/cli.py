"""``opsgate audit ...``: the reviewer's commands (verify, keygen, query, tail, show, export, report).

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TextIO, TypeVar

from .checkpoint import KeyRing, generate_keypair, load_hmac_key, load_public_key
from .log import AuditWriteError
from .query import (
    Call,
    Filters,
    Located,
    chain_files,
    follow,
    iter_table,
    join_calls,
    last_records,
    matches,
    parse_when,
    read_records,
    record_line,
    record_time,
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
    _source_arguments(v, "the live log file (audit.jsonl); its segments are found beside it")
    v.add_argument("--pubkey", type=Path, action="append", default=[], help="Ed25519 public key (PEM); repeatable")
    v.add_argument("--hmac-key", type=Path, action="append", default=[], help="HMAC key file; repeatable")
    v.add_argument("--checkpoints", type=Path, help="checkpoints file to check against (default: PATH.checkpoints), "
                   "e.g. a copy kept elsewhere")
    v.add_argument("--ocsf", action="store_true", help="PATH is an `audit export --format ocsf` file: re-verify "
                   "the records it carries (and, with --checkpoints, against the signed checkpoints)")
    v.set_defaults(audit_action="verify")

    k = subparsers.add_parser("keygen", help="write an Ed25519 key pair for signing checkpoints",
                              description="Writes OUT (private key, PEM, mode 0600) and OUT.pub (public key). "
                              "Give the server OUT; give reviewers OUT.pub.")
    k.add_argument("out", type=Path, help="private key file to create (the public key goes to OUT.pub)")
    k.set_defaults(audit_action="keygen")

    q = subparsers.add_parser("query", help="list calls (decision + outcome) and server events matching filters",
                              description="One row per call: its decision joined with its outcome. Times are UTC; "
                              "--since/--until take RFC 3339 or a span back from now (90s, 15m, 1h, 2d, 1w).")
    _source_arguments(q)
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
    _source_arguments(t)
    t.add_argument("-n", "--lines", type=int, default=10, help="how many records (default 10)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C to stop)")
    t.add_argument("--json", action="store_true", help="print records as JSON Lines, as in the log")
    t.set_defaults(audit_action="tail")

    s = subparsers.add_parser("show", help="one call: its decision and outcome records, readably")
    _source_arguments(s)
    s.add_argument("call_id", help="a call id or its first characters (at least 6)")
    s.add_argument("--json", action="store_true", help="print the call's records as JSON Lines")
    s.set_defaults(audit_action="show")
    _add_security_commands(subparsers)

    d = subparsers.add_parser("db-init", help="create the audit tables in PostgreSQL (as their owner) for --audit-db",
                              description="Run once, as the role that will own the tables (not the server's). "
                              "Creates schema opsgate: append-only audit_record and audit_checkpoint, rate_bucket; "
                              "grants WRITER INSERT and SELECT on the audit tables. Safe to run again.")
    d.add_argument("--audit-db", metavar="DSN", required=True, help="the database, as the owner role")
    d.add_argument("--writer", required=True, help="the role opsgate serve logs in as")
    d.set_defaults(audit_action="db-init")


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
        "export": _export,
        "report": _report,
        "db-init": _db_init,
    }
    command = commands.get(str(action))
    if command is None:
        _err(f"unknown audit command {action!r}")
        return EXIT_UNUSABLE
    if not _resolve_source(args):
        return EXIT_UNUSABLE
    try:
        return command(args, stream)
    except AuditWriteError as exc:  # the audit database: cannot connect, or a query failed (redacted)
        _err(str(exc))
        return EXIT_UNUSABLE
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


# --- where the records are: a file log, or the audit database (--audit-db) ------------------------


def _source_arguments(parser: argparse.ArgumentParser, path_help: str | None = None) -> None:
    """PATH (a file log) or --audit-db DSN (the team server's PostgreSQL log): one of them."""
    parser.add_argument("path", type=Path, nargs="?", help=path_help)
    parser.add_argument("--audit-db", metavar="DSN", default=os.environ.get("OPSGATE_AUDIT_DB") or None,
                        help="read the audit log in this PostgreSQL database instead of PATH (libpq URL or "
                        "key=value; default $OPSGATE_AUDIT_DB; keep the password in PGPASSWORD or ~/.pgpass)")


def _resolve_source(args: argparse.Namespace) -> bool:
    """With --audit-db and no PATH, ``args.path`` names the table (for messages); exactly one source is needed."""
    if not hasattr(args, "path"):
        return True
    dsn = getattr(args, "audit_db", None)
    if args.path is not None:
        args.audit_db = None  # a PATH given wins over $OPSGATE_AUDIT_DB
        return True
    if not dsn:
        _err("give the log's PATH, or --audit-db DSN")
        return False
    from .pgsink import dsn_label

    args.path = Path(f"opsgate.audit_record in {dsn_label(dsn).removeprefix('postgresql://')}")
    return True


def _records(args: argparse.Namespace) -> Iterator[Located]:
    """Every record of the log in chain order, from whichever source ``args`` names."""
    if getattr(args, "audit_db", None):
        from .pgread import pg_records

        return pg_records(args.audit_db)
    return read_records(args.path)


# --- verify ----------------------------------------------------------------------------------------


def _keyring(args: argparse.Namespace) -> tuple[KeyRing | None, str | None]:
    """The keys to check signatures with, and a note on where they came from. Raises OSError/ValueError."""
    publics = tuple(load_public_key(p) for p in args.pubkey)
    hmacs = tuple(load_hmac_key(p) for p in args.hmac_key)
    if publics or hmacs:
        return KeyRing(publics, hmacs, strict=True), None
    if getattr(args, "audit_db", None):
        return None, None  # nothing lies "beside" a database: give --pubkey
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
    if getattr(args, "ocsf", False):
        return _verify_ocsf(args, out)
    code, lines = _verify_lines(args)
    for line in lines:
        _say(out, line)
    return code


def _verify_lines(args: argparse.Namespace) -> tuple[int, list[str]]:
    """Verify the log at ``args.path`` with the keys in ``args``: the exit code and the lines that say so
    (none when the log or a key cannot be read: that is said on stderr)."""
    try:
        keys, note = _keyring(args)
    except (OSError, ValueError) as exc:
        _err(f"cannot load key: {exc}")
        return EXIT_UNUSABLE, []
    try:
        if getattr(args, "audit_db", None):
            from .pgread import pg_verify

            report = pg_verify(args.audit_db, keys=keys)
        else:
            with _progress("verify", _log_bytes(args.path)) as advance:
                report = verify_audit(args.path, keys=keys, checkpoints=args.checkpoints, progress=advance)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE, []
    if report.ok:
        lines = [f"ok: {report.records} records, chain intact ({args.path})", f"  files        {_files_line(report)}"]
        return EXIT_OK, [*lines, *_checkpoint_lines(report, note)]
    where = f"{_name(report.file)} line {report.first_bad_line}" if report.first_bad_line else _name(report.file)
    seq = f" (seq {report.bad_seq})" if report.bad_seq is not None else ""
    lines = [
        f"DAMAGED: {where}{seq}: {report.problem}: {report.detail or ''}".rstrip(": "),
        f"  intact before it: {report.records} records, up to seq {report.head_seq}",
    ]
    return EXIT_DAMAGED, [*lines, *_checkpoint_lines(report, note)]


def _db_init(args: argparse.Namespace, out: TextIO) -> int:
    from .pgschema import install_schema
    from .pgsink import connect, dsn_label, reason

    with connect(args.audit_db) as conn:
        try:
            install_schema(conn, writer=args.writer)
        except Exception as exc:  # psycopg's errors: the role may not create, the writer role does not exist
            _err(f"cannot install the audit schema in {dsn_label(args.audit_db)}: {reason(exc)}")
            return EXIT_UNUSABLE
    _say(out, f"audit schema ready in {dsn_label(args.audit_db)}; {args.writer} may INSERT and SELECT audit records")
    return EXIT_OK


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
        matching = (call for call in join_calls(_records(args)) if matches(call, filters))
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
        if args.audit_db:
            from .pgread import pg_follow, pg_last_records

            last, more = partial(pg_last_records, args.audit_db), partial(pg_follow, args.audit_db)
        else:
            last, more = partial(last_records, args.path), partial(follow, args.path)
        for located in last(max(0, args.lines)):
            emit(located)
        out.flush()
        if args.follow:
            more(emit)
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
        for located in _records(args):
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


# --- export, report (for the security team) --------------------------------------------------------

_T = TypeVar("_T")
PROGRESS_MIN_BYTES = 8 << 20
"""Below this much log a read takes well under a second: no progress bar."""


def progress_wanted(stderr_is_terminal: bool, term: str | None, total_bytes: int) -> bool:
    """A progress bar only for a person watching a long read: stderr a terminal (not ``TERM=dumb``).

    Never on stdout (the command's output), never in a pipe, a file or CI logs.
    """
    return stderr_is_terminal and term != "dumb" and total_bytes >= PROGRESS_MIN_BYTES


@contextmanager
def _progress(what: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr while the block runs, when :func:`progress_wanted`; yields ``advance(bytes)``."""
    if not progress_wanted(sys.stderr.isatty(), os.environ.get("TERM"), total_bytes):
        yield lambda _: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(what), BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(what, total=total_bytes)
        yield lambda done: bar.advance(task, done)


def _log_bytes(path: Path) -> int:
    total = 0
    for file in chain_files(path):
        with suppress(OSError):
            total += file.stat().st_size
    return total


def _tracked(items: Iterable[_T], size: Callable[[_T], int], advance: Callable[[int], None]) -> Iterator[_T]:
    """The items (records, lines), telling ``advance`` how many bytes they took (every 1000: a bar needs no more)."""
    done = 0
    for count, item in enumerate(items, start=1):
        done += size(item)
        if count % 1000 == 0:
            advance(done)
            done = 0
        yield item
    advance(done)


def _record_bytes(located: Located) -> int:
    return len(located.raw) + 1


def _add_security_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """export (OCSF JSON Lines for a SIEM) and report (one HTML page)."""
    e = subparsers.add_parser(
        "export", help="write the log as OCSF API Activity events (JSON Lines) for a SIEM",
        description="One OCSF 1.3.0 API Activity event (class 6003) per record, server events included, each "
        "carrying its record's canonical line in unmapped.opsgate.record: `opsgate audit verify --ocsf FILE` "
        "re-verifies a copy. --since/--until cut one unbroken run of the chain (from the first record at or after "
        "--since, up to the first one after --until), so a part verifies on its own too.",
    )
    _source_arguments(e)
    e.add_argument("--format", choices=["ocsf"], default="ocsf", help="ocsf (the only format)")
    e.add_argument("--since", help="from this time (RFC 3339) or this long ago (1h)")
    e.add_argument("--until", help="up to this time (RFC 3339) or this long ago")
    e.add_argument("--out", type=Path, help="write here instead of stdout")
    e.set_defaults(audit_action="export")

    r = subparsers.add_parser(
        "report", help="write one self-contained HTML page: verify result, calls over time, denials, writes",
        description="Verify result (the whole log), calls over time by decision, top principals and tools, every "
        "denial and bound refusal with its rule, and every write with its before/after, for a time range. "
        "No scripts and no external links: open it anywhere, mail it, archive it.",
    )
    _source_arguments(r)
    r.add_argument("--since", help="from this time (RFC 3339) or this long ago (1h)")
    r.add_argument("--until", help="up to this time (RFC 3339) or this long ago")
    r.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    r.add_argument("--pubkey", type=Path, action="append", default=[], help="as for verify; repeatable")
    r.add_argument("--hmac-key", type=Path, action="append", default=[], help="as for verify; repeatable")
    r.add_argument("--checkpoints", type=Path, help="as for verify")
    r.set_defaults(audit_action="report")


def _span(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    """--since/--until as times; ValueError with a message fit for the command line."""
    now = datetime.now(UTC)
    since = parse_when(args.since, now) if args.since else None
    until = parse_when(args.until, now) if args.until else None
    return since, until


def _run_of_chain(records: Iterable[Located], since: datetime | None, until: datetime | None) -> Iterator[Located]:
    """The unbroken run from the first record at or after ``since`` up to the first one after ``until``."""
    started = since is None
    for located in records:
        when = record_time(located.record)
        if not started:
            started = when is not None and when >= since  # type: ignore[operator]
            if not started:
                continue
        if until is not None and when is not None and when > until:
            return
        yield located


def _export(args: argparse.Namespace, out: TextIO) -> int:
    from .ocsf import Events

    try:
        since, until = _span(args)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    count = 0
    events = Events()
    # --out is written whole or not at all: a SIEM must not ingest half an export as if it were all of it.
    partial = args.out.with_name(f".{args.out.name}.partial") if args.out else None
    try:
        target = partial.open("w", encoding="utf-8", newline="") if partial else nullcontext(out)
        with target as stream, _progress("export", _log_bytes(args.path)) as advance:
            for located in _run_of_chain(_tracked(_records(args), _record_bytes, advance), since, until):
                stream.write(events.line(located.record, located.raw).decode("utf-8"))
                count += 1
        if partial:
            os.replace(partial, args.out)
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"cannot export {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    finally:
        if partial:
            with suppress(OSError):
                partial.unlink()
    if args.out:
        _err(f"wrote {count} OCSF events to {args.out}")
    return EXIT_OK


def _anchors(args: argparse.Namespace) -> tuple[dict[int, str], list[str]]:
    """The (seq, hash) pairs the checkpoints file signed, checked with the keys given, and what to say about them.

    Raises ValueError naming a checkpoint whose signature does not hold, OSError when a file cannot be read.
    """
    from .checkpoint import parse_checkpoint_line

    if args.checkpoints is None:
        return {}, ["  checkpoints  not checked (give --checkpoints, a copy of the log's checkpoints file, and "
                    "--pubkey): the export's records are shown intact and in order, not complete or genuine"]
    keys, _ = _keyring(args)
    data = args.checkpoints.read_bytes()
    anchors: dict[int, str] = {}
    signed_by_other = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            signed = parse_checkpoint_line(raw)
        except (ValueError, RecursionError):
            continue
        problem = keys.check(signed) if keys else None
        if problem == "bad-signature" or (problem is not None and keys is not None and keys.strict):
            raise ValueError(f"{args.checkpoints} line {number}: {problem}")
        if problem is not None:
            signed_by_other += 1
            continue
        if signed.checkpoint.size > 0:
            anchors.setdefault(signed.checkpoint.size, signed.checkpoint.head)
    said = f"{len(anchors)} checkpointed seqs in {args.checkpoints.name}"
    said += f", signatures checked ({', '.join(keys.key_ids())})" if keys else ", signatures NOT checked (--pubkey)"
    if signed_by_other:
        said += f"; {signed_by_other} signed by other keys, not used"
    return anchors, [f"  checkpoints  {said}"]


def _verify_ocsf(args: argparse.Namespace, out: TextIO) -> int:
    from .ocsf import check_export

    try:
        anchors, notes = _anchors(args)
    except ValueError as exc:
        _say(out, f"DAMAGED: {exc}")
        return EXIT_DAMAGED
    except OSError as exc:
        _err(f"cannot read {exc.filename}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    try:
        with args.path.open("rb") as stream, _progress("verify", _log_bytes(args.path)) as advance:
            check = check_export(_tracked(stream, len, advance), anchors)
    except OSError as exc:
        _err(f"cannot read {args.path}: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    span = f"seq {check.first_seq}..{check.last_seq}" if check.first_seq is not None else "no records"
    if check.ok:
        whole = "the log from its start" if check.first_seq in (None, 1) else "a run of the chain"
        lines = [f"ok: {check.records} records ({span}, {whole}), chain intact ({args.path})",
                 f"  head         seq {check.last_seq or 0} hash {check.head_hash}", *notes]
        code = EXIT_OK
        if args.checkpoints is not None:
            lines.append(f"  anchored     {check.anchored} of its records match a signed checkpoint")
            later = max(anchors, default=0)
            if later > (check.last_seq or 0):
                lines.append(f"  later        the checkpoints go on to seq {later}: the log holds records after "
                             "this export's last")
            if check.anchored == 0:
                code = EXIT_DAMAGED
                lines[0] = f"UNVERIFIED: no signed checkpoint falls within {span}: the export cannot be shown genuine"
        for line in lines:
            _say(out, line)
        return code
    _say(out, f"DAMAGED: {args.path} line {check.line}: {check.problem}: {check.detail or ''}".rstrip(": "))
    _say(out, f"  intact before it: {check.records} records ({span})")
    for line in notes:
        _say(out, line)
    return EXIT_DAMAGED


def _report(args: argparse.Namespace, out: TextIO) -> int:
    from .report import build_report

    try:
        since, until = _span(args)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    code, lines = _verify_lines(args)
    if code == EXIT_UNUSABLE:
        return code
    try:
        with _progress("report", _log_bytes(args.path)) as advance:
            calls = join_calls(_tracked(_records(args), _record_bytes, advance))
            page = build_report(
                (call for call in calls if matches(call, Filters(since=since, until=until))),
                verified=code == EXIT_OK, verify_lines=lines, log=str(args.path), since=since, until=until,
                generated=datetime.now(UTC),
            )
        args.out.write_text(page, encoding="utf-8")
    except OSError as exc:
        _err(f"cannot write the report: {exc.strerror or exc}")
        return EXIT_UNUSABLE
    _err(f"wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

