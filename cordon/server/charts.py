"""Charts for the audit pages, drawn on the server as inline SVG (no JavaScript, no external
resource, so the pages' Content-Security-Policy ``default-src 'none'`` holds; colours are SVG
presentation attributes, not ``style``).

:func:`month_chart`: per month, oldest first, two bars: the median time to approve (cases a
person approved) and the median time to contain, on one axis in minutes, hours or seconds as
the figures need. Every text is escaped; each bar carries a ``<title>`` (its value, shown as a
tooltip and read by screen readers) and ``data-month`` / ``data-series`` / ``data-seconds``
attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from cordon.audit.query import Figures, format_seconds

SERIES = (("tta_median", "median time to approve", "#3b6fb6"),
          ("ttc_median", "median time to contain", "#d9822b"))
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 30, 40


def _unit(top: float) -> tuple[float, str]:
    if top >= 3 * 3600:
        return 3600.0, "h"
    if top >= 180:
        return 60.0, "min"
    return 1.0, "s"


def _nice(top: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``top`` (the axis maximum)."""
    if top <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= top:
        power *= 10
    while power > top:
        power /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= top:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def month_chart(by_month: Sequence[Figures]) -> Markup:
    """An ``<svg>`` (``id="month-chart"``) of median time to approve and to contain per month
    (``by_month`` as :func:`cordon.audit.query.metrics` gives it, newest first); a short
    paragraph instead when no month has either figure."""
    months = [f for f in reversed(list(by_month)) if f.tta_median is not None or f.ttc_median is not None]
    if not months:
        return Markup('<p class="muted" id="month-chart">No approved or contained case to chart yet.</p>')
    peak = max(getattr(f, key) or 0.0 for f in months for key, _, _ in SERIES)
    scale, unit = _unit(peak)
    axis_max = _nice(peak / scale) * scale
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(months)
    bar = min(40.0, slot * 0.8 / len(SERIES))
    out = [f'<svg id="month-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
           f'width="100%" role="img" aria-labelledby="month-chart-title" font-family="sans-serif" font-size="12">',
           '<title id="month-chart-title">Median time to approve and to contain per month</title>']
    for i in range(5):  # grid lines and axis labels
        value = axis_max * i / 4
        y = TOP + plot_h - plot_h * i / 4
        label = f"{value / scale:g} {unit}"
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#dde3ea"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{escape(label)}</text>')
    for n, f in enumerate(months):
        x0 = LEFT + n * slot + (slot - bar * len(SERIES)) / 2
        for k, (key, label, colour) in enumerate(SERIES):
            seconds = getattr(f, key)
            if seconds is None:
                continue
            h = plot_h * seconds / axis_max if axis_max else 0.0
            x, y = x0 + k * bar, TOP + plot_h - h
            out.append(f'<rect class="bar" data-month="{escape(f.group)}" data-series="{key}" '
                       f'data-seconds="{seconds:.3f}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                       f'height="{max(h, 0.5):.1f}" fill="{colour}"><title>{escape(f.group)}: {escape(label)} '
                       f'{escape(format_seconds(seconds))}</title></rect>')
        out.append(f'<text x="{LEFT + n * slot + slot / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                   f'fill="#333">{escape(f.group)}</text>')
    for k, (_, label, colour) in enumerate(SERIES):  # legend
        x = LEFT + k * 220
        out.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="18" fill="#333">{escape(label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
