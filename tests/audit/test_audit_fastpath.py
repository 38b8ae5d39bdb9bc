"""The fast paths are exact: the orjson canonical form, the cut-out hash input, and verify in ranges.

Each shortcut must give the very answer of the slow, obviously-right way, on
every input, or the reviewer's verdict would depend on which path a line took.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opsgate.audit.verify as verify_module
from opsgate.audit import AuditLog, canonical, verify_log
from opsgate.audit.chain import (
    canonical_object,
    canonical_without_hash,
    loads,
    matches_canonical,
    prepare,
    seal_line,
    seal_next,
    unhashed_line,
)

keys = st.text(max_size=6) | st.sampled_from(["a", "é", "\uff61", "\U0001f600", "hash", "seq", "B", "a\u0000"])
numbers = (
    st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.1, 1e-5, 1e-7, 1e16, 1e21, 1e22, -0.0, 2.0**53, 123.456, 5e-324, 1.7976931348623157e308])
)
values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_fast_canonical_equals_rfc8785(obj: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        with pytest.raises(ValueError):
            canonical(obj)
        return
    assert canonical(obj) == expected


def _random_floats(count: int) -> list[float]:
    rng = random.Random(5)
    out: list[float] = []
    while len(out) < count:
        kind = rng.random()
        if kind < 0.3:  # any bit pattern
            x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        elif kind < 0.9:  # every decade from 1e-12 to 1e22
            x = rng.uniform(1, 10) * 10.0 ** rng.randint(-12, 22) * rng.choice((1, -1))
        else:  # short decimals, as people write them
            x = round(rng.uniform(0, 1e6), rng.randint(0, 12))
        if math.isfinite(x) and not x.is_integer():
            out.append(x)
    return out


def test_orjson_writes_rfc8785_digits_whenever_it_writes_no_exponent() -> None:
    """What verify's fast check relies on: orjson's decimal form of a non-integral float is RFC 8785's."""
    for x in _random_floats(60_000):
        written = orjson.dumps(x)
        if b"e" not in written:
            assert written == rfc8785.dumps(x), x


def test_plain_floats_are_written_alike() -> None:
    """What prepare relies on: in the plain range, orjson and RFC 8785 write every float the same."""
    plain = [x for x in _random_floats(60_000) if 1e-4 <= abs(x) < 1e16]
    assert len(plain) > 20_000
    for x in plain:
        assert canonical({"x": x}) == rfc8785.dumps({"x": x}), x


def test_values_beyond_orjson_go_the_exact_way() -> None:
    deep: Any = "leaf"
    for _ in range(300):  # orjson stops at 254 levels
        deep = [deep]
    assert canonical({"d": deep}) == rfc8785.dumps({"d": deep})
    for bad in ({"n": 2**53}, {"s": "\ud800"}, {"k": {1: 2}}):
        with pytest.raises(ValueError):
            canonical(bad)


def _mutations(line: bytes) -> list[bytes]:
    text = line.decode("utf-8", "surrogatepass")
    out = [
        json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
        json.dumps(json.loads(text), separators=(",", ":")).encode(),
        line.replace(b":", b": ", 1),
        line + b" ",
    ]
    for old, new in ((b"1", b"1.0"), (b"0", b"-0"), (b"e+", b"E+"), (b"e-", b"e-0"), (b'"a"', b'"\\u0061"')):
        if old in line:
            out.append(line.replace(old, new, 1))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys.filter(lambda k: k not in ("seq", "prev", "hash")), values, max_size=6))
def test_verify_canonical_check_agrees_with_rfc8785_on_good_and_mangled_lines(body: dict[str, Any]) -> None:
    try:
        _, line = seal_line(body, 3, "0" * 64)
    except ValueError:
        return
    for candidate in [line, *_mutations(line)]:
        parser = verify_module._Parser()
        parsed = parser.line(1, candidate, True, 0)
        if parsed.obj is None:
            continue
        try:
            slow = rfc8785.dumps(parsed.obj) == candidate
        except rfc8785.CanonicalizationError:
            slow = None
        try:
            fast: bool | None = matches_canonical(parsed.obj, candidate, floats_need_care=parsed.floats_need_care)
        except ValueError:
            fast = None
        assert fast == slow, candidate


def _vouched_alike(candidate: bytes) -> None:
    """canonical_object vouches only for a line that is the RFC 8785 form of what ``loads`` reads from it, and
    returns that very object (same types: repr tells 1 from 1.0)."""
    obj = canonical_object(candidate)
    if obj is None:
        return
    reference = loads(candidate)
    assert rfc8785.dumps(reference) == candidate
    assert repr(obj) == repr(reference)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys.filter(lambda k: k not in ("seq", "prev", "hash")), values, max_size=6))
