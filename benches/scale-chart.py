#!/usr/bin/env python3
"""Draws benches/results/scale.json (written by scale.sh) as one SVG of small charts.

One panel per measured thing: how its median grows with the size (both axes logarithmic), kiln
in orange and Docker/BuildKit in blue where it was measured beside; a size where a tool failed
is marked with a cross. The big-store group, measured at one size, is drawn as bars.

usage: scale-chart.py [scale.json] [scale.svg]
"""
import json
import math
import sys
from collections import OrderedDict

src = sys.argv[1] if len(sys.argv) > 1 else "benches/results/scale.json"
dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".svg"
results = json.load(open(src))["results"]

COLORS = {"kiln": "#e8590c", "docker": "#1c7ed6"}
W, H, PAD = 230, 170, 46  # one panel, and its inner margin
COLS = 4

panels = OrderedDict()  # (group, what) -> {tool: [(size, ms or None)]}
for r in results:
    panels.setdefault((r["group"], r["what"]), {}).setdefault(r["tool"], []).append(
        (r["size"], r["median"])
    )
lines = [(k, v) for k, v in panels.items() if len({s for t in v.values() for s, _ in t}) > 1]
bars = [(k, v) for k, v in panels.items() if (k, v) not in lines]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;")


def fmt(v):
    if v >= 1000:
        return f"{v / 1000:.3g} s"
    return f"{v:.3g} ms"


def unit(what):
    return "KiB" if "pss" in what else "ms"


out = []
rows = math.ceil(len(lines) / COLS)
bar_h = 18 * len(bars) + 60 if bars else 0
width, height = COLS * W, rows * H + bar_h + 30
out.append(
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
    f'font-family="sans-serif" font-size="10">'
)
out.append(f'<rect width="{width}" height="{height}" fill="white"/>')
out.append(
    f'<text x="8" y="18" font-size="13">How cost grows (median; log-log): '
    f'<tspan fill="{COLORS["kiln"]}">kiln</tspan>, '
    f'<tspan fill="{COLORS["docker"]}">Docker/BuildKit</tspan></text>'
)
for i, ((group, what), tools) in enumerate(lines):
    x0, y0 = (i % COLS) * W, 30 + (i // COLS) * H
    pts = [(s, v) for t in tools.values() for s, v in t if v]
    if not pts:
        continue
    sizes = sorted({s for t in tools.values() for s, _ in t})
    lo_s, hi_s = math.log10(min(sizes)), math.log10(max(sizes))
    lo_v = math.log10(max(min(v for _, v in pts), 0.5))
    hi_v = math.log10(max(v for _, v in pts))
    if hi_v - lo_v < 1:
        lo_v = hi_v - 1
    px = lambda s: x0 + PAD + (math.log10(s) - lo_s) / max(hi_s - lo_s, 1e-9) * (W - PAD - 15)
    py = lambda v: y0 + H - PAD + 10 - (math.log10(max(v, 0.5)) - lo_v) / (hi_v - lo_v) * (H - PAD - 25)
    out.append(f'<text x="{x0 + PAD}" y="{y0 + 12}" font-weight="bold">{esc(group)}: {esc(what)}</text>')
    out.append(
        f'<rect x="{x0 + PAD}" y="{y0 + 18}" width="{W - PAD - 15}" height="{H - PAD - 8}" '
        f'fill="none" stroke="#ccc"/>'
    )
    for s in sizes:
        out.append(f'<text x="{px(s)}" y="{y0 + H - 12}" text-anchor="middle">{s:,}</text>')
    for v in (10 ** lo_v, 10 ** hi_v):
        out.append(
            f'<text x="{x0 + PAD - 3}" y="{py(v) + 3}" text-anchor="end">'
            f'{fmt(round(v, 1)) if unit(what) == "ms" else f"{round(v)} KiB"}</text>'
        )
    for tool, series in tools.items():
        c = COLORS.get(tool, "#555")
        ok = [(s, v) for s, v in sorted(series) if v]
        if len(ok) > 1:
            path = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in ok)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for s, v in ok:
            out.append(f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="2.5" fill="{c}"/>')
        for s, v in series:
            if not v:  # failed at this size
                x, y = px(s), y0 + 26
                out.append(
                    f'<path d="M{x - 4},{y - 4}L{x + 4},{y + 4}M{x - 4},{y + 4}L{x + 4},{y - 4}" '
                    f'stroke="{c}" stroke-width="2"/><text x="{x - 6}" y="{y + 3}" fill="{c}" '
                    f'text-anchor="end">fails</text>'
                )
if bars:
    y0 = 30 + rows * H + 10
    size = bars[0][1][next(iter(bars[0][1]))][0][0]
    out.append(f'<text x="8" y="{y0}" font-weight="bold">big store ({size:,} images): median, log scale</text>')
    vals = [v for _, t in bars for s in t.values() for _, v in s if v]
    top = math.log10(max(vals)) if vals else 1
    for j, ((group, what), tools) in enumerate(bars):
        y = y0 + 14 + j * 18
        out.append(f'<text x="150" y="{y + 10}" text-anchor="end">{esc(what)}</text>')
        for tool, series in tools.items():
            v = series[0][1]
            if not v:
                out.append(f'<text x="155" y="{y + 10}" fill="{COLORS.get(tool, "#555")}">fails</text>')
                continue
            w = max(2, (math.log10(max(v, 1)) + 0.3) / (top + 0.3) * (width - 260))
            out.append(f'<rect x="155" y="{y}" width="{w:.0f}" height="13" fill="{COLORS.get(tool, "#555")}"/>')
            out.append(f'<text x="{155 + w + 4:.0f}" y="{y + 10}">{fmt(v)}</text>')
out.append("</svg>")
open(dst, "w").write("\n".join(out) + "\n")
print(f"wrote {dst}")
