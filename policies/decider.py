"""The decider: an immutable, loaded policy answering "may this principal call this tool here?".

Why a wrapper rather than a bare ``casbin.Enforcer``: Casbin silently ignores
rules it cannot use (an effect spelled ``Deny``, a misspelled tool name), is
not thread-safe, takes milliseconds per decision once a policy grows, and
reports the rule that decided without saying where it was written. The loader
(loader.py) parses the policy itself with line numbers and rejects what Casbin
would misread; this module decides through an index over the rules that
answers exactly as Casbin would (index.py; a changed matcher falls back to
Casbin behind one lock), and names the ``file:line`` of the deciding rule in
every decision.

A :class:`Policy` is built whole from already-read parts (its rules, bounds and
protected namespaces given at construction, never assigned after); it reads no
file and never changes its answers.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .bounds import DEFAULT_BOUNDS, SubjectBounds
from .bounds_file import BOUNDS_FILE, DEFAULT_PROTECTED, bounds_note
from .casbin_model import build_enforcer, probe
from .errors import PolicyError
from .index import MAX_ROLE_HOPS, RuleIndex, key_prefix
from .names import EVERYONE, NO_NAMESPACE, key_match, request_problem, validate_namespace, validate_principal
from .rules import Rule

__all__ = ["Decision", "EffectiveGrant", "Policy", "pattern_covers", "pattern_meet"]

@dataclass(frozen=True)
class Decision:
    """The answer to one request; ``reason`` is one sentence an assistant can relay."""

    allowed: bool
    rule: Rule | None
    reason: str
    policy_hash: str
    protected: str | None = None  # the protected namespace that refused an otherwise allowed write


@dataclass(frozen=True)
class EffectiveGrant:
    """A p rule as it holds for one principal: only in ``namespaces``, the rule's pattern narrowed by the
    ``g`` lines (``via``, member first) that gave the principal the rule's subject."""

    rule: Rule
    namespaces: str
    via: tuple[Rule, ...]


