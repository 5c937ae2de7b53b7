"""The loss and match-rate dashboard (SPEC §11 /dashboard): one HTML page rendered from
the very documents /v1/loss and /v1/match-rates answer, with server-rendered SVG charts.
No script and no external asset: the page works on a network without internet access,
and its Content-Security-Policy allows nothing but its own inline style."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any, Final

from .activities import DENIAL_REASONS

WINDOW_TITLES: Final = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days"}
PRIVACY_REASONS: Final = tuple(str(r) for r in DENIAL_REASONS)
DEST_COLUMNS: Final = ("instructed", "loaded", "confirmed", "delivered", "failed")
PALETTE: Final = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
)  # fmt: skip
CHART_W: Final = 640
CHART_H: Final = 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 10, 24

STYLE: Final = """
:root { color-scheme: light dark; --over: #fde2e1; --over-ink: #a4161a; --muted: #666; }
@media (prefers-color-scheme: dark) { :root { --over: #4a1518; --over-ink: #ffb3b0;
  --muted: #aaa; } }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; padding: 0 12px 32px;
  max-width: 1100px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 16px; }
h1 { font-size: 1.3rem; margin: 16px 0 4px; }
h2 { font-size: 1.1rem; margin: 28px 0 8px; border-bottom: 1px solid #8884; }
h3 { font-size: 1rem; margin: 16px 0 6px; }
nav a { margin-right: 12px; }
.muted, figcaption { color: var(--muted); font-size: .85rem; }
.totals { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; padding: 0; }
.totals li { list-style: none; border: 1px solid #8884; border-radius: 6px;
  padding: 6px 12px; min-width: 9rem; }
.totals b { display: block; font-size: 1.25rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid #8883; text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; }
tr.over td { background: var(--over); color: var(--over-ink); font-weight: 600; }
figure { margin: 8px 0 16px; }
svg { width: 100%; height: auto; max-width: 720px; display: block; }
svg text { font-size: 13px; fill: currentColor; }
svg .axis { stroke: #8888; stroke-width: 1; }
svg .limit { stroke: #d62728; stroke-width: 1; stroke-dasharray: 4 3; }
svg polyline { fill: none; stroke-width: 2; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; padding: 0; margin: 4px 0; }
.legend li { list-style: none; font-size: .85rem; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
  border-radius: 2px; }
""" + "".join(f".legend i.c{k} {{ background: {c}; }}\n" for k, c in enumerate(PALETTE))
# The page's only style, allowed by its hash (no 'unsafe-inline').
STYLE_HASH: Final = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP: Final = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Totals:
    requests: Mapping[str, int]  # window -> browser requests answered
    visitors: Mapping[str, int]  # window -> distinct visitors (HyperLogLog)
    mappings: int  # mappings in the match table
    mappings_exact: bool  # False: scaled up from a sample of buckets


@dataclass(frozen=True)
class Page:
    loss: Mapping[str, Mapping[str, Any]]  # window -> the /v1/loss document
    match_rates: Mapping[str, Any]  # the /v1/match-rates document
    totals: Totals
    threshold: float  # loss rates above it are highlighted
    refresh_s: int
    generated: str  # ISO time
    # window -> partners with privacy denials (activities.denials), by reason
    privacy: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f} %"


def number(n: int) -> str:
    return f"{n:,}"


def render(page: Page) -> str:
    windows = [w for w in WINDOW_TITLES if w in page.loss]
    nav = " ".join(f'<a href="#w-{w}">{WINDOW_TITLES[w]}</a>' for w in windows)
    body = [
        "<header><h1>pixelsync — loss and match rates</h1>"
        f'<span class="muted">generated {escape(page.generated)}, refreshed every '
        f"{page.refresh_s} s; loss above {percent(page.threshold)} is highlighted</span>"
        f'</header><nav>{nav} <a href="#match-rates">Match rates (7 days)</a></nav>',
        _totals(page.totals),
    ]
    for w in windows:
        body.append(_window(w, page.loss[w], page.threshold, page.privacy.get(w, ())))
    body.append(_match_rates(page.match_rates, page.threshold))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{page.refresh_s}">'
        "<title>pixelsync dashboard</title>"
        f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>"
    )


def _totals(t: Totals) -> str:
    items = [
        (f"Requests, {w}", number(t.requests.get(w, 0)), f"total-requests-{w}")
        for w in ("1h", "24h", "7d")
    ]
    items += [
        (f"Distinct visitors, {w}", number(t.visitors.get(w, 0)), f"total-visitors-{w}")
        for w in ("1h", "24h", "7d")
    ]
    approx = "" if t.mappings_exact else "≈ "
    items.append(("Mappings stored", approx + number(t.mappings), "total-mappings"))
    cells = "".join(f'<li id="{i}">{label}<b>{value}</b></li>' for label, value, i in items)
    return f'<h2>Totals</h2><ul class="totals">{cells}</ul>'


def _over(rate: float | None, threshold: float) -> bool:
    return rate is not None and rate > threshold


def _row(cells: Sequence[str], *, over: bool, key: str, name: str) -> str:
    cls = ' class="over"' if over else ""
    mark = " ⚠" if over else ""
    tds = "".join(f"<td>{c}</td>" for c in cells)
    return f'<tr{cls} data-id="{escape(key)}"><td>{escape(name)}{mark}</td>{tds}</tr>'


def _window(
    window: str,
    doc: Mapping[str, Any],
    threshold: float,
    privacy: Sequence[Mapping[str, Any]] = (),
) -> str:
    out = [f'<section id="w-{window}"><h2>{WINDOW_TITLES[window]}</h2>']
    dests = doc.get("destinations", [])
    out.append("<h3>Destinations</h3>")
    if dests:
        head = "".join(f"<th>{c}</th>" for c in ("destination", "type", *DEST_COLUMNS, "loss"))
        rows = [
            _row(
                [escape(d["type"]), *(number(d[c]) for c in DEST_COLUMNS), percent(d["loss_rate"])],
                over=_over(d["loss_rate"], threshold),
                key=f"d{d['id']}",
                name=d["name"],
            )
            for d in dests
        ]
        out.append(_table(f"dest-{window}", head, rows))
        series = [(f"d{d['id']}", d["name"], [p["loss_rate"] for p in d["series"]]) for d in dests]
        out.append(_chart(f"chart-loss-{window}", "Loss rate over time", doc, series, threshold))
    else:
        out.append('<p class="muted">No destinations configured.</p>')
    partners = doc.get("partners", [])
    out.append("<h3>Partner ID syncs</h3>")
    if partners:
        head = "".join(
            f"<th>{c}</th>" for c in ("partner", "instructed", "completed", "match rate", "loss")
        )
        rows = [
            _row(
                [
                    number(p["instructed"]),
                    number(p["completed"]),
                    percent(p["completed"] / p["instructed"] if p["instructed"] else None),
                    percent(p["loss_rate"]),
                ],
                over=_over(p["loss_rate"], threshold),
                key=f"p{p['dpid']}",
                name=p["name"],
            )
            for p in partners
        ]
        out.append(_table(f"sync-{window}", head, rows))
        series = [(f"p{p['dpid']}", p["name"], [_match(q) for q in p["series"]]) for p in partners]
        out.append(_chart(f"chart-match-{window}", "Match rate over time", doc, series, None))
    else:
        out.append('<p class="muted">No partners configured.</p>')
    out.append(_privacy(window, privacy))
    out.append("</section>")
    return "".join(out)


def _privacy(window: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Partner activities privacy denied in the window, by reason (activities.py)."""
    out = ["<h3>Privacy denials</h3>"]
    if not rows:
        out.append('<p class="muted">No partner activity was denied.</p>')
        return "".join(out)
    head = "".join(f"<th>{c}</th>" for c in ("partner", *PRIVACY_REASONS, "total", "activities"))
    body = []
    for r in rows:
        activities = ", ".join(f"{escape(a)} {number(n)}" for a, n in r["activities"].items())
        cells = [number(r["reasons"].get(reason, 0)) for reason in PRIVACY_REASONS]
        body.append(
            _row(
                [*cells, number(r["total"]), activities],
                over=False,
                key=f"p{r['dpid']}",
                name=r["name"],
            )
        )
    out.append(_table(f"privacy-{window}", head, body))
    return "".join(out)


def _match(point: Mapping[str, int]) -> float | None:
    return point["completed"] / point["instructed"] if point["instructed"] else None


def _table(ident: str, head: str, rows: Sequence[str]) -> str:
    return (
        f'<div class="scroll"><table id="{ident}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _chart(
    ident: str,
    title: str,
    doc: Mapping[str, Any],
    series: Sequence[tuple[str, str, list[float | None]]],
    threshold: float | None,
) -> str:
    """A line chart of rates (0 to 100 %, or higher when a value is): one polyline per
    run of defined points, one circle per defined point."""
    times = _times(doc)
    n = max((len(values) for _, _, values in series), default=0)
    top = max([1.0, *(v for _, _, vals in series for v in vals if v is not None)])
    inner_w, inner_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def x(i: int) -> float:
        return PAD_L + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)

    def y(v: float) -> float:
        return PAD_T + inner_h * (1 - v / top)

    parts = [
        f'<svg id="{ident}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<line class="axis" x1="{PAD_L}" y1="{y(0):.1f}" x2="{CHART_W - PAD_R}" y2="{y(0):.1f}"/>',
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{y(0):.1f}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        tick = top * frac
        parts.append(
            f'<text x="{PAD_L - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{tick * 100:.0f}%</text>"
        )
    if times:
        parts.append(f'<text x="{PAD_L}" y="{CHART_H - 6}">{escape(times[0])}</text>')
        parts.append(
            f'<text x="{CHART_W - PAD_R}" y="{CHART_H - 6}" text-anchor="end">'
            f"{escape(times[-1])}</text>"
        )
    if threshold is not None and threshold <= top:
        parts.append(
            f'<line class="limit" x1="{PAD_L}" y1="{y(threshold):.1f}" '
            f'x2="{CHART_W - PAD_R}" y2="{y(threshold):.1f}"/>'
        )
    legend = []
    for k, (key, name, values) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        group = [f'<g class="series" data-id="{escape(key)}" stroke="{color}" fill="{color}">']
        run: list[str] = []
        for i, v in enumerate([*values, None]):
            if v is not None:
                run.append(f"{x(i):.1f},{y(v):.1f}")
                when = escape(times[i]) if i < len(times) else str(i)
                group.append(
                    f'<circle class="pt" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5">'
                    f"<title>{escape(name)} {when}: {percent(v)}</title></circle>"
                )
            elif run:
                if len(run) > 1:
                    group.append(f'<polyline points="{" ".join(run)}"/>')
                run = []
        group.append("</g>")
        parts.extend(group)
        legend.append(f'<li><i class="c{k % len(PALETTE)}"></i>{escape(name)}</li>')
    parts.append("</svg>")
    return (
        f"<figure>{''.join(parts)}<figcaption>{escape(title)}</figcaption>"
        f'<ul class="legend">{"".join(legend)}</ul></figure>'
    )


def _times(doc: Mapping[str, Any]) -> list[str]:
    for kind in ("destinations", "partners"):
        for row in doc.get(kind, []):
            return [str(p["t"]) for p in row["series"]]
    return []


def _match_rates(doc: Mapping[str, Any], threshold: float) -> str:
    partners = doc.get("partners", [])
    out = ['<section id="match-rates"><h2>Match rates, last 7 days</h2>']
    if not partners:
        out.append('<p class="muted">No partners configured.</p></section>')
        return "".join(out)
    cols = ("partner", "instructed", "completed", "match rate", "mappings", "lookups hit",
            "lookups missed", "real-time calls", "timeouts", "errors")  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for p in partners:
        rate = p["match_rate"]
        rt = p["realtime"]
        rows.append(
            _row(
                [
                    number(p["instructed"]),
                    number(p["completed"]),
                    percent(rate),
                    number(p["mappings"]),
                    number(p["lookups_hit"]),
                    number(p["lookups_miss"]),
                    number(rt.get("calls", 0)),
                    number(rt.get("timeouts", 0)),
                    number(rt.get("errors", 0)),
                ],
                over=rate is not None and 1 - rate > threshold,
                key=f"p{p['dpid']}",
                name=p["name"],
            )
        )
    out.append(_table("match-rates-table", head, rows))
    out.append("</section>")
    return "".join(out)
