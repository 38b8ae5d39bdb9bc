"""``opsgate audit report``: the log for a time range as one self-contained HTML page, for a security reviewer.

The verify result first, then calls over time by decision (a stacked bar chart),
top principals and tools, every denial (policy, bound, rate limit) with its rule,
every invalid call with the rule its arguments broke, and every write with its
before/after. The page has inline CSS and SVG we draw here, and no script and no
external URL (its Content-Security-Policy allows neither), so it opens the same
offline, in a mail, or in an archive years later.

Every text from a record is outside text (principals, client names, reasons that
quote arguments, cluster messages): it goes through :func:`html.escape` and
nowhere else, so ``<script>`` in a record renders as text. The page is assembled
from small functions and one :class:`string.Template` (no template engine: the
page is small, and escaping is done once, here, by :func:`_e`). Pure: the caller
reads the log and writes the file.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from string import Template
from typing import Any

from .query import Call, denial_kind, record_time

__all__ = ["MAX_ROWS", "build_report"]

MAX_ROWS = 2000
"""Rows at most in each list (denials, invalid calls, writes): beyond that the page says how many more."""
TOP = 10
EFFECTS = ("allow", "deny", "invalid")
COLOURS = {"allow": "#3a8d4f", "deny": "#c0392b", "invalid": "#d68910"}
_STEPS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
"""Bar widths in seconds: the narrowest that fits the range in ``_MAX_BARS`` bars is taken."""
_MAX_SLOTS = 100_000
"""Time slots counted at most: past that, counts are merged into slots 60 (then 24) times wider."""
_MAX_BARS = 60


def _e(value: Any) -> str:
    """Any value as escaped HTML text: strings as they are, anything else as compact JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return html.escape(text, quote=True)


def _short(value: Any) -> str:
    return value.replace("T", " ")[:19] if isinstance(value, str) else "-"


