"""The trajectories of an evaluate job as a small inline SVG line chart (no script, no CDN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup

#: Series drawn, with their colours (the legend in the page uses the same).
SERIES = {"quality": "#2459d6", "risk": "#c4320a", "similarity": "#18794e"}
WIDTH, HEIGHT, PAD = 480, 180, 28


def _points(values: Sequence[float], count: int) -> str:
    """Polyline points of values in [0, 1], spread over count cycles."""
    step = (WIDTH - 2 * PAD) / max(count - 1, 1)
    span = HEIGHT - 2 * PAD
    return " ".join(f"{PAD + i * step:.1f},{HEIGHT - PAD - min(max(float(v), 0.0), 1.0) * span:.1f}"
                    for i, v in enumerate(values))


def _axes(count: int) -> list[str]:
    """Frame, gridlines at 0, 0.5 and 1, and the cycle numbers."""
    parts = []
    for level in (0.0, 0.5, 1.0):
        y = HEIGHT - PAD - level * (HEIGHT - 2 * PAD)
        parts.append(f'<line x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD}" y2="{y:.1f}" '
                     f'stroke="#d9dee7"/><text x="4" y="{y + 4:.1f}" font-size="10" '
                     f'fill="#667085">{level:.1f}</text>')
    step = (WIDTH - 2 * PAD) / max(count - 1, 1)
    parts += [f'<text x="{PAD + i * step - 3:.1f}" y="{HEIGHT - 8}" font-size="10" '
              f'fill="#667085">{i + 1}</text>' for i in range(count)]
    return parts


def trajectories_svg(trajectories: Mapping[str, Sequence[float]]) -> Markup:
    """An SVG of each trajectory over the cycles, one dot per cycle."""
    count = max((len(v) for v in trajectories.values()), default=0)
    parts = _axes(count)
    for name, colour in SERIES.items():
        values = trajectories.get(name) or []
        if not values:
            continue
        parts.append(f'<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{_points(values, count)}"/>')
        parts += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" '
                  f'fill="{colour}"/>' for p in _points(values, count).split()]
    return Markup(f'<svg class="chart" role="img" aria-label="trajectories per cycle" '
                  f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
                  f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')