def test_the_orjson_shortcut_vouches_only_for_canonical_lines(body: dict[str, Any]) -> None:
    try:
        _, line = seal_line(body, 3, "0" * 64)
    except ValueError:
        return
    for candidate in [line, *_mutations(line)]:
        _vouched_alike(candidate)


def test_the_orjson_shortcut_leaves_the_hard_lines_to_the_exact_way() -> None:
    hard = [
        b'{"n":9007199254740992}',  # beyond 2**53 - 1: loads reads a float, RFC 8785 writes it so
        b'{"n":9007199254740993}',
        b'{"x":2.0}',  # integral float: RFC 8785 writes 2
        b'{"x":1e-05}',
        b'{"x":-0.0}',
        b'{"x":1e+16}',
        b'{"x":1e-6}',  # orjson's form of 1e-6; RFC 8785 writes 0.000001
        b'{"a":1,"a":2}',  # duplicate keys
        rb'{"\ue000":1,"\uff61":2}',
        '{"\ue000":1,"\U0001f600":2}'.encode(),
        '{"\U0001f600":1,"\ue000":2}'.encode(),
        rb'{"s":"\ud800"}',
        b'{"a":1} ',
        b'[1,2]',
        b'{"a":NaN}',
    ]
    for line in hard:
        _vouched_alike(line)
    assert canonical_object(b'{"a":1,"b":[1.5,"x",null,true]}') == {"a": 1, "b": [1.5, "x", None, True]}
    for line in hard[:8]:
        assert canonical_object(line) is None, line
    # no exponent and no ".0" ending: orjson's digits are RFC 8785's, also below 1e-4 where orjson still writes
    # a decimal (and in strings that hold exponent-like text, the values are looked at)
    for line in (b'{"x":0.00001}', b'{"x":0.000099}', b'{"t":"1e-5","x":1.5}', b'{"s":"2.0,","x":[0.5]}'):
        assert canonical_object(line) == loads(line) and rfc8785.dumps(loads(line)) == line, line


@given(st.dictionaries(keys.filter(lambda k: k not in ("seq", "prev", "hash")), values, max_size=6))
def test_cut_out_hash_input_equals_the_record_without_hash(body: dict[str, Any]) -> None:
    try:
        record, line = seal_line(body, 9, "f" * 64)
    except ValueError:
        return
    unhashed = unhashed_line(line, record["hash"])
    assert unhashed == canonical({k: v for k, v in record.items() if k != "hash"})
    assert hashlib.sha256(unhashed).hexdigest() == record["hash"]
    vouched = canonical_object(line)
    if vouched is not None:  # what verify's short way hashes: the same bytes, and the object is left whole
        assert canonical_without_hash(vouched) == unhashed
        assert vouched == loads(line)


@given(st.dictionaries(keys.filter(lambda k: k not in ("seq", "prev", "hash")), values, max_size=6))
def test_the_lone_writers_one_pass_seal_equals_the_queued_writers(body: dict[str, Any]) -> None:
    """The lone caller seals in one pass (seal_next), a queued one in two (prepare, then seal): same bytes."""
    try:
        one_pass = seal_next(body, 12, "e" * 64)
    except ValueError:
        with pytest.raises(ValueError):
            prepare(body)
        return
    assert one_pass == prepare(body).seal(12, "e" * 64)
    assert one_pass[1] == canonical(one_pass[0])


def test_a_nested_hash_member_falls_back_to_re_serialising() -> None:
    record, line = seal_line({"a": {"hash": "x"}}, 1, "0" * 64)
    twin = json.loads(line)
    twin["a"]["hash"] = record["hash"]  # the same member text twice: the cut would be ambiguous
    twin_line = canonical(twin)
    assert unhashed_line(twin_line, record["hash"]) is None


def test_prepare_refuses_what_seal_refuses() -> None:
    for bad in ({"seq": 1}, {"x": float("nan")}, {1: "x"}, {"x": object()}):
        with pytest.raises((ValueError, TypeError)):
            prepare(bad)  # type: ignore[arg-type]
    assert loads(prepare({"k": [1, 2.5, "é"]}).seal(1, "0" * 64)[1])["k"] == [1, 2.5, "é"]


# --- verify in ranges (worker processes) gives the same verdict as verify in one pass --------------


