"""Small SVG charts for the admin dashboard, drawn on the server: no JavaScript, no CDN, nothing to serve.

Written here rather than taken from a charting library because the dashboard needs three simple shapes
(stacked bars per day, horizontal bars, dots on a logarithmic time axis), a JavaScript library would be
one more static asset to vendor and keep patched, and pygal's default output links its scripts from a CDN.
Every label goes through `format_html`, so nothing a partner named can inject markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-safe (Okabe–Ito), by meaning.
COLOURS = {
    "completed": "#009E73", "match": "#009E73", "active": "#009E73", "met": "#009E73",
    "failed": "#D55E00", "nomatch": "#D55E00", "suspended": "#D55E00", "missed": "#D55E00", "revoked": "#D55E00",
    "cancelled": "#999999", "expired": "#999999", "rejected": "#CC79A7",
    "running": "#56B4E9", "open": "#56B4E9", "queued": "#0072B2", "pending": "#E69F00",
    "consentconstraint": "#E69F00", "due soon": "#E69F00", "overdue": "#D55E00",
}
FALLBACK = ("#0072B2", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#999999")
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def colour(name: str, index: int = 0) -> str:
    return COLOURS.get(name, FALLBACK[index % len(FALLBACK)])


def _legend(names: Sequence[str], x: float, y: float) -> SafeString:
    items, offset = [], 0.0
    for index, name in enumerate(names):
        items.append((x + offset, y, colour(name, index), x + offset + 14, y + 9, name))
        offset += 24 + 7 * len(name)
    return _join('<rect x="{}" y="{}" width="10" height="10" fill="{}"/>'
                                '<text x="{}" y="{}" ' + FONT + '>{}</text>', items)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= value)


def stacked_bars(days: Sequence[str], series: dict[str, Sequence[int]], *, width: int = 520,
                 height: int = 190, title: str = "") -> SafeString:
    """One bar per day, stacked by series (e.g. completed / failed / cancelled)."""
    left, right, top, bottom = 34, 8, 24, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    top_value = _nice_max(max(totals, default=0))
    step = plot_w / max(len(days), 1)
    bars = []
    for i in range(len(days)):
        y = top + plot_h
        for index, (name, values) in enumerate(series.items()):
            h = plot_h * values[i] / top_value
            if h:
                y -= h
                bars.append((left + i * step + 1, y, max(step - 2, 1), h, colour(name, index),
                             f"{days[i]}: {values[i]} {name}"))
    rects = _join('<rect x="{}" y="{}" width="{}" height="{}" fill="{}">'
                                 "<title>{}</title></rect>", bars)
    ticks = _join('<text x="{}" y="{}" text-anchor="end" ' + FONT + ">{}</text>"
                                 '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>',
                             ((left - 4, top + plot_h * (1 - f) + 4, _number(top_value * f), left, width - right,
                               top + plot_h * (1 - f), top + plot_h * (1 - f)) for f in (0, 0.5, 1)))
    labels = _join('<text x="{}" y="{}" text-anchor="middle" ' + FONT + ">{}</text>",
                              ((left + i * step + step / 2, height - 6, days[i][5:]) for i in range(len(days))
                               if i % max(len(days) // 7, 1) == 0))
    return _svg(width, height, title, mark_safe(ticks + rects + labels + _legend(list(series), left, 4)))  # noqa: S308 - built by format_html


def horizontal_bars(rows: Sequence[tuple[str, float, str]], *, width: int = 520, title: str = "",
                    bar_colour: str = "#0072B2") -> SafeString:
    """One bar per row: (label, value, text shown after the bar)."""
    label_w, row_h, top = 150, 20, 8
    height = top + row_h * max(len(rows), 1) + 8
    top_value = max((value for _, value, _ in rows), default=0) or 1
    plot_w = width - label_w - 110
    items = [(label_w - 6, top + n * row_h + 13, _clip(label), label_w, top + n * row_h + 3,
              max(plot_w * value / top_value, 1), row_h - 6, bar_colour, f"{label}: {text}",
              label_w + plot_w * value / top_value + 6, top + n * row_h + 13, text)
             for n, (label, value, text) in enumerate(rows)]
    body = _join(
        '<text x="{}" y="{}" text-anchor="end" ' + FONT + '>{}</text><rect x="{}" y="{}" width="{}" '
            'height="{}" fill="{}"><title>{}</title></rect><text x="{}" y="{}" ' + FONT + ">{}</text>", items)
    if not rows:
        body = format_html('<text x="{}" y="{}" {}>nothing yet</text>', label_w, top + 13, mark_safe(FONT))  # noqa: S308
    return _svg(width, height, title, body)


@dataclass(frozen=True)
class Dot:
    """One job on the duration axis: how long it took (or has been open), its deadline, its state."""

    label: str
    seconds: float
    deadline_seconds: float
    state: str  # met, missed, open, due soon, overdue


def durations_against_deadlines(dots: Sequence[Dot], *, width: int = 520, height: int = 150,
                                title: str = "") -> SafeString:
    """Each job a dot on a logarithmic time axis (1 s … 14 days), the deadline a vertical line."""
    left, right, top, bottom = 10, 10, 24, 30
    plot_w = width - left - right
    low, high = math.log10(1), math.log10(14 * 86400)

    def x(seconds: float) -> float:
        return left + plot_w * (min(max(math.log10(max(seconds, 1)), low), high) - low) / (high - low)

    ticks = (("1 s", 1), ("1 min", 60), ("1 h", 3600), ("1 day", 86400), ("7 days", 7 * 86400))
    axis = _join('<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>'
                                '<text x="{}" y="{}" text-anchor="middle" ' + FONT + ">{}</text>",
                            ((x(s), x(s), top, height - bottom, x(s), height - bottom + 14, name) for name, s in ticks))
    deadlines = sorted({round(d.deadline_seconds) for d in dots}) or [7 * 86400]
    lines = _join('<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#D55E00" '
                                 'stroke-dasharray="4 3"><title>deadline</title></line>',
                             ((x(d), x(d), top - 4, height - bottom) for d in deadlines))
    rows = height - top - bottom
    points = _join('<circle cx="{}" cy="{}" r="4" fill="{}" fill-opacity="0.8">'
                                  "<title>{}</title></circle>",
                              ((x(d.seconds), top + 6 + (n * 7) % max(rows - 12, 1), colour(d.state, 0),
                                f"{d.label}: {duration(d.seconds)} ({d.state})") for n, d in enumerate(dots)))
    states = [s for s in ("met", "missed", "open", "due soon", "overdue") if any(d.state == s for d in dots)]
    return _svg(width, height, title, mark_safe(axis + lines + points + _legend(states, left, 4)))  # noqa: S308


def _join(template: str, rows) -> SafeString:
    """format_html_join with floats written to one decimal (format_html escapes arguments to text first)."""
    return format_html_join("", template, (tuple(f"{v:.1f}" if isinstance(v, float) else v for v in row)
                                           for row in rows))


def _svg(width: int, height: int, title: str, body: SafeString) -> SafeString:
    return format_html('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
                       'aria-label="{}" class="pdex-chart">{}</svg>', width, height, title, body)


def _clip(text: str, length: int = 24) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"
