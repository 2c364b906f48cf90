"""Inline SVG charts for the run report: horizontal bars, a stacked histogram, a line with a band, a scatter.

Pure functions from numbers to SVG markup, so a page shows its charts without JavaScript or any external
file. Every mark carries its data as attributes (``data-label``, ``data-series``, ``data-value``, ...) and a
``<title>`` that browsers show as a tooltip on hover; the report's browser test counts the marks.
Coordinates are in SVG user units; the ``viewBox`` lets the page scale a chart to its column width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import numpy as np

from pipelines.report.svg import (
    FONT,
    HIGHLIGHT_BAND,
    INK,
    MUTED,
    WIDTH,
    LinearScale,
    colour,
    fit,
    legend_block,
    mark,
    nice_ticks,
    num,
    reference_line,
    svg_document,
    text,
    text_width,
    title_block,
    x_axis,
    y_axis,
)


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
    legend_svg, legend_height = legend_block(legend, 8, 36, width - 16)
    top = 36 + legend_height + (14 if reference else 4)
    bar_height = 15 if len(values) > 1 else 18
    row_height = bar_height * len(values) + 10
    bottom = top + row_height * len(labels)
    scale = LinearScale((ticks[0], ticks[-1]), (left, right))

    body = [title_block(title, width), legend_svg]
    if highlight in labels:
        row_top = top + labels.index(highlight) * row_height
        body.append(
            f'<rect class="highlight" x="0" y="{num(row_top)}" width="{num(width)}" '
            f'height="{num(row_height)}" fill="{HIGHLIGHT_BAND}"/>'
        )
    body.append(x_axis(scale, ticks, top, bottom, axis_label))
    for row, label in enumerate(labels):
        colours = {
            name: bar_colours[row] if bar_colours is not None else series_colour[name] for name in values
        }
        bar_values = {name: column[row] for name, column in values.items()}
        row_top = top + row * row_height + 5
        body += _bar_row(
            label,
            bar_values,
            colours,
            row_top,
            row_height,
            bar_height,
            scale,
            label_width,
            value_format,
            label == highlight,
        )
    if reference:
        body.append(reference_line(reference, scale(reference[1]), top - 6, bottom))
    return svg_document(width, bottom + 42, title, "bar", body)


def _bar_row(
    label: str,
    values: Mapping[str, float],
    colours: Mapping[str, str],
    row_top: float,
    row_height: float,
    bar_height: float,
    scale: LinearScale,
    label_width: float,
    value_format: str,
    highlighted: bool,
) -> list[str]:
    """One row of a bar chart: its label and a bar with its printed value per series (n/a for NaN)."""
    zero = scale(0.0)
    row = [
        text(
            scale.p0 - 8,
            row_top + row_height / 2 - 1,
            fit(label, label_width - 10),
            anchor="end",
            class_="bar-label",
            fill=INK,
            font_weight=700 if highlighted else None,
        )
    ]
    for index, (name, value) in enumerate(values.items()):
        y = row_top + index * bar_height
        if not np.isfinite(value):
            row.append(text(zero + 4, y + bar_height - 4, "n/a", fill=MUTED, font_size=FONT - 1))
            continue
        x0, x1 = sorted((zero, scale(value)))
        shown_value = value_format.format(value)
        row.append(
            mark(
                "rect",
                f"{label} · {name}: {shown_value}",
                class_="bar",
                x=x0,
                y=y,
                width=max(x1 - x0, 0.0),
                height=bar_height - 2,
                rx=2.0,
                fill=colours[name],
                data_label=label,
                data_series=name,
                data_value=repr(float(value)),
            )
        )
        row.append(
            text(x1 + 4, y + bar_height - 5, shown_value, class_="bar-value", fill=MUTED, font_size=FONT - 1)
        )
    return row


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
    legend_svg, legend_height = legend_block(legend, left, 36, right - left)
    top, bottom = 40 + legend_height, height - 46
    x_ticks = nice_ticks(low, high)
    x_scale = LinearScale((x_ticks[0], x_ticks[-1]), (left, right))
    y_ticks = nice_ticks(0, float(stacked[-1].max()))
    y_scale = LinearScale((0, y_ticks[-1]), (bottom, top))

    body = [
        title_block(title, width),
        legend_svg,
        y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        x_axis(x_scale, x_ticks, bottom, bottom, x_label),
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
                mark(
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
    body.append(f'<line x1="{left}" x2="{right}" y1="{num(bottom)}" y2="{num(bottom)}" stroke="{MUTED}"/>')
    return svg_document(width, height, title, "histogram", body)


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
    legend_svg, legend_height = legend_block(legend, left, 36, right - left)
    top, bottom = 40 + legend_height, height - 46
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    if xs.max() - xs.min() <= 20 and np.all(xs == np.round(xs)):
        x_ticks = [float(v) for v in np.unique(xs)] if xs.size <= 12 else x_ticks
    x_scale = LinearScale((min(x_ticks[0], xs.min()), max(x_ticks[-1], xs.max())), (left + 10, right - 10))
    y_ticks = nice_ticks(float(np.nanmin(lows)), float(np.nanmax(highs)))
    y_scale = LinearScale((y_ticks[0], y_ticks[-1]), (bottom, top))

    body = [
        title_block(title, width),
        legend_svg,
        y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        x_axis(x_scale, x_ticks, bottom, bottom, x_label),
    ]
    if band:
        outline = [(x_scale(a), y_scale(b)) for a, b in zip(xs, highs, strict=True)]
        outline += [(x_scale(a), y_scale(b)) for a, b in zip(xs[::-1], lows[::-1], strict=True)]
        points = " ".join(f"{num(px)},{num(py)}" for px, py in outline)
        body.append(f'<polygon class="band" points="{points}" fill="#c6d4e3" fill-opacity="0.7"/>')
    path = " ".join(f"{num(x_scale(a))},{num(y_scale(b))}" for a, b in zip(xs, ys, strict=True))
    body.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour(0)}" stroke-width="2"/>')
    for a, b, lo, hi in zip(xs, ys, lows, highs, strict=True):
        tip = f"{x_label} {a:g}: {series_name} {b:.3f}" + (
            f" ({band_name} {lo:.3f} – {hi:.3f})" if band else ""
        )
        body.append(
            mark(
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
    return svg_document(width, height, title, "line", body)


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
    x_scale = LinearScale((x_ticks[0], x_ticks[-1]), (left, right))
    y_scale = LinearScale((y_ticks[0], y_ticks[-1]), (bottom, top))

    body = [
        title_block(title, width),
        y_axis(y_scale, y_ticks, left, right, y_label, (top + bottom) / 2),
        x_axis(x_scale, x_ticks, bottom, bottom, x_label),
    ]
    for i, (a, b, group) in enumerate(zip(xs, ys, labels, strict=True)):
        tip = point_titles[i] if point_titles is not None else f"{group}: ({a:.3f}, {b:.3f})"
        body.append(
            mark(
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
                f'<circle cx="{num(right + 26)}" cy="{num(top_y + 5)}" r="5" fill="{group_colour[name]}"/>'
                + text(right + 36, top_y + 9.5, f"{name}", fill=INK)
                + "</g>"
            )
        body.append(f'<g class="legend">{"".join(entries)}</g>')
    return svg_document(width, height, title, "scatter", body)
