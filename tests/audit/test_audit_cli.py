"""The reviewer's commands as a person runs them: verify, keygen, query, tail, show."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsgate.audit import AuditLog
from opsgate.audit.cli import add_audit_commands, run_audit_command
from opsgate.audit.query import Call, Filters, Located, follow, join_calls, matches, parse_when
from opsgate.audit.segments import list_segments

NOW = datetime.now(UTC)
CALL_IDS = [f"{i:02d}" + "c" * 30 for i in range(8)]


def stamp(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def decision(i: int, principal: str, tool: str, namespace: str, effect: str, minutes_ago: float) -> dict[str, Any]:
    return {
        "v": 1, "stage": "decision", "time": stamp(minutes_ago), "call_id": CALL_IDS[i], "session_id": "s" * 32,
        "principal": principal, "principal_source": "config", "os_user": "ops",
        "client": {"name": "ide", "version": "1"},
        "tool": tool, "verb": "write", "namespace": namespace, "arguments": {"name": f"web-{i}", "replicas": i},
        "decision": {"effect": effect, "reason": f"{effect} by rule",
                     "rule": "p, role:operator, *, scale, write, allow", "source": "policy.csv:4",
                     "policy_hash": "a" * 64},
    }


def outcome(i: int, tool: str, status: str, minutes_ago: float) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status}
    if status == "error":
        body["error"] = {"code": "conflict", "message": "the object was modified"}
    return {"v": 1, "stage": "outcome", "time": stamp(minutes_ago), "call_id": CALL_IDS[i], "principal": "alice",
            "session_id": "s" * 32, "tool": tool, "outcome": body, "duration_ms": 12.25}


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """start; alice scale allowed ok (2h ago); bob deploy denied; alice scale allowed error; alice invalid;
    carol rollback allowed (outcome only after the next call); alice whoami allowed, never finished."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_segment_bytes=2500) as log:
        log.append({"v": 1, "stage": "start", "time": stamp(130), "principal": "alice", "session_id": "s" * 32,
                    "pid": 42, "policy_hash": "a" * 64})
        log.append(decision(0, "alice", "scale", "shop", "allow", 120))
        log.append(outcome(0, "scale", "ok", 120))
        log.append(decision(1, "bob", "deploy", "kube-system", "deny", 50))
        log.append(decision(2, "alice", "scale", "shop", "allow", 40))
        log.append(outcome(2, "scale", "error", 40))
        log.append(decision(3, "alice", "scale", "-", "invalid", 30))
        log.append(decision(4, "carol", "rollback", "shop", "allow", 20))
        log.append(decision(5, "alice", "whoami", "-", "allow", 10))
        log.append(outcome(4, "rollback", "ok", 5))
    assert list_segments(path)  # the reader walks segments too
    return path


def run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="opsgate audit")
    add_audit_commands(parser.add_subparsers(dest="audit_command", required=True))
    out = io.StringIO()
    code = run_audit_command(parser.parse_args(list(argv)), out)
    return code, out.getvalue()


# --- verify ---------------------------------------------------------------------------------------


def test_verify_intact_log(log_path: Path) -> None:
    code, text = run("verify", str(log_path))
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"ok: 10 records, chain intact ({log_path})"
    assert "files" in lines[1] and "audit.jsonl.000001" in lines[1]
    assert "hmac-sha256" in text and "beside the log" in text


def test_verify_names_file_line_seq_and_kind(log_path: Path) -> None:
    first = list_segments(log_path)[0][1]
    lines = first.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"duration_ms":12.25', b'"duration_ms":1.25')
    first.chmod(0o600)
    first.write_bytes(b"\n".join(lines))
    code, text = run("verify", str(log_path))
    assert code == 1
    assert text.splitlines()[0] == (
        f"DAMAGED: {first} line 3 (seq 3): hash-mismatch: hash does not match the record's content"
    )
    assert "intact before it: 2 records, up to seq 2" in text


