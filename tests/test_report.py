"""The per-run HTML report: chart helpers on known numbers, degraded run folders, and a real run's report
opened in headless Chromium (loads without errors, every chart drawn, a screenshot kept as a CI artifact)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import chromium_available, dump_dom, parse_elements, png_size, screenshot

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from m6rec.errors import M6RecError  # noqa: E402
from pipelines.report import MAX_PROJECTED_ITEMS, TOP_FEATURES, charts, pca_2d, write_report  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CHARTS = (
    "metrics",
    "recall-ceiling",
    "feature-importance",
    "score-histogram",
    "score-by-rank",
    "embeddings",
    "timings",
)


def _marks(svg_or_page: str, tag: str, css_class: str, chart: str | None = None):
    return [
        element
        for element in parse_elements(svg_or_page)
        if element.tag == tag and css_class in element.classes and (chart is None or element.chart == chart)
    ]


def test_bar_lengths_are_proportional_to_values_from_a_common_zero():
    svg = charts.bar_chart(["a", "b", "c"], {"share": [1.0, 2.0, 4.0]}, title="t", axis_label="x")
    bars = _marks(svg, "rect", "bar")
    assert [bar.attrs["data-label"] for bar in bars] == ["a", "b", "c"]
    assert [float(bar.attrs["data-value"]) for bar in bars] == [1.0, 2.0, 4.0]
    widths = np.array([float(bar.attrs["width"]) for bar in bars])
    np.testing.assert_allclose(widths / widths[0], [1.0, 2.0, 4.0], rtol=1e-3)
    assert len({bar.attrs["x"] for bar in bars}) == 1


def test_negative_bars_extend_left_of_zero():
    svg = charts.bar_chart(["loss", "gain"], {"v": [-1.0, 3.0]}, title="t", axis_label="x")
    loss, gain = _marks(svg, "rect", "bar")
    zero = float(gain.attrs["x"])
    assert float(loss.attrs["x"]) + float(loss.attrs["width"]) == pytest.approx(zero, abs=0.01)
    assert float(gain.attrs["width"]) == pytest.approx(3 * float(loss.attrs["width"]), rel=1e-3)


def test_grouped_bars_have_one_bar_per_label_and_series_a_legend_and_a_highlighted_row():
    svg = charts.bar_chart(
        ["final", "ease", "popularity"],
        {"NDCG@10": [0.3, 0.25, 0.1], "Recall@10": [0.4, 0.35, 0.2]},
        title="t",
        axis_label="x",
        highlight="final",
    )
    bars = _marks(svg, "rect", "bar")
    assert [(bar.attrs["data-label"], bar.attrs["data-series"]) for bar in bars] == [
        (label, series) for label in ("final", "ease", "popularity") for series in ("NDCG@10", "Recall@10")
    ]
    assert [entry.attrs["data-name"] for entry in _marks(svg, "g", "legend-entry")] == [
        "NDCG@10",
        "Recall@10",
    ]
    assert len(_marks(svg, "rect", "highlight")) == 1
    bold = [label.all_text() for label in _marks(svg, "text", "bar-label") if label.attrs.get("font-weight")]
    assert bold == ["final"]


def test_bar_chart_rejects_mismatched_series():
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        charts.bar_chart(["a", "b", "c"], {"v": [1.0, 2.0]}, title="t", axis_label="x")


def test_nice_ticks_cover_the_range_in_round_steps():
    assert charts.nice_ticks(0, 0.53) == [0.0, 0.2, 0.4, 0.6]
    assert charts.nice_ticks(0, 1373) == [0.0, 500.0, 1000.0, 1500.0]
    assert charts.nice_ticks(-0.63, 0.92) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert charts.nice_ticks(0, 125) == [0.0, 25.0, 50.0, 75.0, 100.0, 125.0]


def test_histogram_bins_count_every_value_and_stack_groups():
    svg = charts.histogram(
        {"ranker": [0.0, 0.0, 1.0, 2.0], "popularity": [2.0, 2.0]}, title="t", x_label="s", bins=2
    )
    bins = _marks(svg, "rect", "bin")
    counts = {(b.attrs["data-series"], float(b.attrs["data-low"])): int(b.attrs["data-count"]) for b in bins}
    assert counts == {("ranker", 0.0): 2, ("ranker", 1.0): 2, ("popularity", 1.0): 2}
    heights = {key: float(b.attrs["height"]) for key, b in zip(counts, bins, strict=True)}
    assert heights[("ranker", 0.0)] == pytest.approx(heights[("popularity", 1.0)], rel=1e-3)
    lower, upper = bins[1], bins[2]  # the second bin: ranker below, popularity stacked on top
    assert float(upper.attrs["y"]) + float(upper.attrs["height"]) == pytest.approx(
        float(lower.attrs["y"]), abs=0.01
    )


def test_scatter_has_a_point_per_row_and_a_legend_entry_per_group_largest_first():
    groups = ["jazz"] * 3 + ["hiking"] * 5 + ["cooking"]
    svg = charts.scatter_chart(
        np.arange(9.0), np.arange(9.0) ** 2, title="t", x_label="x", y_label="y", groups=groups
    )
    points = _marks(svg, "circle", "point")
    assert [point.attrs["data-group"] for point in points] == groups
    entries = _marks(svg, "g", "legend-entry")
    assert [entry.attrs["data-name"] for entry in entries] == ["hiking", "jazz", "cooking"]
    legend_colour = {entry.attrs["data-name"]: entry.children[0].attrs["fill"] for entry in entries}
    assert all(point.attrs["fill"] == legend_colour[point.attrs["data-group"]] for point in points)


def test_line_chart_draws_a_point_per_x_over_its_band():
    svg = charts.line_chart(
        [1, 2, 3],
        [0.9, 0.5, 0.2],
        title="t",
        x_label="rank",
        y_label="score",
        band=([0.8, 0.4, 0.1], [1, 0.6, 0.3]),
    )
    assert [float(p.attrs["data-value"]) for p in _marks(svg, "circle", "point")] == [0.9, 0.5, 0.2]
    (band,) = _marks(svg, "polygon", "band")
    assert len(band.attrs["points"].split()) == 6


def test_chart_text_is_escaped():
    svg = charts.bar_chart(['<script>alert("x")</script>'], {"v": [1.0]}, title="a & b", axis_label="<x>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg


def test_pca_recovers_the_main_direction_with_a_fixed_sign():
    along = np.array([-2.0, -1.0, 1.0, 2.0])
    across = np.array([0.5, -0.5, -0.5, 0.5])
    vectors = np.stack([along, np.zeros(4), across], axis=1) + 3.0
    coordinates, explained = pca_2d(vectors)
    np.testing.assert_allclose(coordinates[:, 0], along, atol=1e-12)
    np.testing.assert_allclose(np.abs(coordinates[:, 1]), np.abs(across), atol=1e-12)
    np.testing.assert_allclose(explained, [10.0 / 11.0, 1.0 / 11.0], rtol=1e-9)
    flipped, _ = pca_2d(-vectors)  # same components; the sign rule keeps their orientation
    np.testing.assert_allclose(flipped, -coordinates, atol=1e-12)


def test_a_folder_without_run_json_is_refused(tmp_path):
    with pytest.raises(M6RecError, match="run.json"):
        write_report(tmp_path)


def test_a_run_without_test_set_ranker_or_embeddings_gets_notes_not_errors(tmp_path):
    summary = {
        "m6rec_version": "0.1.0",
        "data_dir": str(tmp_path / "gone"),
        "protocol": "no test set: trained on all interactions <all>",
        "counts": {"users": 3, "items": 4, "train_interactions": 9, "test_interactions": 0},
        "selected_model": "ease",
        "models": {"ease": {"params": {}, "validation_ndcg": 0.4, "seconds": 0.1}},
        "ranker": None,
        "embeddings": None,
        "timings_seconds": {"load": 0.1, "candidates": 0.2},
    }
    (tmp_path / "run.json").write_text(json.dumps(summary))
    (tmp_path / "ranker").mkdir()  # left over from an earlier run into the same folder: not this run's
    (tmp_path / "ranker" / "importance.json").write_text(
        json.dumps([{"feature": "f", "gain": 1.0, "split": 1}])
    )
    path = write_report(tmp_path, tmp_path / "out" / "page.html")
    page = path.read_text()
    figures = [element.attrs["data-chart"] for element in parse_elements(page) if element.tag == "figure"]
    assert figures == ["timings"]
    notes = " ".join(element.all_text() for element in parse_elements(page) if "note" in element.classes)
    for expected in (
        "no test set",
        "trained no ranker",
        "computed no embeddings",
        "No scored recommendations",
    ):
        assert expected in notes, expected
    assert "&lt;all&gt;" in page and "<all>" not in page
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.html"]


@pytest.fixture(scope="module")
def report_run(copy_trained_demo_run, tmp_path_factory) -> Path:
    """A copy of the shared demo run (``conftest.trained_demo_run``: text, audio, KG and collaborative
    embeddings, ranker), next to its catalogue, with its report written."""
    out = copy_trained_demo_run(tmp_path_factory.mktemp("report")).run_dir
    write_report(out)
    return out


def _expected_marks(run_dir: Path) -> dict[str, tuple[str, str, int]]:
    """Per chart: (tag, class, how many marks) computed from the run folder's own files."""
    from m6rec.embeddings.store import read_embeddings

    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "run.json").read_text())
    importance = json.loads((run_dir / "ranker" / "importance.json").read_text())
    recs = pd.read_parquet(run_dir / "recommendations.parquet")
    fused = read_embeddings(run_dir / "features" / "fused.parquet")
    cut_offs = [key for key in metrics["final"] if key.startswith("ndcg@")]
    embeddings = summary["embeddings"]
    embedding_parts = [embeddings, embeddings["collaborative"], embeddings["fold"]]
    n_timings = len(summary["timings_seconds"]) + len(summary["models"])
    n_timings += sum(len(part["timings_seconds"]) for part in embedding_parts)
    return {
        "metrics": ("rect", "bar", 2 * len(metrics)),
        "recall-ceiling": ("rect", "bar", 1 + 2 * len(cut_offs)),
        "feature-importance": ("rect", "bar", min(TOP_FEATURES, sum(row["gain"] > 0 for row in importance))),
        "score-by-rank": ("circle", "point", recs["rank"].nunique()),
        "embeddings": ("circle", "point", min(MAX_PROJECTED_ITEMS, int(fused.valid.sum()))),
        "timings": ("rect", "bar", n_timings),
    }


