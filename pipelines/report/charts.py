"""Inline SVG charts for the run report: horizontal bars, a stacked histogram, a line with a band, a scatter.

Pure functions from numbers to SVG markup, so a page shows its charts without JavaScript or any external
file. Every mark carries its data as attributes (``data-label``, ``data-series``, ``data-value``, ...) and a
``<title>`` that browsers show as a tooltip on hover; the report's browser test counts the marks.
Coordinates are in SVG user units; the ``viewBox`` lets the page scale a chart to its column width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

import numpy as np

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
    return [_clean(first + i * step, step) for i in range(n + 1)]


def _clean(value: float, step: float) -> float:
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


class _Linear:
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


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _attrs(**attributes: object) -> str:
    parts = []
    for name, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = _num(value)
        parts.append(f'{name.rstrip("_").replace("_", "-")}="{escape(str(value))}"')
    return " ".join(parts)


def _text(x: float, y: float, content: str, *, anchor: str = "start", **attributes: object) -> str:
    return f"<text {_attrs(x=x, y=y, text_anchor=anchor, **attributes)}>{escape(content)}</text>"


def _mark(tag: str, tooltip: str, **attributes: object) -> str:
    """A data mark (bar, bin, point) with its tooltip as an SVG ``<title>``."""
    return f"<{tag} {_attrs(**attributes)}><title>{escape(tooltip)}</title></{tag}>"


def _svg(width: float, height: float, title: str, kind: str, body: list[str]) -> str:
    head = _attrs(
        class_="chart-svg",
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {_num(width)} {_num(height)}",
        width=width,
        height=height,
        role="img",
        aria_label=title,
        data_kind=kind,
        font_size=FONT,
    )
    return f"<svg {head}><title>{escape(title)}</title>{''.join(body)}</svg>"


def _title(title: str, width: float) -> str:
    return _text(
        width / 2,
        22,
        title,
        anchor="middle",
        class_="chart-title",
        font_size=TITLE_FONT,
        font_weight=600,
        fill=INK,
    )


def _legend(entries: Sequence[tuple[str, str]], x: float, y: float, max_width: float) -> tuple[str, float]:
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
                f'<rect x="{_num(cursor)}" y="{_num(top)}" width="10" height="10" rx="2" fill="{fill}"/>'
                + _text(cursor + 14, top + 9.5, name, fill=INK)
                + "</g>"
            )
            cursor += entry_width
    height = len(rows) * line if entries else 0
    return f'<g class="legend">{"".join(parts)}</g>', height


def _x_axis(scale: _Linear, ticks: list[float], top: float, bottom: float, label: str) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for tick in ticks:
        x = scale(tick)
        parts.append(
            f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{_num(top)}" y2="{_num(bottom)}" stroke="{GRID}"/>'
        )
        parts.append(_text(x, bottom + 15, format_tick(tick, step), anchor="middle", fill=MUTED))
    middle = (scale.p0 + scale.p1) / 2
    parts.append(_text(middle, bottom + 33, label, anchor="middle", class_="axis-label", fill=INK))
    return f'<g class="axis x-axis">{"".join(parts)}</g>'


def _y_axis(scale: _Linear, ticks: list[float], left: float, right: float, label: str, mid: float) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    parts = []
    for tick in ticks:
        y = scale(tick)
        parts.append(
            f'<line x1="{_num(left)}" x2="{_num(right)}" y1="{_num(y)}" y2="{_num(y)}" stroke="{GRID}"/>'
        )
        parts.append(_text(left - 6, y + 4, format_tick(tick, step), anchor="end", fill=MUTED))
    parts.append(
        _text(
            14,
            mid,
            label,
            anchor="middle",
            class_="axis-label",
            fill=INK,
            transform=f"rotate(-90 14 {_num(mid)})",
        )
    )
    return f'<g class="axis y-axis">{"".join(parts)}</g>'


def bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    axis_label: str,
    highlight: str | None = None,
    bar_colours: Sequence[str] | None = None,
    legend: Sequence[tuple[str, str]] | None = None,
    reference: tuple[str, float] | None = None,
    value_format: str = "{:.3f}",
    width: float = WIDTH,
) -> str:
    """Horizontal bars, one row per label and one bar per series in each row.

    Args:
        labels: row names, top to bottom.
        series: series name → one value per label (NaN draws no bar). Series get palette colours.
        highlight: a label whose row gets a shaded band and a bold name.
        bar_colours: with a single series, one colour per label instead of the series colour.
        legend: (name, colour) entries; default one entry per series when there are several.
        reference: (name, value) drawn as a dashed vertical line, e.g. a ceiling.
        value_format: format of the value printed after each bar and in its tooltip.
    """
    labels = [str(label) for label in labels]
    values = {name: np.asarray(column, dtype=float) for name, column in series.items()}
    for name, column in values.items():
        if column.shape != (len(labels),):
            raise ValueError(f"series {name!r} has {column.size} values for {len(labels)} labels")
    if not labels or not values:
        raise ValueError("a bar chart needs at least one label and one series")
    if bar_colours is not None and (len(values) != 1 or len(bar_colours) != len(labels)):
        raise ValueError("bar_colours needs exactly one series and one colour per label")
    series_colour = {name: colour(i) for i, name in enumerate(values)}
    if legend is None:
        legend = [(name, series_colour[name]) for name in values] if len(values) > 1 else []

    finite = np.concatenate([column[np.isfinite(column)] for column in values.values()])
    extremes = [0.0, *finite.tolist(), *([reference[1]] if reference else [])]
    ticks = nice_ticks(min(extremes), max(extremes))

    label_width = min(max(text_width(label) for label in labels) + 14, width * 0.38)
    left, right = label_width + 8, width - 8 - text_width(value_format.format(max(extremes, key=abs)))
    legend_svg, legend_height = _legend(legend, 8, 36, width - 16)
    top = 36 + legend_height + (14 if reference else 4)
    bar_height = 15 if len(values) > 1 else 18
    row_height = bar_height * len(values) + 10
    bottom = top + row_height * len(labels)
    scale = _Linear((ticks[0], ticks[-1]), (left, right))
    zero = scale(0.0)

    body = [_title(title, width), legend_svg]
    if highlight in labels:
        row_top = top + labels.index(highlight) * row_height
        body.append(
            f'<rect class="highlight" x="0" y="{_num(row_top)}" width="{_num(width)}" '
            f'height="{_num(row_height)}" fill="{HIGHLIGHT_BAND}"/>'
        )
    body.append(_x_axis(scale, ticks, top, bottom, axis_label))
    for row, label in enumerate(labels):
        row_top = top + row * row_height + 5
        weight = 700 if label == highlight else None
        body.append(
            _text(
                left - 8,
                row_top + row_height / 2 - 1,
                _fit(label, label_width - 10),
                anchor="end",
                class_="bar-label",
                fill=INK,
                font_weight=weight,
            )
        )
        for index, (name, column) in enumerate(values.items()):
            value = column[row]
            y = row_top + index * bar_height
            if not np.isfinite(value):
                body.append(_text(zero + 4, y + bar_height - 4, "n/a", fill=MUTED, font_size=FONT - 1))
                continue
            x0, x1 = sorted((zero, scale(value)))
            fill = bar_colours[row] if bar_colours is not None else series_colour[name]
            shown_value = value_format.format(value)
            body.append(
                _mark(
                    "rect",
                    f"{label} · {name}: {shown_value}",
                    class_="bar",
                    x=x0,
                    y=y,
                    width=max(x1 - x0, 0.0),
                    height=bar_height - 2,
                    rx=2.0,
                    fill=fill,
                    data_label=label,
                    data_series=name,
                    data_value=repr(float(value)),
                )
            )
            body.append(
                _text(
                    x1 + 4,
                    y + bar_height - 5,
                    shown_value,
                    class_="bar-value",
                    fill=MUTED,
                    font_size=FONT - 1,
                )
            )
    if reference:
        body.append(_reference_line(reference, scale(reference[1]), top - 6, bottom))
    return _svg(width, bottom + 42, title, "bar", body)


def _fit(label: str, width: float) -> str:
    """``label``, cut with an ellipsis where it would be wider than ``width``."""
    if text_width(label) <= width:
        return label
    return label[: max(1, int(width / (FONT * CHAR_WIDTH)) - 1)] + "…"


def _reference_line(reference: tuple[str, float], x: float, top: float, bottom: float) -> str:
    name, value = reference
    line = _attrs(x1=x, x2=x, y1=top, y2=bottom, stroke=INK, stroke_width=1.5, stroke_dasharray="5 3")
    return (
        f'<g class="reference" data-value="{float(value)!r}"><line {line}/>'
        + _text(x - 2, top - 3, name, anchor="end", fill=INK, font_size=FONT - 1)
        + "</g>"
    )


def histogram(
    groups: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    y_label: str = "count",
    bins: int = 30,
    width: float = WIDTH,
    height: float = 320,
) -> str:
    """Histogram of values, stacked by group (one colour and legend entry per group when there are several).

    Bins are equal-width over the range of all finite values; each ``rect.bin`` carries ``data-series``,
    ``data-count``, ``data-low`` and ``data-high``.
    """
    values = {name: np.asarray(column, dtype=float) for name, column in groups.items()}
    values = {name: column[np.isfinite(column)] for name, column in values.items()}
    pooled = np.concatenate(list(values.values())) if values else np.empty(0)
    if pooled.size == 0:
        raise ValueError("a histogram needs at least one finite value")
    low, high = float(pooled.min()), float(pooled.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = {name: np.histogram(column, bins=edges)[0] for name, column in values.items()}
    stacked = np.cumsum(np.vstack(list(counts.values())), axis=0)

    legend = [(name, colour(i)) for i, name in enumerate(values)] if len(values) > 1 else []
    left, right = 58, width - 16
    legend_svg, legend_height = _legend(legend, left, 36, right - left)
    top, bottom = 40 + legend_height, height - 46
    x_ticks = nice_ticks(low, high)
    x_scale = _Linear((x_ticks[0], x_ticks[-1]), (left, right))
    y_ticks = nice_ticks(0, float(stacked[-1].max()))
    y_scale = _Linear((0, y_ticks[-1]), (bottom, top))

    body = [
        _title(title, width),
        legend_svg,
        _y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        _x_axis(x_scale, x_ticks, bottom, bottom, x_label),
    ]
    for index, (name, count) in enumerate(counts.items()):
        below = stacked[index - 1] if index else np.zeros_like(count)
        for b, n in enumerate(count):
            if n == 0:
                continue
            x0, x1 = x_scale(edges[b]), x_scale(edges[b + 1])
            y0, y1 = y_scale(below[b] + n), y_scale(below[b])
            tip = f"{name}: {n} in [{edges[b]:.3g}, {edges[b + 1]:.3g})"
            body.append(
                _mark(
                    "rect",
                    tip,
                    class_="bin",
                    x=x0 + 0.5,
                    y=y0,
                    width=max(x1 - x0 - 1, 0.5),
                    height=y1 - y0,
                    fill=colour(index),
                    data_series=name,
                    data_count=int(n),
                    data_low=repr(float(edges[b])),
                    data_high=repr(float(edges[b + 1])),
                )
            )
    body.append(f'<line x1="{left}" x2="{right}" y1="{_num(bottom)}" y2="{_num(bottom)}" stroke="{MUTED}"/>')
    return _svg(width, height, title, "histogram", body)


def line_chart(
    x: Sequence[float],
    y: Sequence[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    series_name: str = "mean",
    band: tuple[Sequence[float], Sequence[float]] | None = None,
    band_name: str = "range",
    width: float = WIDTH,
    height: float = 320,
) -> str:
    """One series as a line with a point per x, optionally over a shaded band (low, high) per x."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.size == 0:
        raise ValueError(f"x and y need the same non-zero length, got {xs.size} and {ys.size}")
    lows, highs = (np.asarray(b, dtype=float) for b in band) if band else (ys, ys)
    legend = [(series_name, colour(0))] + ([(band_name, "#c6d4e3")] if band else [])
    left, right = 58, width - 16
    legend_svg, legend_height = _legend(legend, left, 36, right - left)
    top, bottom = 40 + legend_height, height - 46
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    if xs.max() - xs.min() <= 20 and np.all(xs == np.round(xs)):
        x_ticks = [float(v) for v in np.unique(xs)] if xs.size <= 12 else x_ticks
    x_scale = _Linear((min(x_ticks[0], xs.min()), max(x_ticks[-1], xs.max())), (left + 10, right - 10))
    y_ticks = nice_ticks(float(np.nanmin(lows)), float(np.nanmax(highs)))
    y_scale = _Linear((y_ticks[0], y_ticks[-1]), (bottom, top))

    body = [
        _title(title, width),
        legend_svg,
        _y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        _x_axis(x_scale, x_ticks, bottom, bottom, x_label),
    ]
    if band:
        outline = [(x_scale(a), y_scale(b)) for a, b in zip(xs, highs, strict=True)]
        outline += [(x_scale(a), y_scale(b)) for a, b in zip(xs[::-1], lows[::-1], strict=True)]
        points = " ".join(f"{_num(px)},{_num(py)}" for px, py in outline)
        body.append(f'<polygon class="band" points="{points}" fill="#c6d4e3" fill-opacity="0.7"/>')
    path = " ".join(f"{_num(x_scale(a))},{_num(y_scale(b))}" for a, b in zip(xs, ys, strict=True))
    body.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour(0)}" stroke-width="2"/>')
    for a, b, lo, hi in zip(xs, ys, lows, highs, strict=True):
        tip = f"{x_label} {a:g}: {series_name} {b:.3f}" + (
            f" ({band_name} {lo:.3f} – {hi:.3f})" if band else ""
        )
        body.append(
            _mark(
                "circle",
                tip,
                class_="point",
                cx=x_scale(a),
                cy=y_scale(b),
                r=3.5,
                fill=colour(0),
                data_x=repr(float(a)),
                data_value=repr(float(b)),
            )
        )
    return _svg(width, height, title, "line", body)