def test_verify_with_a_key_pair(log_path: Path, tmp_path: Path) -> None:
    code, text = run("keygen", str(tmp_path / "key"))
    assert code == 0 and "key.pub" in text
    assert run("keygen", str(tmp_path / "key"))[0] == 2  # never overwrites
    signed = tmp_path / "signed" / "audit.jsonl"
    signed.parent.mkdir()
    with AuditLog(signed, signing_key=tmp_path / "key") as log:
        log.append({"stage": "decision", "n": 1})
    code, text = run("verify", str(signed), "--pubkey", str(tmp_path / "key.pub"))
    assert code == 0 and "2 signed by ed25519" in text  # start and stop
    # Someone cut the last record: the stop checkpoint still names it.
    signed.write_bytes(b"")
    code, text = run("verify", str(signed), "--pubkey", str(tmp_path / "key.pub"))
    assert code == 1 and "truncated" in text.splitlines()[0]
    # The log is checked against a key that did not sign it: nothing it says can be trusted.
    code, text = run("verify", str(log_path), "--pubkey", str(tmp_path / "key.pub"))
    assert code == 1 and "unknown-key" in text


def test_verify_unreadable_and_bad_keys(tmp_path: Path, log_path: Path) -> None:
    assert run("verify", str(tmp_path / "missing.jsonl"))[0] == 2
    assert run("verify", str(tmp_path))[0] == 2
    (tmp_path / "bad.pub").write_text("nope")
    assert run("verify", str(log_path), "--pubkey", str(tmp_path / "bad.pub"))[0] == 2
    assert run("verify", str(log_path), "--hmac-key", str(tmp_path / "missing"))[0] == 2


def test_verify_without_any_key_says_signatures_were_not_checked(log_path: Path) -> None:
    (log_path.parent / "audit.jsonl.hmac-key").unlink()
    code, text = run("verify", str(log_path))
    assert code == 0 and "NOT checked" in text


def test_module_entry_point(log_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "opsgate.audit.cli", "verify", str(log_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: 10 records")


# --- query ----------------------------------------------------------------------------------------


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[1:-1]]


def test_query_table_joins_decisions_and_outcomes(log_path: Path) -> None:
    code, text = run("query", str(log_path))
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIME", "(UTC)", "PRINCIPAL"]
    table = rows(text)
    assert [r[0] for r in table] == ["1", "2", "4", "5", "7", "8", "9"]  # in decision order, events included
    assert table[1][4:9] == ["scale", "shop", "web-0", "allow", "ok"]
    assert table[3][8] == "error:conflict"
    assert "carol" in lines[6] and "ok" in lines[6].split()  # its outcome came later and was joined
    assert "(no outcome)" in lines[-2]  # whoami never finished
    assert lines[-1] == "(7 calls and events)"
    column = lines[0].index("PRINCIPAL")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:-1])  # aligned


@pytest.mark.parametrize(
    ("args", "seqs"),
    [
        (["--principal", "alice"], ["1", "2", "5", "7", "9"]),
        (["--principal", "c*"], ["8"]),
        (["--tool", "scale"], ["2", "5", "7"]),
        (["--namespace", "kube-*"], ["4"]),
        (["--decision", "deny"], ["4"]),
        (["--decision", "invalid"], ["7"]),
        (["--outcome", "error"], ["5"]),
        (["--outcome", "ok"], ["2", "8"]),
        (["--since", "1h"], ["4", "5", "7", "8", "9"]),
        (["--since", "45m", "--until", "25m"], ["5", "7"]),
        (["--until", (NOW - timedelta(minutes=100)).isoformat()], ["1", "2"]),
        (["--call-id", "04cc"], ["8"]),
        (["--tool", "scale", "--limit", "2"], ["5", "7"]),
    ],
)
def test_query_filters(log_path: Path, args: list[str], seqs: list[str]) -> None:
    code, text = run("query", str(log_path), *args)
    assert code == 0
    assert [r[0] for r in rows(text)] == seqs