def _check_charts(elements, run_dir: Path) -> None:
    for chart, (tag, css_class, count) in _expected_marks(run_dir).items():
        marks = [e for e in elements if e.tag == tag and css_class in e.classes and e.chart == chart]
        assert len(marks) == count, chart
    recs = pd.read_parquet(run_dir / "recommendations.parquet")
    bins = [e for e in elements if e.tag == "rect" and "bin" in e.classes and e.chart == "score-histogram"]
    assert sum(int(b.attrs["data-count"]) for b in bins) == len(recs)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    ndcg_bars = [e for e in elements if e.chart == "metrics" and e.attrs.get("data-series") == "NDCG@10"]
    drawn = {bar.attrs["data-label"].split(" (")[0]: float(bar.attrs["data-value"]) for bar in ndcg_bars}
    assert drawn == {name: source["ndcg@10"] for name, source in metrics.items()}
    (ceiling,) = [e for e in elements if e.chart == "recall-ceiling" and "reference" in e.classes]
    assert float(ceiling.attrs["data-value"]) == metrics["final"]["candidate_recall"]

    items = pd.read_parquet(run_dir.parent / "catalogue" / "items.parquet")
    legend = [
        e.attrs["data-name"] for e in elements if e.chart == "embeddings" and "legend-entry" in e.classes
    ]
    assert sorted(legend) == sorted(items["category"].unique())
    groups = {e.attrs["data-group"] for e in elements if e.chart == "embeddings" and "point" in e.classes}
    assert groups == set(legend)


