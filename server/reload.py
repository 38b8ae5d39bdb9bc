"""Policy hot reload: a changed policy is loaded whole and swapped in, or refused whole.

A new ``Policy`` is built from the files; only if it loads (and passes the
loader's checks) does it replace the gate's policy, in one attribute assignment.
A broken file keeps the previous policy. Either way the audit log says what
happened and with which hash, so every later decision can be tied to its policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import structlog

from opsgate import telemetry
from opsgate.audit import AuditWriteError
from opsgate.policies import POLICY_FILE, SHIPPED_DIR
from opsgate.policies.lint import load_checked

from .gate import Gate
from .records import server_record

log = structlog.get_logger("opsgate.reload")

Stamp = tuple[tuple[str, int, int], ...]


def policy_files(path: Path | None) -> list[Path]:
    """The files a reload depends on, found anew each time (a new *.csv counts)."""
    folder = path if path is not None and path.is_dir() else (path.parent if path is not None else SHIPPED_DIR)
    if path is not None and path.is_file():
        candidates = [path, folder / "bounds.toml"]
    else:
        candidates = [folder / "model.conf", *sorted(folder.glob("*.csv")), folder / "bounds.toml"]
    return [p for p in candidates if p.exists()]


def stamp(files: Sequence[Path]) -> Stamp:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def reload_policy(gate: Gate, path: Path | None, verbs: Mapping[str, str]) -> bool:
    """Load, lint and swap, or keep the old policy; audit both outcomes. Returns whether it swapped."""
    old_hash = gate.policy.hash
    new, findings = load_checked(path or SHIPPED_DIR / POLICY_FILE, verbs, tool_bounds=gate.tool_bounds)
    if telemetry.ON:
        for finding in findings:
            telemetry.add(telemetry.POLICY_LINT_FAILURES, 1, {"opsgate.severity": finding.severity})
        if new is None or new.hash != old_hash:
            telemetry.add(telemetry.POLICY_RELOADS, 1, {"opsgate.result": "failed" if new is None else "reloaded"})
    if new is None:
        error = "; ".join(str(f) for f in findings if f.severity == "error")
        log.error("policy_reload_failed", error=error, kept=old_hash)
        _audit(gate, "policy_reload_failed", error=error, kept_policy_hash=old_hash)
        return False
    if new.hash == old_hash:
        return False
    gate.policy = new
    log.info("policy_reloaded", policy_hash=new.hash, previous=old_hash)
    _audit(gate, "policy_reload", policy_hash=new.hash, previous_policy_hash=old_hash,
           sources=[str(s) for s in new.sources])
    return True


def _audit(gate: Gate, stage: str, **details: object) -> None:
    try:
        gate.audit.append(server_record(stage, gate.caller, **details))
    except AuditWriteError as exc:
        log.error("audit_write_failed", stage=stage, error=str(exc))


async def watch_policy(gate: Gate, path: Path | None, verbs: Mapping[str, str], interval: float) -> None:
    """Poll the files' (mtime, size): portable, and cheap at one stat per file per interval."""
    seen = stamp(policy_files(path))
    while True:
        await anyio.sleep(interval)
        now = stamp(policy_files(path))
        if now != seen:
            seen = now
            await anyio.to_thread.run_sync(reload_policy, gate, path, verbs)