def test_query_json_prints_the_records_as_they_are_in_the_log(log_path: Path) -> None:
    code, text = run("query", str(log_path), "--tool", "scale", "--outcome", "error", "--json")
    assert code == 0
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["stage"], r["seq"]) for r in records] == [("decision", 5), ("outcome", 6)]
    files = [*(s for _, s in list_segments(log_path)), log_path]
    on_disk = {line for p in files for line in p.read_text().splitlines()}
    assert set(text.splitlines()) <= on_disk  # byte for byte: the hashes still check


def test_query_refuses_bad_filters(log_path: Path) -> None:
    assert run("query", str(log_path), "--since", "yesterday")[0] == 2
    assert run("query", str(log_path), "--limit", "-1")[0] == 2
    assert run("query", str(log_path.parent / "missing.jsonl"))[0] == 2


def test_parse_when() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_when("90s", now) == now - timedelta(seconds=90)
    assert parse_when("1h30m", now) == now - timedelta(minutes=90)
    assert parse_when("2d", now) == now - timedelta(days=2)
    assert parse_when("1w", now) == now - timedelta(weeks=1)
    assert parse_when("2025-06-01T10:00:00Z", now) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert parse_when("2025-06-01T12:00:00+02:00", now) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert parse_when("2025-06-01", now) == datetime(2025, 6, 1, tzinfo=UTC)
    for bad in ("", "1x", "tomorrow", "h1"):
        with pytest.raises(ValueError):
            parse_when(bad, now)


def test_join_lets_go_of_a_decision_whose_outcome_never_comes() -> None:
    def located(seq: int, record: dict[str, Any]) -> Located:
        return Located(Path("a"), seq, {**record, "seq": seq}, b"")

    stream = [located(1, decision(0, "a", "t", "n", "allow", 1))]
    stream += [located(2 + i, decision(1, "a", "t", "n", "deny", 1)) for i in range(5)]
    stream.append(located(7, outcome(0, "t", "ok", 1)))
    calls = list(join_calls(stream, window=3))
    assert calls[0].decision is not None and calls[0].outcome is None  # let go after 3 records
    assert calls[-1].outcome is not None and calls[-1].decision is None  # the late outcome, on its own
    assert [c.first.record["seq"] for c in join_calls(stream)] == [1, 2, 3, 4, 5, 6]  # without a window: joined


def test_server_events_only_without_call_filters() -> None:
    event = Call(event=Located(Path("a"), 1, {"stage": "start", "principal": "alice"}, b""))
    assert matches(event, Filters(principal="alice"))
    assert not matches(event, Filters(tool="scale"))
    assert not matches(event, Filters(since=NOW))  # no time: cannot be placed in a range


# --- tail and show --------------------------------------------------------------------------------


def test_tail_prints_the_last_records_readably(log_path: Path) -> None:
    code, text = run("tail", str(log_path), "-n", "3")
    assert code == 0
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[0] == "8" and "rollback" in lines[0] and "allow" in lines[0]
    assert lines[2].split()[0] == "10" and "outcome" in lines[2] and "12.25 ms" in lines[2]
    code, text = run("tail", str(log_path), "-n", "20", "--json")
    assert [json.loads(line)["seq"] for line in text.splitlines()] == list(range(1, 11))  # across segments


def test_follow_prints_new_records_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    seen: list[int] = []
    with AuditLog(path, max_segment_bytes=400) as log:
        log.append({"stage": "decision", "n": -1, "pad": "p" * 50})
        done = threading.Event()
        thread = threading.Thread(
            target=follow, args=(path, lambda r: seen.append(r.record["seq"])),
            kwargs={"poll": 0.01, "stop": done.is_set, "start_at_end": False},
        )
        thread.start()
        while not seen:  # it has started (from the beginning of the live file) and caught up
            time.sleep(0.005)
        for n in range(12):
            log.append({"stage": "decision", "n": n, "pad": "p" * 50})
            if n % 5 == 0:
                time.sleep(0.03)  # sometimes it catches up, sometimes several rotations pass between polls
        deadline = time.monotonic() + 10
        while len(seen) < 13 and time.monotonic() < deadline:
            time.sleep(0.01)
        done.set()
        thread.join(5)
    assert len(list_segments(path)) >= 3
    assert seen == list(range(1, 14))  # through every rotation: none twice, none skipped