def test_report_charts_are_in_the_page_itself_without_javascript(report_run):
    elements = parse_elements((report_run / "report.html").read_text())
    assert [e.attrs["data-chart"] for e in elements if e.tag == "figure"] == list(CHARTS)
    assert not [e for e in elements if "note" in e.classes]
    _check_charts(elements, report_run)


def test_the_report_says_when_image_vectors_come_from_random_init_weights(report_run, tmp_path):
    import numpy as np

    from m6rec.embeddings.store import write_embeddings

    run_dir = shutil.copytree(report_run, tmp_path / "run", symlinks=True)
    metadata = {
        "encoder": "image",
        "weights": "random-init (seed 0)",
        "modality": "image",
        "pretrained": False,
    }
    write_embeddings(
        run_dir / "features" / "image.parquet",
        "item_id",
        ["a", "b"],
        np.eye(2, dtype=np.float32),
        metadata=metadata,
    )
    elements = parse_elements(write_report(run_dir).read_text())
    notes = [e.text for e in elements if "note" in e.classes]
    assert (
        len(notes) == 1 and "image vectors come from random-init weights (random-init (seed 0))" in notes[0]
    )


def test_report_without_a_test_set_or_dataset_still_draws_what_it_can(report_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(report_run, run_dir, symlinks=True)
    (run_dir / "metrics.json").unlink()
    summary = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**summary, "data_dir": str(tmp_path / "moved")}))
    elements = parse_elements(write_report(run_dir).read_text())
    figures = [e.attrs["data-chart"] for e in elements if e.tag == "figure"]
    assert figures == ["feature-importance", "score-histogram", "score-by-rank", "embeddings", "timings"]
    assert not [e for e in elements if e.chart == "embeddings" and "legend-entry" in e.classes]
    captions = " ".join(e.all_text() for e in elements if e.tag == "figcaption")
    assert "not reachable" in captions
    validation = [e for e in elements if e.tag == "table"]
    assert validation and "Validation NDCG@10" in validation[0].all_text()


