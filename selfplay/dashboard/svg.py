"""Server-side SVG line charts: no JavaScript, no CDN, one small inline <svg> per plot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


Band = tuple[str, Sequence[float | None], Sequence[float | None]]
"""A shaded band: its label (the tooltip, "win rate ± 2 SE"), then its low and high bounds."""


def line_chart(
    title: str,
    xs: Sequence[float],
    series: dict[str, Sequence[float | None]],
    x_label: str = "round",
    bands: dict[str, Band] | None = None,
) -> Markup:
    """A line chart of each named series over `xs` (None: no point); an empty note if no data.

    `bands` maps a series' name to its band (label, low and high bounds over `xs`), shaded in
    the series' colour under the lines (a bar where an x with both bounds has no neighbour
    with both; None: no band at that x)."""
    bands = bands or {}
    points = [v for ys in series.values() for v in ys if v is not None]
    points += [v for _, lo, hi in bands.values() for v in (*lo, *hi) if v is not None]
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
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(series)}
    for name, (label, lo, hi) in bands.items():
        parts.extend(_band(label, colors[name], xs, lo, hi, px, py))
    for i, (name, ys) in enumerate(series.items()):
        color = colors[name]
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


def _band(
    label: str,
    color: str,
    xs: Sequence[float],
    lo: Sequence[float | None],
    hi: Sequence[float | None],
    px: Callable[[float], float],
    py: Callable[[float], float],
) -> list[str]:
    """The shaded band between `lo` and `hi`: a polygon per run of consecutive xs that have
    both bounds, a bar where such a run is a single x."""
    runs: list[list[tuple[float, float, float]]] = [[]]
    for x, a, b in zip(xs, lo, hi, strict=True):
        if a is None or b is None:
            runs.append([])
        else:
            runs[-1].append((x, a, b))
    title = f"<title>{escape(label)}</title>"
    parts = []
    for run in filter(None, runs):
        if len(run) == 1:
            ((x, a, b),) = run
            parts.append(
                f'<line x1="{px(x):.1f}" y1="{py(a):.1f}" x2="{px(x):.1f}" y2="{py(b):.1f}" '
                f'class="band" stroke="{color}" stroke-opacity="0.25" stroke-width="8">'
                f"{title}</line>"
            )
            continue
        upper = [f"{px(x):.1f},{py(b):.1f}" for x, _, b in run]
        lower = [f"{px(x):.1f},{py(a):.1f}" for x, a, _ in reversed(run)]
        parts.append(
            f'<polygon points="{" ".join(upper + lower)}" class="band" fill="{color}" '
            f'fill-opacity="0.2" stroke="none">{title}</polygon>'
        )
    return parts