def test_follow_from_the_end_skips_what_is_there_but_not_a_record_being_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append({"n": 0})
        half = json.dumps({"n": 1}).encode()
    with path.open("ab") as stream:
        stream.write(half[:5])  # a writer is in the middle of this line
    seen: list[Any] = []
    calls = [0]

    def stop() -> bool:  # called once per round, after follow has opened the file and skipped to its end
        calls[0] += 1
        if calls[0] == 1:
            with path.open("ab") as stream:
                stream.write(half[5:] + b"\n")  # the writer finishes the line
        return bool(seen) or calls[0] > 50

    follow(path, lambda r: seen.append(r.record), poll=0.001, stop=stop)
    assert seen == [{"n": 1}]


def test_show_one_call(log_path: Path) -> None:
    code, text = run("show", str(log_path), CALL_IDS[2][:8])
    assert code == 0
    assert text.startswith(f"call {CALL_IDS[2]}")
    assert "allow: allow by rule [rule p, role:operator, *, scale, write, allow at policy.csv:4]" in text
    assert "error:conflict in 12.2 ms" in text or "error:conflict in 12.3 ms" in text
    decision_at, outcome_at = text.index("decision record: seq 5"), text.index("outcome record: seq 6")
    assert decision_at < outcome_at
    assert "arguments.replicas" in text and "outcome.error.message" in text
    code, text = run("show", str(log_path), CALL_IDS[1], "--json")
    assert [json.loads(line)["stage"] for line in text.splitlines()] == ["decision"]


def test_show_not_found_ambiguous_or_too_short(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show", str(log_path), "ffffffff")[0] == 1
    assert run("show", str(log_path), "0")[0] == 2
    code, _ = run("show", str(log_path), "c" * 6)  # no call id starts with it
    assert code == 1
    with AuditLog(log_path) as log:  # a second call whose id shares a prefix with another
        log.append({**decision(0, "dave", "scale", "shop", "deny", 1), "call_id": CALL_IDS[0][:8] + "d" * 24})
    code, _ = run("show", str(log_path), CALL_IDS[0][:8])
    assert code == 1 and "matches 2 calls" in capsys.readouterr().err


def test_last_matching_reads_backwards_across_segments_within_a_budget(log_path: Path) -> None:
    from opsgate.audit.query import last_matching

    alice = last_matching(log_path, lambda r: r.get("principal") == "alice" and "call_id" in r, 3)
    assert [r["seq"] for r in alice] == [7, 9, 10]  # oldest first (the fixture's outcomes all name alice)
    everything = last_matching(log_path, lambda r: True, 100)
    assert [r["seq"] for r in everything] == list(range(1, 11))  # through every segment
    with log_path.open("ab") as stream:
        stream.write(b'{"seq":11,"principal":"alice","call_id":"x"')  # a line still being written
    assert last_matching(log_path, lambda r: True, 1)[0]["seq"] == 10
    assert len(last_matching(log_path, lambda r: True, 100, max_bytes=1)) < 10  # the budget bounds the work


def test_long_tables_stream_in_the_widths_of_their_first_rows() -> None:
    from opsgate.audit.query import iter_table

    def call(seq: int, principal: str) -> Call:
        record = {**decision(0, principal, "scale", "shop", "deny", 1), "seq": seq}
        return Call(decision=Located(Path("a"), seq, record, b""))

    lines = list(iter_table([call(1, "al"), call(2, "bo"), call(3, "a-much-longer-principal-name")], sizing_rows=2))
    assert len({line.index("scale") for line in lines[1:]}) == 1  # the third row kept the columns
    assert "a-much-…" in lines[3] or "…" in lines[3]


def test_an_unreadable_key_beside_the_log_is_a_note_not_a_failure(log_path: Path) -> None:
    key = log_path.parent / "audit.jsonl.hmac-key"
    key.write_text("not hex")
    code, text = run("verify", str(log_path))
    assert code == 0 and "cannot be read" in text and "NOT checked" in text