def pattern_meet(a: str, b: str) -> str | None:
    """The keyMatch pattern matching exactly the names both ``a`` and ``b`` match, or None when none does.

    Patterns are an exact name or one prefix ending in ``*`` (the loader refuses others), so the
    meet is always one of the two.
    """
    pa, pb = key_prefix(a), key_prefix(b)
    if pa is None and pb is None:
        return a if a == b else None
    if pa is None:
        return a if pb is not None and a.startswith(pb) else None
    if pb is None:
        return b if b.startswith(pa) else None
    return a if pa.startswith(pb) else b if pb.startswith(pa) else None


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every name ``inner`` matches is matched by ``outer``."""
    return pattern_meet(outer, inner) == inner


# --------------------------------------------------------------------------- the policy


class Policy:
    """A loaded, checked policy and what decides with it.

    Immutable once built: to reload, load a new Policy and swap it in whole.

    With the shipped matcher (any spacing or parenthesisation of it) decisions
    come from :class:`~opsgate.policies.index.RuleIndex`, which narrows the
    rules by subject, namespace and tool and answers exactly what Casbin's
    ``enforce_ex`` would (see index.py; tests/policies/test_policy_fast.py proves it
    against a plain ``casbin.Enforcer``). A changed matcher falls back to
    Casbin itself, behind one lock: correct, and as slow as Casbin.
    """

    # Casbin caches a role manager per request domain and a node per subject
    # inside it; past this many distinct (principal, namespace) pairs the cache
    # is rebuilt, so untrusted namespaces cannot grow memory without bound.
    # (Casbin fallback only: the index keeps no per-request state.)
    _role_cache_limit: int = 1024
    # Decisions are memoized by the full request (the policy never changes
    # under a Policy object), least recently used first out.
    _memo_limit: int = 4096

    def __init__(
        self,
        model_path: Path,
        model_text: str,
        rules: Iterable[Rule],
        sources: Iterable[Path],
        digest: str,
        *,
        bounds: Mapping[str, SubjectBounds] | None = None,
        protected: tuple[str, ...] = DEFAULT_PROTECTED,
        bounds_path: Path | None = None,
    ) -> None:
        """Build whole from already-read, already-checked parts; use loader.py's :func:`load_policy`."""
        self.model_path = model_path
        self.model_text = model_text
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.sources: tuple[Path, ...] = tuple(sources)
        self.hash = digest
        # Limits on arguments, by the subject a grant names (see bounds.py); read-only.
        self.bounds: Mapping[str, SubjectBounds] = MappingProxyType(dict(bounds or {}))
        # Namespaces where a write needs an allow rule naming the namespace itself (bounds.toml [protected];
        # the cluster's own when no bounds file says otherwise).
        self.protected: tuple[str, ...] = tuple(protected)
        # The bounds file that applies, or None: no argument bounds, default protections (see bounds_note).
        self.bounds_path: Path | None = bounds_path
        self._enforcer, self._matcher_line, shipped_matcher = build_enforcer(model_path, model_text)
        self._grants = tuple(rule for rule in self.rules if rule.ptype == "p")
        links = [rule.fields for rule in self.rules if rule.ptype == "g"]
        self._index = RuleIndex([rule.fields for rule in self._grants], links)
        self._by_fields: dict[tuple[str, ...], Rule] = {}
        self.indexed = shipped_matcher
        """True when decisions come from the index; False when Casbin evaluates a changed matcher."""
        if not shipped_matcher:
            self._load_into_casbin()

        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[str, str, str, str, tuple[str, ...]], Decision] = OrderedDict()
        self._role_cache_keys: set[tuple[str, str]] = set()
        self._witnesses = _witness_namespaces([r.fields[1] for r in self._grants] + [dom for _, _, dom in links])
        self._effective: OrderedDict[str, tuple[EffectiveGrant, ...]] = OrderedDict()
        self._links_by_member: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.ptype == "g":
                self._links_by_member.setdefault(rule.fields[0], []).append(rule)
        self._grants_by_subject: dict[str, list[int]] = {}
        for position, rule in enumerate(self._grants):
            self._grants_by_subject.setdefault(rule.fields[0], []).append(position)
        self._where: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._allows_by_subject: dict[str, list[int]] = {}
        for position, rule in enumerate(self._grants):
            if rule.fields[4] == "allow":
                self._allows_by_subject.setdefault(rule.fields[0], []).append(position)

    def _load_into_casbin(self) -> None:
        """Give the enforcer every rule (only needed when Casbin itself decides)."""
        p_rules: list[list[str]] = []
        g_rules: list[list[str]] = []
        for rule in self.rules:
            self._by_fields.setdefault((rule.ptype, *rule.fields), rule)
            (p_rules if rule.ptype == "p" else g_rules).append(list(rule.fields))
        try:
            if p_rules and not self._enforcer.add_policies(p_rules):
                raise RuntimeError("Casbin refused the p rules")
            if g_rules and not self._enforcer.add_named_grouping_policies("g", g_rules):
                raise RuntimeError("Casbin refused the g rules")
        except Exception as exc:
            raise PolicyError(self.sources[-1], None, f"Casbin cannot load the rules: {exc}") from exc
        probe(self._enforcer, self.model_path, self._matcher_line)

    def __repr__(self) -> str:
        sources = [str(p) for p in self.sources]
        return f"Policy(sources={sources}, rules={len(self.rules)}, hash={self.hash[:12]})"

    def bounds_for(self, subject: str | None) -> SubjectBounds:
        """The bounds of the subject whose rule allowed a call: its own, else :data:`DEFAULT_BOUNDS`.

        Never None, so the bounds that hold for everyone (no url override, no
        storage URI outside the models folder) hold for subjects bounds.toml
        does not name, and for policies with no bounds file at all.
        """
        return self.bounds.get(subject or "", DEFAULT_BOUNDS)

    def bounds_note(self) -> str:
        """One line saying which bounds file applies, if any, and what is protected: for lint, doctor, whoami."""
        return bounds_note(self.bounds_path, self.protected)

    # ----------------------------------------------------------------------- deciding

    def decide(self, principal: str, namespace: str, tool: str, action: str,
               groups: tuple[str, ...] = ()) -> Decision:
        """Decide one request; never raises: any failure is a denial that says why.

        ``groups``: subjects a verified token makes the principal a member of (``group:platform``), as if
        ``g, principal, group, *`` were in the policy: their rules apply, a deny among them wins.
        """
        try:
            key = (principal, namespace, tool, action, groups)
            with self._lock:
                cached = self._memo.get(key)
                if cached is not None:
                    self._memo.move_to_end(key)
                    return cached
            problem = request_problem(principal, namespace, tool, action)
            for group in groups:
                problem = problem or request_problem(group, namespace, tool, action)
            if problem is not None:
                return Decision(False, None, f"denied: invalid request: {problem}", self.hash)
            if self.indexed:
                decision = self._match(principal, namespace, tool, action, groups)
            else:
                with self._lock:
                    decision = self._enforce_all(principal, namespace, tool, action, groups)
            decision = self._protect(decision, namespace, action)
            if not groups:  # the note on where else it may act is worked out for the principal's own grants
                decision = self._with_where(decision, principal, namespace, tool, action)
            with self._lock:
                self._memo[key] = decision
                if len(self._memo) > self._memo_limit:
                    self._memo.popitem(last=False)
            return decision
        except Exception as exc:
            return Decision(False, None, f"denied: policy error ({type(exc).__name__}: {exc})", self.hash)

    def _protect(self, decision: Decision, namespace: str, action: str) -> Decision:
        """A write Casbin allowed in a protected namespace stands only if the allowing rule names it.

        Deny rules cannot express "unless a rule names it" (deny always overrides), so
        protection is this one step after Casbin: ``*`` or ``kube-*`` never reaches
        kube-system; ``p, role:platform, kube-system, deploy, write, allow`` does.
        """
        if not decision.allowed or action != "write" or namespace not in self.protected:
            return decision
        rule = decision.rule
        if rule is not None and rule.fields[1] == namespace:
            return decision
        named = f"{rule.source} allows it only through the pattern {rule.fields[1]!r}" if rule else "no rule names it"
        return Decision(
            False, None,
            f"denied: namespace {namespace} is protected ({self._protected_by()}): a write there needs an allow "
            f"rule that names {namespace} itself; {named}",
            self.hash, protected=namespace,
        )

    def _protected_by(self) -> str:
        return f"{BOUNDS_FILE} [protected]" if self.bounds_path is not None else f"by default, no {BOUNDS_FILE}"

    def decide_uncached(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """:meth:`decide` without the memo: for benchmarks and tests of the matching itself."""
        problem = request_problem(principal, namespace, tool, action)
        if problem is not None:
            return Decision(False, None, f"denied: invalid request: {problem}", self.hash)
        if self.indexed:
            decision = self._protect(self._match(principal, namespace, tool, action), namespace, action)
        else:
            with self._lock:
                decision = self._enforce(principal, namespace, tool, action)
            decision = self._protect(decision, namespace, action)
        return self._with_where(decision, principal, namespace, tool, action)

    def _match(self, principal: str, namespace: str, tool: str, action: str,
               groups: tuple[str, ...] = ()) -> Decision:
        """Decide through the index: the first matching deny, else the last matching allow."""
        first_deny, last_allow = self._index.match(principal, namespace, tool, action, groups)
        if first_deny is not None:
            rule = self._grants[first_deny]
            return Decision(False, rule, f"denied by {rule.source} ({rule.text})", self.hash)
        if last_allow is not None:
            rule = self._grants[last_allow]
            return Decision(True, rule, f"allowed by {rule.source} ({rule.text})", self.hash)
        return self._default_deny(principal, namespace, tool, action)

    def _default_deny(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        where = "outside any namespace" if namespace == NO_NAMESPACE else f"in namespace {namespace}"
        return Decision(
            False,
            None,
            f"denied: no rule allows {principal} to {action} with {tool} {where} (default deny)",
            self.hash,
        )

    def _enforce_all(self, principal: str, namespace: str, tool: str, action: str,
                     groups: tuple[str, ...]) -> Decision:
        """Casbin (lock held) for the principal and each of its groups: a deny rule among them wins, else
        the first allow, else the principal's default deny (the index's answer for the shipped matcher)."""
        decisions = [self._enforce(subject, namespace, tool, action) for subject in (principal, *groups)]
        for decision in decisions:
            if not decision.allowed and decision.rule is not None:
                return decision
        return next((d for d in decisions if d.allowed), decisions[0])

    def _enforce(self, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """Ask Casbin (lock held) and turn its matched rule back into our Rule."""
        if (principal, namespace) not in self._role_cache_keys:
            if len(self._role_cache_keys) >= self._role_cache_limit:
                self._enforcer.build_role_links()  # drops Casbin's per-domain caches
                self._role_cache_keys.clear()
            self._role_cache_keys.add((principal, namespace))
        allowed_raw, explain = self._enforcer.enforce_ex(principal, namespace, tool, action)
        allowed = bool(allowed_raw)
        rule = self._by_fields.get(("p", *(str(f) for f in explain))) if explain else None
        if allowed:
            if rule is None:
                raise RuntimeError(f"Casbin allowed without a known matching rule ({explain!r})")
            return Decision(True, rule, f"allowed by {rule.source} ({rule.text})", self.hash)
        if rule is not None and rule.fields[4] == "deny":
            return Decision(False, rule, f"denied by {rule.source} ({rule.text})", self.hash)
        return self._default_deny(principal, namespace, tool, action)

    # ----------------------------------------------------------------------- explaining

    def roles_of(self, principal: str, namespace: str) -> list[str]:
        """Roles the principal holds in the namespace: assigned, inherited, and role:everyone's.

        Raises ValueError for an invalid principal or namespace.
        """
        validate_principal(principal)
        validate_namespace(namespace)
        roles = self._index.reachable(principal, namespace)
        for role in (EVERYONE, *self._index.reachable(EVERYONE, namespace)):
            if role not in roles:
                roles.append(role)
        return roles

    def grants_of(self, principal: str) -> list[Rule]:
        """Every p rule (allow or deny) that applies to the principal in some namespace, in policy order.

        For a whoami summary. Exact for the shipped matcher: each namespace
        pattern is tried through one representative namespace, and every
        namespace behaves like one of those representatives.
        """
        validate_principal(principal)
        applies: set[int] = set()
        for ns in self._witnesses:
            applies |= self._index.rules_for(self._index.subjects(principal, ns), ns)
        return [self._grants[i] for i in sorted(applies)]

    def may_call_somewhere(self, principal: str, tool: str, action: str, *, namespaced: bool = True,
                           groups: tuple[str, ...] = ()) -> bool:
        """Whether some namespace lets the principal make this call: for filtering tools/list.

        ``namespaced``: the tool targets a namespace (every Kubernetes
        namespace is tried, through one representative per way a namespace can
        match the policy's patterns); otherwise only ``-`` is. Never raises;
        a listing only, every call is still decided. With a changed matcher
        (Casbin deciding) a namespaced tool is always listed.
        """
        try:
            if request_problem(principal, NO_NAMESPACE, tool, action) is not None:
                return False
            if not namespaced:
                return self.decide(principal, NO_NAMESPACE, tool, action, groups).allowed
            if not self.indexed:
                return True
            index = self._index
            subjects = {principal, EVERYONE, *index.reachable_anywhere(principal), *index.reachable_anywhere(EVERYONE)}
            for group in groups:
                subjects |= {group, *index.reachable_anywhere(group)}
            tried: set[str] = set()
            for subject in subjects:
                for position in self._allows_by_subject.get(subject, ()):
                    _, dom, obj, act, _ = self._grants[position].fields
                    if act not in ("*", action) or not key_match(tool, obj):
                        continue
                    for ns in self._witnesses_matching(dom):
                        if ns == NO_NAMESPACE or ns in tried:
                            continue
                        tried.add(ns)
                        first_deny, last_allow = index.match(principal, ns, tool, action, groups)
                        if first_deny is None and last_allow is not None and not (
                            action == "write" and ns in self.protected and self._grants[last_allow].fields[1] != ns
                        ):
                            return True
            return False
        except Exception:
            return False

    def _witnesses_matching(self, pattern: str) -> list[str]:
        """The representative namespaces a keyMatch pattern matches (witnesses are sorted)."""
        star = pattern.find("*")
        witnesses = self._witnesses
        if star == -1:
            at = bisect.bisect_left(witnesses, pattern)
            return [pattern] if at < len(witnesses) and witnesses[at] == pattern else []
        prefix = pattern[:star]
        start = bisect.bisect_left(witnesses, prefix)
        end = bisect.bisect_left(witnesses, prefix + "\U0010ffff")
        return list(witnesses[start:end])

    def effective_grants(self, principal: str) -> tuple[EffectiveGrant, ...]:
        """Every p rule that holds for the principal somewhere, each with the namespaces it holds in.

        ``g, alice, role:operator, team-*`` and ``p, role:operator, *, *, write, allow`` give alice
        that write in ``team-*``, not in ``*``: a rule holds where its own pattern and every link of
        the role chain that reaches its subject all match (Casbin checks each link against the
        request's namespace). role:everyone's rules and roles hold for every principal. Policy order;
        one entry per rule and distinct namespace pattern. Raises ValueError for an invalid principal.
        """
        validate_principal(principal)
        with self._lock:
            cached = self._effective.get(principal)
        if cached is not None:
            return cached
        by_member, by_subject = self._links_by_member, self._grants_by_subject
        held: dict[str, list[tuple[str, tuple[Rule, ...]]]] = {}
        frontier: list[tuple[str, str, tuple[Rule, ...]]] = [(principal, "*", ()), (EVERYONE, "*", ())]
        for hop in range(MAX_ROLE_HOPS + 1):
            following: list[tuple[str, str, tuple[Rule, ...]]] = []
            for subject, pattern, chain in frontier:
                known = held.setdefault(subject, [])
                if any(pattern_covers(other, pattern) for other, _ in known):
                    continue
                known.append((pattern, chain))
                if hop == MAX_ROLE_HOPS:
                    continue
                for link in by_member.get(subject, ()):
                    meet = pattern_meet(pattern, link.fields[2])
                    if meet is not None:
                        following.append((link.fields[1], meet, (*chain, link)))
            frontier = following
        found: dict[int, list[EffectiveGrant]] = {}
        for subject, holdings in held.items():
            for pattern, chain in holdings:
                for position in by_subject.get(subject, ()):
                    rule = self._grants[position]
                    meet = pattern_meet(pattern, rule.fields[1])
                    if meet is None:
                        continue
                    entries = found.setdefault(position, [])
                    if any(pattern_covers(e.namespaces, meet) for e in entries):
                        continue
                    entries[:] = [e for e in entries if not pattern_covers(meet, e.namespaces)]
                    entries.append(EffectiveGrant(rule, meet, chain))
        result = tuple(grant for position in sorted(found) for grant in found[position])
        with self._lock:
            self._effective[principal] = result
            if len(self._effective) > 256:
                self._effective.popitem(last=False)
        return result

    def allowed_in(self, principal: str, tool: str, action: str) -> list[str]:
        """Where a namespaced call would be allowed, as patterns, each with the namespaces a deny or a
        protection cuts out of it (``team-* (except team-secret)``); empty when nowhere. For denials."""
        grants = [
            g for g in self.effective_grants(principal)
            if g.rule.fields[3] in ("*", action) and key_match(tool, g.rule.fields[2])
        ]
        denies = [g.namespaces for g in grants if g.rule.fields[4] == "deny"]
        places: list[tuple[str, list[str]]] = []
        for grant in grants:
            where = grant.namespaces
            if grant.rule.fields[4] != "allow" or where == NO_NAMESPACE:
                continue
            if any(pattern_covers(deny, where) for deny in denies):
                continue
            cut = [deny for deny in denies if deny != NO_NAMESPACE and pattern_meet(deny, where) is not None]
            if action == "write":
                shielded = [ns for ns in self.protected if key_match(ns, where) and grant.rule.fields[1] != ns]
                if where in shielded:
                    continue
                cut += [ns for ns in shielded if ns not in cut]
            places.append((where, cut))
        shown: list[str] = []
        for where, cut in places:
            if any(other != where and not others_cut and pattern_covers(other, where) for other, others_cut in places):
                continue
            text = f"{where} (except {', '.join(sorted(set(cut)))})" if cut else where
            if text not in shown:
                shown.append(text)
        return shown

    def _with_where(self, decision: Decision, principal: str, namespace: str, tool: str, action: str) -> Decision:
        """A denial of a namespaced call says where the principal may make it, if anywhere (whoami's grants
        say the rest). Invalid requests and calls outside any namespace are left as they are."""
        if decision.allowed or namespace == NO_NAMESPACE or decision.reason.startswith("denied: invalid request"):
            return decision
        key = (principal, tool, action)
        with self._lock:
            note = self._where.get(key)
        if note is None:
            places = self.allowed_in(principal, tool, action)
            note = (
                f"{principal} may {action} with {tool} in: {', '.join(places)}" if places
                else f"{principal} may not {action} with {tool} in any namespace"
            )
            with self._lock:
                self._where[key] = note
                if len(self._where) > 1024:
                    self._where.popitem(last=False)
        return dataclasses.replace(decision, reason=f"{decision.reason}; {note}")

    def granted_via(self, principal: str, namespace: str, rule: Rule) -> tuple[Rule, ...]:
        """The ``g`` lines (member first) that gave the principal ``rule``'s subject in ``namespace``; empty
        when the rule names the principal itself or role:everyone. For decision records: an auditor sees
        which grant let alice act, not only the role's rule (issue 15 item 5)."""
        for grant in self.effective_grants(principal):
            if grant.rule == rule and pattern_covers(grant.namespaces, namespace):
                return grant.via
        return ()

    def subjects_of(self, principal: str, namespace: str) -> set[str]:
        """Every subject whose rules apply to the principal in the namespace (itself, its roles, everyone's)."""
        return self._index.subjects(principal, namespace)


def _witness_namespaces(patterns: Iterable[str]) -> tuple[str, ...]:
    """One namespace for each way a namespace can match the given keyMatch patterns.

    A pattern is an exact name or a prefix (``team-*``). A namespace that is
    not one of the exact names matches exactly the prefixes it starts with, so
    it behaves like ``longest-matching-prefix + "\\0"`` ("\\0" extends no
    pattern); ``"\\0"`` alone stands for a namespace no prefix matches.
    """
    exact: set[str] = set()
    prefixes: set[str] = set()
    for pattern in patterns:
        star = pattern.find("*")
        if star == -1:
            exact.add(pattern)
        else:
            prefixes.add(pattern[:star])
    return tuple(sorted(exact | {p + "\0" for p in prefixes} | {"\0"}))