@dataclass
class _Tally:
    """What the page shows, gathered in one pass over the calls."""

    slots: dict[int, Counter[str]] = field(default_factory=dict)  # time // resolution -> counts by decision
    resolution: int = 1  # seconds a slot spans: 1, then 60, 3600, 86400 as a long log needs
    principals: dict[str, Counter[str]] = field(default_factory=dict)
    tools: dict[str, Counter[str]] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    denials: list[Call] = field(default_factory=list)
    invalid: list[Call] = field(default_factory=list)
    writes: list[Call] = field(default_factory=list)
    more: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    errors: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def keep(self, rows: list[Call], name: str, call: Call) -> None:
        if len(rows) < MAX_ROWS:
            rows.append(call)
        else:
            self.more[name] += 1

    def coarsen(self) -> None:
        """Merge the slots into slots 60 times (from an hour on, 24 times) wider: memory stays bounded."""
        wider = self.resolution * (24 if self.resolution >= 3600 else 60)
        merged: dict[int, Counter[str]] = {}
        for slot, counts in self.slots.items():
            merged.setdefault(slot * self.resolution // wider, Counter()).update(counts)
        self.slots, self.resolution = merged, wider

    def add(self, call: Call) -> None:
        if not call.is_call:
            self.events[str(call.first.record.get("stage"))] += 1
            return
        effect = call.effect or "-"
        when = record_time(call.first.record)
        if when is not None:
            self.first = when if self.first is None or when < self.first else self.first
            self.last = when if self.last is None or when > self.last else self.last
            slot = int(when.timestamp() // self.resolution)
            self.slots.setdefault(slot, Counter())[effect] += 1
            if len(self.slots) > _MAX_SLOTS:
                self.coarsen()
        self.calls += 1
        self.errors += call.status == "error"
        self.principals.setdefault(str(call.get("principal") or "-"), Counter())[effect] += 1
        self.tools.setdefault(str(call.get("tool") or "-"), Counter())[effect] += 1
        if effect == "deny":
            self.keep(self.denials, "denials", call)
        elif effect == "invalid":
            self.keep(self.invalid, "invalid", call)
        elif effect == "allow" and call.get("verb") == "write":
            self.keep(self.writes, "writes", call)


# --- charts (inline SVG) --------------------------------------------------------------------------


def _buckets(tally: _Tally) -> tuple[int, list[tuple[datetime, Counter[str]]]]:
    """The counted slots regrouped into at most ``_MAX_BARS`` bars of a round width (seconds)."""
    if not tally.slots:
        return _STEPS[0], []
    res = tally.resolution
    low, high = min(tally.slots) * res, max(tally.slots) * res
    step = next((s for s in _STEPS if s >= res and (high - low) // s < _MAX_BARS), _STEPS[-1])
    start = low - low % step
    bars = [(datetime.fromtimestamp(t, UTC), Counter[str]()) for t in range(start, high + 1, step)]
    for slot, counts in tally.slots.items():
        bars[(slot * res - start) // step][1].update(counts)
    return step, bars


def _time_chart(tally: _Tally) -> str:
    step, bars = _buckets(tally)
    if not bars:
        return "<p>No calls in this range.</p>"
    width, height, left, bottom = 900, 220, 40, 30
    shape = "%Y-%m-%d %H:%M:%S" if step < 60 else "%Y-%m-%d %H:%M"
    peak = max(sum(c.values()) for _, c in bars) or 1
    slot = min((width - left) / len(bars), 48.0)
    shapes = []
    for index, (when, counts) in enumerate(bars):
        y = float(height - bottom)
        for effect in EFFECTS:
            n = counts.get(effect, 0)
            if not n:
                continue
            h = (height - bottom - 10) * n / peak
            y -= h
            shapes.append(
                f'<rect class="bar-{effect}" x="{left + index * slot + 1:.1f}" y="{y:.1f}" '
                f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}" fill="{COLOURS[effect]}">'
                f"<title>{_e(when.strftime(shape))} {effect}: {n}</title></rect>"
            )
    end = max(left + len(bars) * slot, left + 320.0)  # room for both time labels
    labels = [
        f'<text x="{left}" y="{height - 8}" class="axis">{_e(bars[0][0].strftime(shape))}</text>',
        f'<text x="{end:.1f}" y="{height - 8}" class="axis" text-anchor="end">'
        f"{_e((bars[-1][0] + timedelta(seconds=step)).strftime(shape))}</text>",
        f'<text x="{left - 6}" y="18" class="axis" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" class="axis" text-anchor="end">0</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{end:.1f}" y2="{height - bottom}" stroke="#888"/>',
    ]
    per = (f"{step} s" if step < 60 else f"{step // 60} min" if step < 3600 else f"{step // 3600} h" if step < 86400
           else f"{step // 86400} d")
    return (
        f'<svg id="calls-over-time" role="img" aria-label="calls over time by decision" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(shapes + labels)
        + f"</svg><p class=\"legend\">one bar per {per}: {_legend()}</p>"
    )


def _legend() -> str:
    return " ".join(f'<span class="swatch" style="background:{COLOURS[e]}"></span>{e}' for e in EFFECTS)


def _bar(counts: Counter[str], peak: int) -> str:
    """A small stacked horizontal bar for a table row."""
    width, x, parts = 240, 0.0, []
    for effect in EFFECTS:
        n = counts.get(effect, 0)
        if n:
            w = width * n / max(peak, 1)
            parts.append(f'<rect x="{x:.1f}" y="2" width="{w:.1f}" height="12" fill="{COLOURS[effect]}"/>')
            x += w
    return f'<svg width="{width}" height="16" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'


# --- tables ---------------------------------------------------------------------------------------


def _table(table_id: str, header: list[str], rows: Iterable[list[str]], empty: str) -> str:
    """A table whose cells are HTML already (each made with :func:`_e` or our own markup)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p id="{table_id}" class="none">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _top(table_id: str, title: str, groups: dict[str, Counter[str]]) -> str:
    ranked = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:TOP]
    peak = max((sum(c.values()) for _, c in ranked), default=1)
    rows = [[_e(name), str(sum(c.values())), *(str(c.get(e, 0)) for e in EFFECTS), _bar(c, peak)]
            for name, c in ranked]
    return _table(table_id, [title, "calls", *EFFECTS, ""], rows, "none")


def _object(call: Call) -> str:
    ref = call.get("object")
    if isinstance(ref, dict):
        return "/".join(str(ref[k]) for k in ("namespace", "kind", "name") if ref.get(k))
    return str(call.get("namespace") or "-")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _decision(call: Call) -> dict[str, Any]:
    return _dict(call.decision.record.get("decision") if call.decision else None)


def _who(call: Call) -> list[str]:
    return [_e(_short(call.first.record.get("time"))), _e(call.get("principal") or "-"), _e(call.get("tool") or "-"),
            _e(_object(call))]


def _denial_row(call: Call) -> list[str]:
    decision = _decision(call)
    rule = decision.get("rule") or "(no rule allows it: default deny)"
    where = f" <small>{_e(decision['source'])}</small>" if decision.get("source") else ""
    kind = denial_kind(decision)
    return [*_who(call), _e(kind), _e(decision.get("bound") or "-"), _e(rule) + where, _e(decision.get("reason")),
            f"<code>{_e((call.call_id or '')[:12])}</code>"]


def _invalid_row(call: Call) -> list[str]:
    errors = _decision(call).get("errors")
    broken = "; ".join(f"{e.get('field')}: {e.get('rule')}" for e in errors if isinstance(e, dict)) \
        if isinstance(errors, list) else "-"
    return [*_who(call), _e(broken), f"<code>{_e((call.call_id or '')[:12])}</code>"]


def _changes(result: dict[str, Any]) -> str:
    """A write's before/after, as its outcome records it: replicas and each field it touched."""
    changes = result.get("changes")
    items: list[tuple[Any, Any, Any]] = [
        (c.get("path"), c.get("before"), c.get("after"))
        for c in (changes if isinstance(changes, list) else []) if isinstance(c, dict)
    ]
    touched = {path for path, _, _ in items}
    for key in ("replicas", "min_replicas", "max_replicas"):
        value = result.get(key)
        if key not in touched and isinstance(value, dict) and ("before" in value or "after" in value):
            items.append((key, value.get("before"), value.get("after")))
    if "from_revision" in result or "to_revision" in result:
        items.append(("revision", result.get("from_revision"), result.get("to_revision")))
    if not items:
        return "-"

    def shown(v: Any) -> str:
        return "<small>(none)</small>" if v is None else _e(v)

    lines = "".join(f"<tr><td>{_e(path)}</td><td class=\"before\">{shown(before)}</td>"
                    f"<td class=\"after\">{shown(after)}</td></tr>" for path, before, after in items)
    return f'<table class="changes"><tr><th>field</th><th>before</th><th>after</th></tr>{lines}</table>'


def _write_row(call: Call) -> list[str]:
    outcome = _dict(call.outcome.record.get("outcome") if call.outcome else None)
    result = _dict(outcome.get("result"))
    if call.outcome is None:
        status = "no outcome (still running, or the server stopped)"
    elif outcome.get("status") == "ok":
        status = "ok"
    else:
        error = _dict(outcome.get("error"))
        status = f"error {error.get('code')}: {error.get('message')}"
    action = str(result.get("action") or "-") + (" (dry run)" if result.get("dry_run") else "")
    return [*_who(call), _e(action), _e(status), _changes(result), f"<code>{_e((call.call_id or '')[:12])}</code>"]


def _more(tally: _Tally, name: str) -> str:
    n = tally.more[name]
    return f'<p class="more">{n} more not shown: use <code>opsgate audit query</code>.</p>' if n else ""


# --- the page -------------------------------------------------------------------------------------

_PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>opsgate audit report</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; }
.verify { padding: 10px 14px; border-radius: 6px; margin: 14px 0; white-space: pre-wrap; font-family: monospace; }
.verify.ok { background: #e8f5e9; border: 1px solid #3a8d4f; }
.verify.damaged { background: #fdecea; border: 2px solid #c0392b; }
table { border-collapse: collapse; margin: 6px 0; } td, th { border-bottom: 1px solid #ddd; padding: 4px 8px;
  text-align: left; vertical-align: top; } th { background: #f4f4f4; }
table.changes td, table.changes th { border: none; padding: 0 6px; font-size: 12px; }
td.before { color: #a33; } td.after { color: #2a6; }
.axis { font-size: 11px; fill: #555; } .legend { color: #555; }
.swatch { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; }
.cards { display: flex; gap: 12px; } .card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; }
.card b { display: block; font-size: 20px; } .cols { display: flex; gap: 40px; flex-wrap: wrap; }
small, .none, .more { color: #666; } code { font-size: 12px; }
</style></head>
<body>
<h1>opsgate audit report</h1>
<p class="meta">log <code>$log</code>, $range; generated $generated</p>
<div id="verify" class="verify $verify_class"><b>$verify_title</b>
$verify_text</div>
<div class="cards">$cards</div>
<h2>Calls over time, by decision</h2>
$chart
<div class="cols"><div><h2>Top principals</h2>$principals</div><div><h2>Top tools</h2>$tools</div></div>
<h2>Denials and bound refusals ($denial_count)</h2>
$denials$denials_more
<h2>Invalid calls ($invalid_count)</h2>
$invalid$invalid_more
<h2>Writes ($write_count)</h2>
$writes$writes_more
<h2>Server events</h2>
$events
</body></html>
""")


def _range(since: datetime | None, until: datetime | None) -> str:
    def fmt(when: datetime | None, none: str) -> str:
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else none

    return _e(f"calls from {fmt(since, 'the start of the log')} to {fmt(until, 'its end')}")


def build_report(
    calls: Iterable[Call],
    *,
    verified: bool,
    verify_lines: list[str],
    log: str,
    since: datetime | None,
    until: datetime | None,
    generated: datetime,
) -> str:
    """The HTML page for these calls (and server events), with the verify result of the whole log on top."""
    tally = _Tally()
    for call in calls:
        tally.add(call)
    totals = Counter[str]()
    for counts in tally.slots.values():
        totals.update(counts)
    cards = [("calls", tally.calls), *((e, totals.get(e, 0)) for e in EFFECTS), ("errors", tally.errors)]
    events = _table("events", ["event", "count"], [[_e(k), str(v)] for k, v in sorted(tally.events.items())], "none")
    return _PAGE.substitute(
        log=_e(log),
        range=_range(since, until),
        generated=_e(generated.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        verify_class="ok" if verified else "damaged",
        verify_title="Verified: the chain is intact" if verified else "DAMAGED: the log does not verify",
        verify_text=_e("\n".join(verify_lines)),
        cards="".join(f'<div class="card"><b>{n}</b>{_e(name)}</div>' for name, n in cards),
        chart=_time_chart(tally),
        principals=_top("top-principals", "principal", tally.principals),
        tools=_top("top-tools", "tool", tally.tools),
        denial_count=len(tally.denials) + tally.more["denials"],
        denials=_table("denials", ["time (UTC)", "principal", "tool", "object", "by", "bound", "rule", "reason",
                                   "call"], map(_denial_row, tally.denials), "No denials in this range."),
        denials_more=_more(tally, "denials"),
        invalid_count=len(tally.invalid) + tally.more["invalid"],
        invalid=_table("invalid", ["time (UTC)", "principal", "tool", "object", "field: rule", "call"],
                       map(_invalid_row, tally.invalid), "No invalid calls in this range."),
        invalid_more=_more(tally, "invalid"),
        write_count=len(tally.writes) + tally.more["writes"],
        writes=_table("writes", ["time (UTC)", "principal", "tool", "object", "action", "outcome",
                                 "before / after", "call"], map(_write_row, tally.writes),
                      "No writes in this range."),
        writes_more=_more(tally, "writes"),
        events=events,
    )
