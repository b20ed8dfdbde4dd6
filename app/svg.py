"""The SVG elements the server-side charts draw (app/quality/charts.py, app/runs/plots.py):
coordinates written to one decimal; the caller escapes every text it passes."""

from __future__ import annotations


def svg_open(width: int, height: int, label: str) -> str:
    """The chart's <svg> element, sized in pixels, with `label` (escaped) for screen readers."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{label}">'
    )


def line(x1: float, x2: float, y1: float, y2: float, stroke: str, more: str = "") -> str:
    return f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="{stroke}"{more}/>'


def text(x: float, y: float, body: str, attrs: str = "") -> str:
    """A <text> at (x, y); `attrs` (e.g. ' text-anchor="end"') goes last, before the body."""
    return f'<text x="{x:.1f}" y="{y:.1f}"{attrs}>{body}</text>'