@pytest.mark.skipif(not chromium_available(), reason="/usr/bin/chromium is not installed")
def test_report_loads_in_chromium_without_errors_and_shows_every_chart(report_run):
    page = report_run / "report.html"
    rendered = dump_dom(page)
    assert rendered.console == []
    elements = parse_elements(rendered.dom)
    (errors,) = [e for e in elements if e.attrs.get("id") == "report-errors"]
    assert "hidden" in errors.attrs and not [
        e for e in elements if e.tag == "li" and e.inside("report-errors")
    ]

    figures = [e for e in elements if e.tag == "figure"]
    assert [figure.attrs["data-chart"] for figure in figures] == list(CHARTS)
    for figure in figures:
        assert int(figure.attrs["data-rendered-width"]) > 300, figure.attrs["data-chart"]
        assert int(figure.attrs["data-rendered-height"]) > 150, figure.attrs["data-chart"]
    _check_charts(elements, report_run)

    height = int(next(e for e in elements if e.tag == "html").attrs["data-page-height"])
    shot = screenshot(page, report_run / "report.png", height=height)
    assert png_size(shot) == (1280, height)
    assert shot.stat().st_size > 50_000
    artifacts = Path(os.environ.get("M6REC_ARTIFACTS_DIR") or REPO_ROOT / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, artifacts / "report.png")
