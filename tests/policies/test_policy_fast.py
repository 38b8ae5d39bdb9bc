"""The fast path (the rule index) against a plain ``casbin.Enforcer`` built from the same files.

Every test here compares opsgate's decision with what PyCasbin itself answers
for the same model and CSV: same allow/deny, same deciding rule
(``enforce_ex``), on random policies and fuzzed requests, before and after
a reload, and on a generated policy of realistic size.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import casbin
import pytest
from casbin.util import key_match_func
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.policy_bench import TOOLS, generate_policy, generate_requests
from opsgate.policies import EVERYONE, SHIPPED_DIR, Policy, PolicyError, default_policy, load_policy
from opsgate.policies.casbin_model import SHIPPED_MATCHER, build_enforcer, casbin_enforcer, shipped_model_text
from opsgate.policies.loader import with_rules
from opsgate.policies.names import key_match, validate_namespace, validate_principal

MODEL = SHIPPED_DIR / "model.conf"
Request = tuple[str, str, str, str]


def plain(csv: Path, model: Path = MODEL) -> casbin.Enforcer:
    """PyCasbin as documented: its own file adapter, keyMatch for the g domain."""
    e = casbin.Enforcer(str(model), str(csv))
    e.add_named_domain_matching_func("g", key_match_func)
    return e


def is_valid(req: Request) -> bool:
    principal, namespace, tool, action = req
    try:
        validate_principal(principal)
        validate_namespace(namespace)
    except ValueError:
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tool)) and action in ("read", "write")


def assert_agrees(ours: Policy, theirs: casbin.Enforcer, requests: Iterable[Request]) -> int:
    """Same decision and deciding rule for valid requests; never an allow Casbin denies. Returns allows."""
    allows = 0
    for req in requests:
        decision = ours.decide(*req)
        allowed, explain = theirs.enforce_ex(*req)
        if decision.protected is not None:  # the step after Casbin: protected namespaces (on by default)
            assert allowed and req[3] == "write" and req[1] in ours.protected, (req, decision)
            assert ours.decide_uncached(*req) == decision
            continue
        if decision.allowed:
            assert allowed, (req, decision)  # never allow what Casbin denies
            allows += 1
        if not is_valid(req):
            assert not decision.allowed
            assert decision.reason.startswith("denied: invalid request: ")
            continue
        assert decision.allowed == allowed, (req, decision, explain)
        if decision.rule is None:
            assert "default deny" in decision.reason, (req, decision)
            assert explain == [], (req, explain)  # no rule matched at all
        else:
            assert list(decision.rule.fields) == explain, (req, decision, explain)
        assert ours.decide_uncached(*req) == decision
    return allows


# --------------------------------------------------------------------------- which path decides


def test_shipped_matcher_is_indexed_whatever_its_spacing(tmp_path: Path) -> None:
    assert default_policy().indexed
    text = MODEL.read_text()
    assert SHIPPED_MATCHER in text
    respaced = SHIPPED_MATCHER.replace(" ", "").replace("&&", " &&\t ").replace("||", "  || ")
    (tmp_path / "model.conf").write_text(text.replace(SHIPPED_MATCHER, f"(({respaced}))"))
    (tmp_path / "policy.csv").write_text("p, role:everyone, *, whoami, read, allow\n")
    assert load_policy(tmp_path).indexed
    glued = text.replace(SHIPPED_MATCHER, SHIPPED_MATCHER.replace(" && ", "&&"))
    (tmp_path / "model.conf").write_text(glued)
    with pytest.raises(PolicyError, match=r"put spaces around && and \|\|"):
        load_policy(tmp_path)


def test_the_shipped_model_is_taken_as_known_good_only_because_casbin_agrees() -> None:
    """build_enforcer skips Casbin for the shipped model text (serve's start does not import it): the full
    path through Casbin must give that text the same answer, and an Enforcer that loads and runs."""
    text = shipped_model_text()
    assert text == MODEL.read_text()
    fast, line, shipped = build_enforcer(MODEL, text)
    enforcer, full_line, full_shipped = casbin_enforcer(MODEL, text)
    assert (fast, line, shipped) == (None, full_line, True) and full_shipped
    assert enforcer.enforce_ex("alice", "team-a", "deploy", "write")[0] is False
    changed = text + "\n"  # any other text, even one that means the same, goes through Casbin
    assert build_enforcer(MODEL, changed)[0] is not None


@given(st.text(alphabet="ab-*", max_size=6), st.text(alphabet="ab-*", max_size=6))
def test_our_key_match_is_casbins(key: str, pattern: str) -> None:
    assert key_match(key, pattern) is key_match_func(key, pattern)


@pytest.mark.parametrize(
    "matcher",
    [
        # a different meaning: no role:everyone
        'g(r.sub, p.sub, r.dom) && keyMatch(r.dom, p.dom) && keyMatch(r.obj, p.obj) '
        '&& (p.act == "*" || r.act == p.act)',
        # the same meaning, written differently: Casbin decides (we only index the exact tree)
        '(g("role:everyone", p.sub, r.dom) || g(r.sub, p.sub, r.dom)) && keyMatch(r.dom, p.dom) '
        '&& keyMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)',
        # role:everyone spelled differently
        '(g(r.sub, p.sub, r.dom) || g("role: everyone", p.sub, r.dom)) && keyMatch(r.dom, p.dom) '
        '&& keyMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)',
    ],
)
def test_changed_matcher_falls_back_to_casbin_and_agrees(tmp_path: Path, matcher: str) -> None:
    (tmp_path / "model.conf").write_text(MODEL.read_text().replace(SHIPPED_MATCHER, matcher))
    csv = tmp_path / "policy.csv"
    csv.write_text(
        "p, role:viewer, *, *, read, allow\ng, role:everyone, role:viewer, *\n"
        "p, role:op, team-*, *, write, allow\ng, alice, role:op, team-*\n"
        "p, role:everyone, kube-system, *, write, deny\n"
    )
    policy = load_policy(tmp_path)
    assert not policy.indexed
    requests = [
        (who, ns, tool, act)
        for who in ("alice", "bob")
        for ns in ("team-a", "prod", "kube-system", "-")
        for tool, act in (("deploy", "write"), ("list_workloads", "read"))
    ]
    assert_agrees(policy, plain(csv, tmp_path / "model.conf"), requests)


# --------------------------------------------------------------------------- random policies, fuzzed requests

# Pools ordered so that Hypothesis's favourite (first, simplest) values match each other.
SUBJECTS = [EVERYONE, "alice", "role:a", "role:b", "role:c", "bob"]
MEMBERS = ["alice", EVERYONE, "role:a", "bob", "carol", "role:b", "role:c"]
ROLES = ["role:a", "role:b", "role:c", "role:d", EVERYONE]
NS_PATTERNS = ["*", "team-*", "team-a", "-", "prod", "kube-system", "t*", "team-a*", "p*"]
TOOL_PATTERNS = ["*", "deploy", "s*", "scale", "whoami", "sc*", "de*", "list_*"]
PRINCIPALS = ["alice", "bob", "carol", "dave"]
NAMESPACES = ["team-a", "prod", "team-b", "-", "t", "team-", "kube-system", "staging", "team-ab", "p"]
REQ_TOOLS = ["deploy", "scale", "whoami", "status", "list_workloads", "sc", "s"]


def mostly(common: st.SearchStrategy[str], rare: st.SearchStrategy[str], weight: int = 4) -> st.SearchStrategy[str]:
    """``common`` about weight/(weight+1) of the time: random names alone would never match a rule."""
    # (one_of picks its branches about evenly whatever is repeated in it, so choose explicitly)
    return st.tuples(st.integers(0, weight), common, rare).map(lambda t: t[2] if t[0] == weight else t[1])


name = st.from_regex(r"\A[a-z0-9](?:[-a-z0-9]{0,6}[a-z0-9])?\Z")
ns_pattern = mostly(st.sampled_from(NS_PATTERNS), st.one_of(name, name.map(lambda n: n + "*")))
tool_pattern = mostly(st.sampled_from(TOOL_PATTERNS), st.from_regex(r"\A[a-z_]{1,6}\*?\Z"))
p_rules = st.tuples(
    st.sampled_from(SUBJECTS),
    ns_pattern,
    tool_pattern,
    st.sampled_from(["*", "write", "read"]),
    st.sampled_from(["allow", "allow", "deny"]),
).map(lambda t: "p, " + ", ".join(t))
g_rules = st.tuples(st.sampled_from(MEMBERS), st.sampled_from(ROLES), ns_pattern).map(
    lambda t: "g, " + ", ".join(t)
)
policies = st.lists(st.one_of(p_rules, g_rules), min_size=4, max_size=25, unique=True)

fuzzed_principal = mostly(
    st.sampled_from(PRINCIPALS), st.one_of(st.sampled_from(["role:a", "a*", "a,b", "", "Alice"]), st.text(max_size=10))
)
fuzzed_namespace = mostly(st.sampled_from(NAMESPACES), st.one_of(name, st.text(max_size=8), st.just("team-*")))
fuzzed_tool = mostly(
    st.sampled_from(REQ_TOOLS), st.one_of(st.from_regex(r"\A[a-z_*]{1,8}\Z"), st.text(max_size=6))
)
fuzzed_action = mostly(st.sampled_from(["read", "write"]), st.sampled_from(["*", "Write", ""]))
requests = st.tuples(fuzzed_principal, fuzzed_namespace, fuzzed_tool, fuzzed_action)


def instances(pattern: str) -> st.SearchStrategy[str]:
    """Names a keyMatch pattern matches (and, through the suffix, some near misses)."""
    star = pattern.find("*")
    if star == -1:
        return st.just(pattern)
    return st.tuples(st.just(pattern[:star]), st.from_regex(r"\A[-a-z0-9]{0,3}\Z")).map("".join)


def aimed(lines: list[str]) -> st.SearchStrategy[Request]:
    """Requests built to meet one rule of the policy: its subject (or a member of it), an
    instance of its patterns, its action; so that many requests match and deny/allow interplay."""
    fields = [tuple(f.strip() for f in line.split(",")[1:]) for line in lines]
    grants = [f for f in fields if len(f) == 5]
    members: dict[str, list[str]] = {}
    for f in fields:
        if len(f) == 3:
            members.setdefault(f[1], []).append(f[0])
    if not grants:
        return st.tuples(st.sampled_from(PRINCIPALS), st.just("-"), st.just("deploy"), st.just("read"))

    def holders(subject: str) -> list[str]:
        found = [subject] if not subject.startswith("role:") else []
        frontier = [subject]
        for _ in range(3):
            frontier = [m for role in frontier for m in members.get(role, [])]
            found += [m for m in frontier if not m.startswith("role:")]
        return found or PRINCIPALS

    def request(rule: tuple[str, ...]) -> st.SearchStrategy[Request]:
        sub, dom, obj, act, _ = rule
        return st.tuples(
            st.sampled_from(holders(sub)),
            instances(dom),
            instances(obj),
            st.sampled_from(["read", "write"] if act == "*" else [act]),
        )

    return st.sampled_from(grants).flatmap(request)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=policies, data=st.data())
def test_index_agrees_with_plain_casbin_on_fuzzed_requests(lines: list[str], data: st.DataObject) -> None:
    reqs = data.draw(st.lists(st.one_of(aimed(lines), requests), min_size=10, max_size=40))
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "policy.csv"
        csv.write_text("# generated\n" + "\n".join(lines) + "\n")
        ours = load_policy(csv)
        assert ours.indexed
        assert_agrees(ours, plain(csv), reqs)


def _mutate(lines: list[str], extra: list[str], seed: int) -> list[str]:
    """A changed policy: some lines dropped, some added, the order shuffled a little."""
    rng = random.Random(seed)
    kept = [line for line in lines if rng.random() > 0.3]
    for line in extra:
        if line not in kept:
            kept.insert(rng.randint(0, len(kept)), line)
    if len(kept) > 2 and rng.random() < 0.5:
        i, j = rng.randrange(len(kept)), rng.randrange(len(kept))
        kept[i], kept[j] = kept[j], kept[i]
    return kept


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=policies,
    added=st.lists(st.one_of(p_rules, g_rules), max_size=6, unique=True),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_reload_agrees_with_plain_casbin(
    before: list[str], added: list[str], seed: int, data: st.DataObject
) -> None:
    """A reload is a new Policy from the changed files: it answers as Casbin does on the new files,
    and the old Policy (still serving until the swap) keeps answering for the old ones."""
    reqs = data.draw(st.lists(st.one_of(aimed(before + added), requests), min_size=10, max_size=30))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model.conf").write_bytes(MODEL.read_bytes())
        csv = folder / "policy.csv"
        csv.write_text("\n".join(before) + "\n")
        old = load_policy(folder)
        old_casbin = plain(csv)
        assert_agrees(old, old_casbin, reqs)  # fills old's memo

        csv.write_text("\n".join(_mutate(before, added, seed)) + "\n")
        new = load_policy(folder)
        assert_agrees(new, plain(csv), reqs)
        assert_agrees(old, old_casbin, reqs)  # memo hits: still the old answers
        if csv.read_bytes() != "\n".join(before).encode() + b"\n":
            assert new.hash != old.hash


def test_role_chains_at_and_past_casbins_hop_limit(tmp_path: Path) -> None:
    chain = ["g, alice, role:r0, *"] + [f"g, role:r{i}, role:r{i + 1}, *" for i in range(12)]
    grants = [f"p, role:r{i}, ns-{i}, deploy, write, allow" for i in range(13)]
    csv = tmp_path / "policy.csv"
    csv.write_text("\n".join(chain + grants) + "\n")
    ours = load_policy(csv)
    reqs = [("alice", f"ns-{i}", "deploy", "write") for i in range(13)]
    allows = assert_agrees(ours, plain(csv), reqs)
    assert allows == 9  # role:r0 .. role:r8: nine hops from alice


def test_generated_policy_of_1000_rules_agrees_with_plain_casbin(tmp_path: Path) -> None:
    text, principals, teams = generate_policy(1000, seed=5)
    csv = tmp_path / "policy.csv"
    csv.write_text(text)
    ours = load_policy(csv, known_tools=TOOLS)
    assert len(ours.rules) == 1000
    theirs = plain(csv)
    reqs = generate_requests(principals, teams, 1500, seed=6)
    allows = assert_agrees(ours, theirs, reqs)
    assert 0.1 < allows / len(reqs) < 0.95  # a real mix of answers


# --------------------------------------------------------------------------- memo and speed


def test_memo_is_bounded_and_keyed_by_the_full_request(tmp_path: Path) -> None:
    csv = tmp_path / "policy.csv"
    csv.write_text(
        "p, role:viewer, *, *, read, allow\ng, role:everyone, role:viewer, *\n"
        "p, role:op, team-*, *, write, allow\ng, alice, role:op, team-*\n"
    )
    policy = load_policy(csv)
    policy._memo_limit = 16
    for i in range(100):
        assert policy.decide("alice", f"team-{i}", "deploy", "write").allowed
        assert not policy.decide("alice", f"prod-{i}", "deploy", "write").allowed
        assert policy.decide("alice", f"prod-{i}", "deploy", "read").allowed  # differs only in the verb
    assert len(policy._memo) <= 16
    first = policy.decide("bob", "team-a", "deploy", "write")
    assert policy.decide("bob", "team-a", "deploy", "write") is first  # a hit


def test_10000_rules_load_and_decide_fast(tmp_path: Path) -> None:
    """Not a benchmark (bench/policy_bench.py is): a guard against losing the index or the linear load."""
    text, principals, teams = generate_policy(10_000)
    csv = tmp_path / "policy.csv"
    csv.write_text(text)
    started = time.perf_counter()
    policy = load_policy(csv, known_tools=TOOLS)
    assert time.perf_counter() - started < 3.0
    reqs = generate_requests(principals, teams, 2000, seed=9)
    started = time.perf_counter()
    for req in reqs:
        policy.decide_uncached(*req)
    assert (time.perf_counter() - started) / len(reqs) < 1e-3  # ~5 us here; plain Casbin ~26 ms


# --------------------------------------------------------------------------- listing: allowed somewhere


def realizations(lines: list[str]) -> set[str]:
    """Real namespaces standing for every way a namespace can match the policy's patterns."""
    found = {"zq9"}
    for line in lines:
        fields = [f.strip() for f in line.split(",")[1:]]
        pattern = fields[1] if len(fields) == 5 else fields[2]
        star = pattern.find("*")
        found.add(pattern if star == -1 else pattern[:star] + "zq9")
        if star != -1:
            found.add(pattern[:star] + "zq9-zq9")
    return {ns for ns in found if ns != "-"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=policies)
def test_may_call_somewhere_is_exact(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "policy.csv"
        csv.write_text("\n".join(lines) + "\n")
        policy = load_policy(csv)
        namespaces = realizations(lines)
        for principal in PRINCIPALS:
            for tool in ("deploy", "scale", "whoami", "status"):
                for action in ("read", "write"):
                    somewhere = any(policy.decide(principal, ns, tool, action).allowed for ns in namespaces)
                    assert policy.may_call_somewhere(principal, tool, action) == somewhere, (principal, tool, action)
                    assert policy.may_call_somewhere(principal, tool, action, namespaced=False) == (
                        policy.decide(principal, "-", tool, action).allowed
                    )


def test_may_call_somewhere_for_the_shipped_roles() -> None:
    policy = with_rules(default_policy(), [(1, "g, alice, role:operator, team-*")], Path("fixture.table"))
    assert policy.may_call_somewhere("alice", "deploy", "write")
    assert not policy.may_call_somewhere("nobody", "deploy", "write")
    assert policy.may_call_somewhere("nobody", "list_workloads", "read")
    assert policy.may_call_somewhere("nobody", "whoami", "read", namespaced=False)
    assert not policy.may_call_somewhere("role:admin", "deploy", "write")  # not a principal
