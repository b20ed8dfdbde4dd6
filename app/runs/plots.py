"""Server-side SVG line charts: the run page's curves, with no JavaScript charting library.

`line_chart({"train/loss": [(step, value), ...], ...}, title="Loss")` returns a Markup string
holding one <svg>: axes with "nice" ticks, one <polyline> per series, a legend. Every label
(series names, title) is escaped here, because the template inserts the SVG as markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

from app.svg import line, svg_open, text

# Tableau 10: distinguishable, and readable for the common kinds of colour blindness.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
# Above this many points a series is thinned (evenly, keeping the last point) so a long run's
# page stays small; the shape of a curve survives far fewer points than a screen has pixels.
MAX_POINTS = 1500

Series = Sequence[tuple[float, float]]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 12))
    return ticks


def fmt(value: float) -> str:
    """Short tick labels: 0.001, 0.25, 12, 1.5e+06."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def thin(points: Series, limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    pts = list(points)
    if len(pts) <= limit:
        return pts
    stride = len(pts) / (limit - 1)
    kept = [pts[int(i * stride)] for i in range(limit - 1)]
    kept.append(pts[-1])
    return kept


def line_chart(
    series: Mapping[str, Series],
    *,
    title: str = "",
    x_label: str = "step",
    width: int = 560,
    height: int = 260,
) -> Markup:
    """One chart. Non-finite values (NaN, inf) are left out: they would break the scale."""
    clean = {
        name: thin(
            [(float(x), float(y)) for x, y in pts if math.isfinite(float(x)) and math.isfinite(float(y))]
        )
        for name, pts in series.items()
    }
    clean = {name: pts for name, pts in clean.items() if pts}
    legend_rows = math.ceil(len(clean) / 2) if len(clean) > 1 else (1 if clean else 0)
    left, right, top = 58, 14, 28 if title else 12
    bottom = 38 + 16 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    out: list[str] = [svg_open(width, height, escape(title or "chart"))]
    if title:
        out.append(text(left, 17, escape(title), ' class="chart-title" font-size="13" font-weight="600"'))
    if not clean:
        out.append(
            text(width / 2, height / 2, "no data yet", ' text-anchor="middle" font-size="12" fill="#5b6474"')
        )
        out.append("</svg>")
        return Markup("".join(out))  # noqa: S704  (every label above went through escape())

    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    # Steps count from 0: one point (a run's first metric) gets the axis 0..step, not step ± 10%.
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = min(0.0, x_lo), max(1.0, x_hi) if x_hi >= 0 else 0.0
    x_ticks, y_ticks = nice_ticks(x_lo, x_hi), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    # Grid and tick labels.
    out.append('<g class="axes" font-size="11" fill="#5b6474">')
    for t in y_ticks:
        y = sy(t)
        out.append(line(left, left + plot_w, y, y, "#e6e8ee"))
        out.append(text(left - 6, y + 4, fmt(t), ' text-anchor="end"'))
    for t in x_ticks:
        x = sx(t)
        out.append(line(x, x, top + plot_h, top + plot_h + 4, "#5b6474"))
        out.append(text(x, top + plot_h + 16, fmt(t), ' text-anchor="middle"'))
    out.append(line(left, left, top, top + plot_h, "#5b6474"))
    out.append(line(left, left + plot_w, top + plot_h, top + plot_h, "#5b6474"))
    out.append(
        text(left + plot_w / 2, top + plot_h + 30, escape(x_label), ' class="x-label" text-anchor="middle"')
    )
    out.append("</g>")

    # One polyline per series; single points get a dot too, so they are visible.
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        last_x, last_y = pts[-1]
        out.append(
            f'<polyline data-series="{escape(name)}" fill="none" stroke="{color}" stroke-width="1.8" '
            f'stroke-linejoin="round" points="{coords}"><title>{escape(name)}: last '
            f"{fmt(last_y)} at {fmt(last_x)}</title></polyline>"
        )
        if len(pts) == 1:
            out.append(f'<circle cx="{sx(last_x):.1f}" cy="{sy(last_y):.1f}" r="3" fill="{color}"/>')

    # Legend under the axis label, two columns; shows each series' last value.
    out.append('<g class="legend" font-size="11">')
    col_w = plot_w / 2
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        lx = left + (i % 2) * col_w
        ly = top + plot_h + 46 + 16 * (i // 2)
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="12" height="4" fill="{color}"/>')
        out.append(
            f'<text x="{lx + 17:.1f}" y="{ly - 2}" fill="#1d2330">{escape(name)} '
            f'<tspan fill="#5b6474">({fmt(pts[-1][1])})</tspan></text>'
        )
    out.append("</g></svg>")
    return Markup("".join(out))  # noqa: S704  (every label above went through escape())
