"""Charts as inline SVG, rendered on the server: pure functions from numbers to markup (no script,
no inline style, so the pages keep their strict Content-Security-Policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999")
OUTCOME_COLOURS = {"success": "#009E73", "partial": "#E69F00", "failure": "#D55E00", "error": "#CC79A7"}


def _nice_max(value: int) -> int:
    """The top of the y axis: four equal whole-number steps of 1, 2 or 5 times a power of ten that
    reach ``value`` (so every gridline is a count)."""
    need = max(-(-value // 4), 1)
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= need:
                return 4 * step * m
        step *= 10


def stacked_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    *,
    title: str,
    colours: Mapping[str, str] | None = None,
    width: int = 760,
    height: int = 240,
    label_every: int = 3,
) -> Markup:
    """Bars per label (e.g. per hour), each stacked from the series in order, with a y axis, a legend
    and a tooltip (SVG ``title``) on every segment."""
    left, right, top, bottom = 44, 10, 26, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    y_max = _nice_max(max(totals, default=0))
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.7, 1.0)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
    ]
    for i in range(5):
        value = y_max * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">{value:g}</text>')
    colour_of = dict(colours or {})
    for n, name in enumerate(series):
        colour_of.setdefault(name, PALETTE[n % len(PALETTE)])
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        base = 0
        for name, values in series.items():
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / y_max
            y = top + plot_h - plot_h * base / y_max - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour_of[name]}">'
                f"<title>{escape(label)}: {escape(name)} {v}</title></rect>"
            )
            base += v
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" class="axis" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    lx, ly = left, height - 12
    for name in series:
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour_of[name]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{ly}" class="legend">{escape(name)}</text>')
        lx += 22 + 7 * len(name)
    if not any(totals):
        parts.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" class="empty" '
            'text-anchor="middle">nothing recorded in this period</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def usage_bar(used: int, total: int, *, title: str, width: int = 760, height: int = 56) -> Markup:
    """One horizontal bar: ``used`` of ``total`` (bytes), with the share as text."""
    share = used / total if total else 0.0
    inner = width - 2
    return Markup(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text x="1" y="14" class="chart-title">{escape(title)}</text>'
        f'<rect x="1" y="22" width="{inner}" height="22" class="track"/>'
        f'<rect x="1" y="22" width="{inner * share:.1f}" height="22" fill="{PALETTE[0]}"/>'
        f'<text x="{width - 4}" y="38" class="axis" text-anchor="end">{share:.1%}</text></svg>'
    )
