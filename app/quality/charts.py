"""Small server-side SVG bar charts: no JavaScript, readable without the page's CSS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


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
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for tick in (0.0, ymax / 2, ymax):
        ty = y(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e3e6ec"/>')
        parts.append(
            f'<text x="{left - 4}" y="{ty + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#5b6474">{fmt(tick)}</text>'
        )
    if not bars:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
            f'text-anchor="middle" fill="#5b6474">no data yet</text>'
        )
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
            parts.append(
                f'<text x="{cx + bar_w / 2 + 2:.1f}" y="{yy + 10:.1f}" font-size="10">{value}</text>'
            )
        if b.lo is not None and b.hi is not None:
            y1, y2 = y(b.lo), y(b.hi)
            parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="#1d2330"/>')
            for yy in (y1, y2):
                parts.append(
                    f'<line x1="{cx - 5:.1f}" x2="{cx + 5:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" '
                    'stroke="#1d2330"/>'
                )
        if b.ref is not None:
            ry = y(b.ref)
            parts.append(
                f'<line x1="{cx - bar_w / 2 - 3:.1f}" x2="{cx + bar_w / 2 + 3:.1f}" y1="{ry:.1f}" '
                f'y2="{ry:.1f}" stroke="#b3261e" stroke-width="2"/>'
            )
        parts.append(
            f'<text x="{cx:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">'
            f"{label}</text></g>"
        )
    if ref is not None:
        ry = y(ref)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ry:.1f}" y2="{ry:.1f}" '
            'stroke="#b3261e" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{width - right + 4}" y="{ry + 3:.1f}" font-size="10" '
            f'fill="#b3261e">{escape(ref_label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (every text above went through escape())