@pytest.fixture(scope="module")
def torn_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with torn lines sealed by recovery records, to cut into ranges at every kind of place."""
    path = tmp_path_factory.mktemp("torn") / "audit.jsonl"
    rng = random.Random(7)
    for round_ in range(4):
        with AuditLog(path) as log:
            for i in range(12):
                log.append({"round": round_, "i": i, "pad": "x" * rng.randrange(0, 200)})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - rng.randrange(5, 40)])  # tear the last record
        cp = path.with_name(path.name + ".checkpoints")  # a crash: no checkpoint signed the torn record
        head = log.last_seq
        cp.write_bytes(b"".join(x for x in cp.read_bytes().splitlines(keepends=True) if json.loads(x)["size"] < head))
    AuditLog(path).close()
    assert verify_log(path).ok
    return path


def _verdict(report: Any) -> tuple[Any, ...]:
    return (report.ok, report.problem, report.first_bad_line, report.records, report.head_seq, report.head_hash,
            report.detail, report.file)


def test_ranges_agree_with_one_pass_on_every_single_line_mutation(
    torn_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "MIN_RANGE_BYTES", 1)
    monkeypatch.setattr(verify_module, "RANGES_PER_WORKER", 40)  # cuts at nearly every line
    lines = torn_log.read_bytes().splitlines(keepends=True)
    target = tmp_path / "audit.jsonl"
    rng = random.Random(11)
    cases: list[list[bytes]] = [lines]
    for i in rng.sample(range(len(lines)), 12):
        cases.append(lines[:i] + lines[i + 1 :])  # delete
        edited = list(lines)
        edited[i] = edited[i].replace(b'"i":', b'"i": ', 1) if b'"i":' in edited[i] else b"x" + edited[i]
        cases.append(edited)  # not canonical / not JSON
    cases.append([*lines[:-1], lines[-1].rstrip(b"\n")])  # torn at the very end
    for case in cases:
        target.write_bytes(b"".join(case))
        one = verify_log(target, workers=1)
        ranged = verify_log(target, workers=2)
        assert _verdict(ranged) == _verdict(one), (one, ranged)


# --- verify's short way and the exact way give the same verdict --------------------------------------

edge_strings = st.text() | st.sampled_from(
    ["\u2028", "\u2029", "a\u2028b", "\x00\x1f\x7f", "é\U0001f600", "\ufeff", "\\\"/", "a"]
)
edge_numbers = numbers | st.sampled_from([2**53 - 1, -(2**53) + 1, 1.5, 41.377, 1e-5, 9.9e-5, 1e15 + 0.5, 0.1 + 0.2])
edge_values = st.recursive(
    st.none() | st.booleans() | edge_numbers | edge_strings,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=12,
)
bodies = st.dictionaries(keys.filter(lambda k: k not in ("seq", "prev", "hash")), edge_values, max_size=5)

# Other spellings of the same value (or, for big integers, of a value RFC 8785 writes otherwise): each makes a
# line that is not canonical unless RFC 8785 happens to write it so.
_RESPELL: list[tuple[bytes, Callable[[re.Match[bytes]], bytes]]] = [
    (rb"(?<=[:,\[])(-?\d+)(?=[,\]}])", lambda m: m.group(1) + b".0"),  # an integer as an integral float
    (rb"(?<=[:,\[])(-?\d+)(?=[,\]}])", lambda m: m.group(1) + b"e0"),
    (rb"(?<=[:,\[])(-?\d+)(?=[,\]}])", lambda _: b"9007199254740993"),  # beyond 2**53: loads reads a float
    (rb"(?<=[:,\[])(-?\d+)(?=[,\]}])", lambda _: b"9007199254740992"),  # 2**53 read as a float: RFC 8785 agrees
    (rb"(?<=[:,\[])(-?\d+)(?=[,\]}])", lambda _: b"18446744073709551616"),
    (rb"(?<=[:,\[])0(?=[,\]}])", lambda _: b"-0"),
    (rb"(?<=[:,\[])(-?\d+\.\d+)(?=[,\]}])", lambda m: repr(float(m.group(1))).encode()),  # Python's spelling
    (rb"(?<=[:,\[])(-?\d+\.\d+)(?=[,\]}])", lambda m: b"%.17g" % float(m.group(1))),
    (rb"(?<=[:,\[])(-?\d+(?:\.\d+)?)(?=[,\]}])", lambda m: b"%.3e" % float(m.group(1))),
    (rb"(?<=[:,\[])(-?\d+(?:\.\d+)?)(?=[,\]}])", lambda m: m.group(1) + b"0" if b"." in m.group(1) else m.group(1)),
    ("\u2028".encode(), lambda _: rb"\u2028"),
    (rb"\\u00([01][0-9a-f])", lambda m: rb"\u00" + m.group(1).upper()),
    (rb"\\n", lambda _: rb"\u000a"),
    (rb'"a"', lambda _: rb'"\u0061"'),
    ("é".encode(), lambda _: rb"\u00e9"),
    ("\U0001f600".encode(), lambda _: rb"\ud83d\ude00"),
    (rb"/", lambda _: rb"\/"),
    (rb':"', lambda _: rb': "'),
]


def _forge(line: bytes, digest: str, respell: int, occurrence: int) -> bytes:
    """``line`` with one token spelled otherwise and ``hash`` taken over the new bytes: a line only the
    canonical check can tell from an honest one (the hash and the links are right)."""
    pattern, replace = _RESPELL[respell]
    member = b'"hash":"' + digest.encode() + b'"'
    head, tail = line.split(member)
    matches = [m for m in re.finditer(pattern, tail)]
    if not matches:
        return line
    m = matches[occurrence % len(matches)]
    tail = tail[: m.start()] + replace(m) + tail[m.end() :]
    forged = head + member + tail
    cut = unhashed_line(forged, digest)
    assert cut is not None
    return forged.replace(member, b'"hash":"' + hashlib.sha256(cut).hexdigest().encode() + b'"')


def _exact_way(mp: pytest.MonkeyPatch) -> None:
    """verify with no shortcut: every line read by ``chain.loads`` rules and compared with ``rfc8785`` itself."""
    mp.setattr(verify_module, "canonical_object", lambda _: None)
    mp.setattr(verify_module, "matches_canonical", lambda obj, line, floats_need_care: rfc8785.dumps(obj) == line)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(bodies, st.none() | st.tuples(st.integers(0, len(_RESPELL) - 1), st.integers(0, 5))),
             min_size=1, max_size=4),
    st.booleans(),
)
def test_verify_short_way_and_exact_way_agree(records: list[tuple[dict[str, Any], Any]], torn: bool) -> None:
    """Random records (floats, big integers, unicode, U+2028, escapes), some forged with another spelling of a
    token and a hash over the forged bytes, chained: the verdict is the same with and without the shortcuts."""
    prev, lines = "0" * 64, []
    for seq, (body, respell) in enumerate(records, 1):
        try:
            record, line = seal_line(body, seq, prev)
        except ValueError:
            continue
        if respell is not None:
            line = _forge(line, record["hash"], *respell)
        prev = json.loads(line)["hash"]
        lines.append(line + b"\n")
    if not lines:
        return
    if torn:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(b"".join(lines))
        short = verify_log(path, workers=1)
        with pytest.MonkeyPatch.context() as mp:
            _exact_way(mp)
            exact = verify_log(path, workers=1)
    assert _verdict(short) == _verdict(exact), (short, exact)


def test_the_forged_lines_reach_the_canonical_check() -> None:
    """The property above is not vacuous: forged spellings pass the hash and the links and are caught only as
    not canonical (by both ways), and the honest log passes."""
    body = {"n": 7, "f": 41.377, "s": "a\u2028é/\n", "l": [0, 1.5]}
    for respell in range(len(_RESPELL)):
        record, line = seal_line(body, 1, "0" * 64)
        forged = _forge(line, record["hash"], respell, 0)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "audit.jsonl"
            path.write_bytes(forged + b"\n")
            short = verify_log(path, workers=1)
            with pytest.MonkeyPatch.context() as mp:
                _exact_way(mp)
                exact = verify_log(path, workers=1)
        assert _verdict(short) == _verdict(exact)
        if forged != line and respell != 3:  # 2**53 written as an integer is how RFC 8785 writes that float
            assert short.problem == "not-canonical", (respell, forged, short)


def test_a_record_whose_seq_is_not_a_number_is_a_seq_gap() -> None:
    """A first record with a valid hash and a string seq: reported (it used to stop verify with a TypeError)."""
    first = {"v": 1, "seq": "1", "prev": "0" * 64}
    first["hash"] = hashlib.sha256(canonical(first)).hexdigest()
    second = {"v": 1, "seq": 2, "prev": first["hash"]}
    second["hash"] = hashlib.sha256(canonical(second)).hexdigest()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(canonical(first) + b"\n" + canonical(second) + b"\n")
        report = verify_log(path, workers=1)
    assert (report.ok, report.problem, report.first_bad_line) == (False, "seq-gap", 1)


def test_orjson_writes_rfc8785_digits_near_every_change_of_notation() -> None:
    """What chain._float_literal relies on, where it is likeliest to fail: next to each place where orjson or
    RFC 8785 switches between decimal and exponent form, orjson's decimal form of a non-integral float is
    RFC 8785's."""
    for edge in (1e-7, 1e-6, 1e-5, 1e-4, 1.0, 1e15, 2.0**53, 1e16, 1e17, 1e21):
        values = [edge * (1 + k / 1000) for k in range(-500, 500)]
        down = up = edge
        for _ in range(1000):
            down, up = math.nextafter(down, 0), math.nextafter(up, math.inf)
            values += [down, up]
        for value in values:
            for x in (value, -value):
                written = orjson.dumps(x)
                if b"e" not in written and not x.is_integer():
                    assert written == rfc8785.dumps(x), x