def scatter_chart(
    x: Sequence[float],
    y: Sequence[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    groups: Sequence[str] | None = None,
    point_titles: Sequence[str] | None = None,
    width: float = WIDTH,
    height: float = 460,
) -> str:
    """Points coloured by group, with a legend (groups ordered by size, then name) at the right.

    Each ``circle.point`` carries ``data-group``; ``point_titles`` become their tooltips.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.size == 0:
        raise ValueError(f"x and y need the same non-zero length, got {xs.size} and {ys.size}")
    labels = np.asarray(["all items"] * xs.size if groups is None else [str(g) for g in groups], dtype=object)
    if labels.size != xs.size:
        raise ValueError(f"{labels.size} groups for {xs.size} points")
    names, sizes = np.unique(labels, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-sizes[i], names[i]))
    group_colour = {names[i]: colour(rank) for rank, i in enumerate(order)}
    legend_width = 0 if groups is None else max(text_width(str(names[i])) for i in order) + 40
    left, right = 58, width - 16 - legend_width
    top, bottom = 40, height - 46
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    y_ticks = nice_ticks(float(ys.min()), float(ys.max()))
    x_scale = _Linear((x_ticks[0], x_ticks[-1]), (left, right))
    y_scale = _Linear((y_ticks[0], y_ticks[-1]), (bottom, top))

    body = [
        _title(title, width),
        _y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        _x_axis(x_scale, x_ticks, bottom, bottom, x_label),
    ]
    for i, (a, b, group) in enumerate(zip(xs, ys, labels, strict=True)):
        tip = point_titles[i] if point_titles is not None else f"{group}: ({a:.3f}, {b:.3f})"
        body.append(
            _mark(
                "circle",
                str(tip),
                class_="point",
                cx=x_scale(a),
                cy=y_scale(b),
                r=3.2,
                fill=group_colour[group],
                fill_opacity=0.78,
                stroke="#ffffff",
                stroke_width=0.5,
                data_group=group,
            )
        )
    if groups is not None:
        entries = []
        for row, i in enumerate(order):
            name, top_y = str(names[i]), top + row * (FONT + 8)
            entries.append(
                f'<g class="legend-entry" data-name="{escape(name)}" data-count="{int(sizes[i])}">'
                f'<circle cx="{_num(right + 26)}" cy="{_num(top_y + 5)}" r="5" fill="{group_colour[name]}"/>'
                + _text(right + 36, top_y + 9.5, f"{name}", fill=INK)
                + "</g>"
            )
        body.append(f'<g class="legend">{"".join(entries)}</g>')
    return _svg(width, height, title, "scatter", body)
