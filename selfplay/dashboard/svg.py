"""Server-side SVG line charts: no JavaScript, no CDN, one small inline <svg> per plot."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
W, H = 420, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 34


def _ticks(lo: float, hi: float) -> list[float]:
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * i / 4 for i in range(5)]


def _label(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:.3g}"


def line_chart(
    title: str,
    xs: Sequence[float],
    series: dict[str, Sequence[float | None]],
    x_label: str = "round",
) -> Markup:
    """A line chart of each named series over `xs` (None: no point); an empty note if no data."""
    points = [v for ys in series.values() for v in ys if v is not None]
    head = (
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {W} {H}" '
        f'width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="{W / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>'
    )
    if not points or not xs:
        return Markup(
            head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text></svg>'
        )
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(points), max(points)
    if y_lo == y_hi:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (pw * (x - x_lo) / (x_hi - x_lo) if x_hi != x_lo else pw / 2)

    def py(y: float) -> float:
        return TOP + ph - ph * (y - y_lo) / (y_hi - y_lo)

    parts = [head]
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" class="axis"/>'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" class="axis"/>'
    )
    for t in _ticks(y_lo, y_hi):
        parts.append(
            f'<text x="{LEFT - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_label(t)}</text>'
            f'<line x1="{LEFT}" y1="{py(t):.1f}" x2="{LEFT + pw}" y2="{py(t):.1f}" class="grid"/>'
        )
    x_ticks = _ticks(x_lo, x_hi) if len(xs) > 5 else list(xs)
    if all(float(x).is_integer() for x in xs):  # rounds and steps: integer ticks
        x_ticks = [round(t) for t in x_ticks]
    for t in sorted({x_lo, x_hi, *x_ticks}):
        parts.append(
            f'<text x="{px(t):.1f}" y="{TOP + ph + 14}" text-anchor="middle" class="tick">'
            f"{_label(t)}</text>"
        )
    parts.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 4}" text-anchor="middle" class="tick">{escape(x_label)}</text>'
    )
    for i, (name, ys) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [(px(x), py(y), x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if len(pts) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _, _ in pts)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
            )
        if len(pts) <= 60:
            for a, b, x, y in pts:
                parts.append(
                    f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}">'
                    f"<title>{escape(name)} @ {_label(x)}: {y:.4g}</title></circle>"
                )
        if len(series) > 1:
            parts.append(
                f'<text x="{LEFT + 8 + 110 * i}" y="{TOP + 10}" fill="{color}" class="legend">'
                f"{escape(name)}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
