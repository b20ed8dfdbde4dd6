"""Small server-side SVG bar charts: no JavaScript, readable without the page's CSS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from app.svg import line, svg_open, text


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    lo: float | None = None  # error bar (e.g. a 95% interval)
    hi: float | None = None
    ref: float | None = None  # a per-bar reference mark (e.g. 1/K)


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    ymax: float = 1.0,
    ref: float | None = None,
    ref_label: str = "",
    percent: bool = True,
    width: int = 560,
    height: int = 220,
) -> Markup:
    """Vertical bars with optional error bars, per-bar marks and one horizontal reference line.
    Every text is escaped; labels are shown under the bars and in each bar's <title>."""
    left, top, bottom = 44, 36, 44
    right = 84 if ref is not None and ref_label else 10  # room for the reference line's label
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(bars), 1)
    slot = plot_w / n
    bar_w = max(4.0, min(48.0, slot * 0.6))

    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(v, ymax)) / ymax)

    def fmt(v: float) -> str:
        return f"{v:.0%}" if percent else f"{v:.2f}"

    parts = [
        svg_open(width, height, escape(title)),
        text(left, 16, escape(title), ' font-size="13" font-weight="600"'),
    ]
    for tick in (0.0, ymax / 2, ymax):
        ty = y(tick)
        parts.append(line(left, width - right, ty, ty, "#e3e6ec"))
        parts.append(text(left - 4, ty + 4, fmt(tick), ' font-size="10" text-anchor="end" fill="#5b6474"'))
    if not bars:
        empty = ' font-size="12" text-anchor="middle" fill="#5b6474"'
        parts.append(text(left + plot_w / 2, top + plot_h / 2, "no data yet", empty))
    for i, b in enumerate(bars):
        cx = left + slot * (i + 0.5)
        label = escape(b.label)
        value = "n/a" if b.value is None else fmt(b.value)
        tip = f"{b.label}: {value}"
        if b.lo is not None and b.hi is not None:
            tip += f" (95% interval {fmt(b.lo)} to {fmt(b.hi)})"
        parts.append(f"<g><title>{escape(tip)}</title>")
        if b.value is not None:
            yy = y(b.value)
            parts.append(
                f'<rect x="{cx - bar_w / 2:.1f}" y="{yy:.1f}" width="{bar_w:.1f}" '
                f'height="{top + plot_h - yy:.1f}" fill="#2457c5" opacity="0.8"/>'
            )
            # the value sits beside the bar's top, clear of an error bar drawn through its middle
            parts.append(text(cx + bar_w / 2 + 2, yy + 10, value, ' font-size="10"'))
        if b.lo is not None and b.hi is not None:
            y1, y2 = y(b.lo), y(b.hi)
            parts.append(line(cx, cx, y1, y2, "#1d2330"))
            parts.extend(line(cx - 5, cx + 5, yy, yy, "#1d2330") for yy in (y1, y2))
        if b.ref is not None:
            ry = y(b.ref)
            parts.append(line(cx - bar_w / 2 - 3, cx + bar_w / 2 + 3, ry, ry, "#b3261e", ' stroke-width="2"'))
        parts.append(text(cx, top + plot_h + 14, str(label), ' font-size="10" text-anchor="middle"') + "</g>")
    if ref is not None:
        ry = y(ref)
        parts.append(line(left, width - right, ry, ry, "#b3261e", ' stroke-dasharray="4 3"'))
        parts.append(text(width - right + 4, ry + 3, escape(ref_label), ' font-size="10" fill="#b3261e"'))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every text above went through escape())
