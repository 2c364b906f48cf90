"""The SVG primitives the report's charts are drawn with: the palette, axis ticks, a linear scale,
text and marks with tooltips, titles, legends and axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH = 600
FONT = 12
TITLE_FONT = 15
CHAR_WIDTH = 0.62  # average glyph width of the sans-serif font, as a fraction of its size
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
INK = "#1f2933"
MUTED = "#616e7c"
GRID = "#e4e7eb"
HIGHLIGHT_BAND = "#fff3c4"


def colour(index: int) -> str:
    """The ``index``-th categorical colour, cycling through :data:`PALETTE`."""
    return PALETTE[index % len(PALETTE)]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10ⁿ) covering ``[low, high]``.

    The first tick is at or below ``low`` and the last at or above ``high``, so they make the axis domain.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got [{low}, {high}]")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw_step = (high - low) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    n = int(round((last - first) / step))
    return [clean(first + i * step, step) for i in range(n + 1)]


def clean(value: float, step: float) -> float:
    decimals = max(0, -math.floor(math.log10(step)) + 2)
    rounded = round(value, decimals)
    return 0.0 if rounded == 0 else rounded


def format_tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (``0.25`` → 2, ``5`` → 0)."""
    if step >= 1 and float(value).is_integer():
        return f"{value:,.0f}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(step * 10**decimals, round(step * 10**decimals)):
        decimals += 1
    return f"{value:,.{decimals}f}"


class LinearScale:
    """Maps a data interval onto a pixel interval."""

    def __init__(self, domain: tuple[float, float], pixels: tuple[float, float]):
        self.d0, self.d1 = domain
        self.p0, self.p1 = pixels

    def __call__(self, value: float) -> float:
        if self.d1 == self.d0:
            return (self.p0 + self.p1) / 2
        return self.p0 + (value - self.d0) / (self.d1 - self.d0) * (self.p1 - self.p0)


def text_width(text: str, size: float = FONT) -> float:
    """Estimated rendered width of ``text`` at font ``size`` (no font metrics are available offline)."""
    return len(text) * size * CHAR_WIDTH


def num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def attrs(**attributes: object) -> str:
    parts = []
    for name, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = num(value)
        parts.append(f'{name.rstrip("_").replace("_", "-")}="{escape(str(value))}"')
    return " ".join(parts)


def text(x: float, y: float, content: str, *, anchor: str = "start", **attributes: object) -> str:
    return f"<text {attrs(x=x, y=y, text_anchor=anchor, **attributes)}>{escape(content)}</text>"


def mark(tag: str, tooltip: str, **attributes: object) -> str:
    """A data mark (bar, bin, point) with its tooltip as an SVG ``<title>``."""
    return f"<{tag} {attrs(**attributes)}><title>{escape(tooltip)}</title></{tag}>"


def svg_document(width: float, height: float, title: str, kind: str, body: list[str]) -> str:
    head = attrs(
        class_="chart-svg",
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {num(width)} {num(height)}",
        width=width,
        height=height,
        role="img",
        aria_label=title,
        data_kind=kind,
        font_size=FONT,
    )
    return f"<svg {head}><title>{escape(title)}</title>{''.join(body)}</svg>"


def title_block(title: str, width: float) -> str:
    return text(
        width / 2,
        22,
        title,
        anchor="middle",
        class_="chart-title",
        font_size=TITLE_FONT,
        font_weight=600,
        fill=INK,
    )


def legend_block(
    entries: Sequence[tuple[str, str]], x: float, y: float, max_width: float
) -> tuple[str, float]:
    """Legend entries (name, colour) in rows centred over ``[x, x + max_width]`` from ``y``.

    Returns the markup and the height it takes.
    """
    rows: list[list[tuple[str, str, float]]] = [[]]
    for name, fill in entries:
        entry_width = 14 + text_width(name) + 16
        row_width = sum(width for _, _, width in rows[-1])
        if rows[-1] and row_width + entry_width > max_width:
            rows.append([])
        rows[-1].append((name, fill, entry_width))
    parts, line = [], FONT + 8
    for row_index, row in enumerate(rows):
        cursor = x + max(0.0, (max_width - sum(width for _, _, width in row) + 16) / 2)
        top = y + row_index * line
        for name, fill, entry_width in row:
            parts.append(
                f'<g class="legend-entry" data-name="{escape(name)}">'
                f'<rect x="{num(cursor)}" y="{num(top)}" width="10" height="10" rx="2" fill="{fill}"/>'
                + text(cursor + 14, top + 9.5, name, fill=INK)
                + "</g>"
            )
            cursor += entry_width
    height = len(rows) * line if entries else 0
    return f'<g class="legend">{"".join(parts)}</g>', height


def x_axis(scale: LinearScale, ticks: list[float], top: float, bottom: float, label: str) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for tick in ticks:
        x = scale(tick)
        parts.append(
            f'<line x1="{num(x)}" x2="{num(x)}" y1="{num(top)}" y2="{num(bottom)}" stroke="{GRID}"/>'
        )
        parts.append(text(x, bottom + 15, format_tick(tick, step), anchor="middle", fill=MUTED))
    middle = (scale.p0 + scale.p1) / 2
    parts.append(text(middle, bottom + 33, label, anchor="middle", class_="axis-label", fill=INK))
    return f'<g class="axis x-axis">{"".join(parts)}</g>'


def y_axis(scale: LinearScale, ticks: list[float], left: float, right: float, label: str, mid: float) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for tick in ticks:
        y = scale(tick)
        parts.append(
            f'<line x1="{num(left)}" x2="{num(right)}" y1="{num(y)}" y2="{num(y)}" stroke="{GRID}"/>'
        )
        parts.append(text(left - 6, y + 4, format_tick(tick, step), anchor="end", fill=MUTED))
    parts.append(
        text(
            14,
            mid,
            label,
            anchor="middle",
            class_="axis-label",
            fill=INK,
            transform=f"rotate(-90 14 {num(mid)})",
        )
    )
    return f'<g class="axis y-axis">{"".join(parts)}</g>'


def fit(label: str, width: float) -> str:
    """``label``, cut with an ellipsis where it would be wider than ``width``."""
    if text_width(label) <= width:
        return label
    return label[: max(1, int(width / (FONT * CHAR_WIDTH)) - 1)] + "…"


def reference_line(reference: tuple[str, float], x: float, top: float, bottom: float) -> str:
    name, value = reference
    line = attrs(x1=x, x2=x, y1=top, y2=bottom, stroke=INK, stroke_width=1.5, stroke_dasharray="5 3")
    return (
        f'<g class="reference" data-value="{float(value)!r}"><line {line}/>'
        + text(x - 2, top - 3, name, anchor="end", fill=INK, font_size=FONT - 1)
        + "</g>"
    )
