"""The report page: ``write_report`` (read the run folder, write the page), the sections that hold the
figures, the header (the run's facts and headline tiles), the CSS, the two small scripts and the HTML
skeleton."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from m6rec import __version__
from m6rec.errors import M6RecError
from m6rec.evaluation.streamed import FINAL
from m6rec.io import atomic_path
from pipelines.report.figures import (
    _ceiling_chart,
    _count,
    _duration,
    _Figure,
    _first_k,
    _importance_chart,
    _metrics_chart,
    _metrics_table,
    _Note,
    _score_by_rank,
    _score_histogram,
    _timings_chart,
)
from pipelines.report.folder import _read_json, _read_metrics, _Run
from pipelines.report.projection import _projection_chart
from pipelines.run_folder import (
    FEATURES_DIR,
    METRICS,
    REPORT_PAGE,
    RUN_REPORT,
    ModelNotTrainedError,
    RunFolder,
    StagedGeneration,
)
from pipelines.trained_model import ModelManifest

if TYPE_CHECKING:
    from m6rec.embeddings.store import EmbeddingTable

log = logging.getLogger("m6rec")


def write_report(
    run_dir: Path,
    out_path: Path | None = None,
    *,
    item_vectors: Mapping[str, EmbeddingTable] | None = None,
) -> Path:
    """Write the run's HTML report and return its path (default ``<run_dir>/report.html``).

    ``run_dir`` is a finished run folder (it must hold ``run.json``). The page shows the run's facts, a
    table of key metrics and charts: test metrics of the final list against every candidate source,
    candidate recall (the ceiling) against the final list's recall and NDCG, ranker feature importance,
    score distributions, a 2-D PCA projection of item embeddings coloured by category, and stage timings.
    ``item_vectors`` are item embedding tables the caller already holds, by name (``{"fused": table}``):
    the projection uses one from there instead of reading its file from ``features/`` again. The file is
    replaced atomically.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / RUN_REPORT
    if not summary_path.exists():
        raise M6RecError(
            f"{summary_path}: not found; a report needs a finished run folder",
            hint=f"run `m6rec run DATA_DIR --out {run_dir}` first",
        )
    problems = []
    try:
        metrics = _read_metrics(run_dir / METRICS)
    except M6RecError as error:
        metrics = {}
        problems.append(f"The test-set charts are skipped: {error}")
    problems += _random_weight_notes(run_dir / FEATURES_DIR)
    run = _Run(run_dir, _read_json(summary_path), metrics, problems, dict(item_vectors or {}))
    page = _page(run)
    out_path = Path(out_path) if out_path is not None else run_dir / REPORT_PAGE
    with atomic_path(out_path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return out_path


def _random_weight_notes(features_dir: Path) -> list[str]:
    """A line when the image vectors come from random-init weights (``image.parquet``'s metadata says
    ``pretrained: false``): they carry no meaning learned from data."""
    import json

    import pyarrow.parquet as pq

    from m6rec.embeddings.store import METADATA_KEY

    notes = []
    for path in sorted(features_dir.glob("*.parquet")) if features_dir.is_dir() else []:
        try:
            stored = json.loads((pq.read_schema(path).metadata or {}).get(METADATA_KEY, b"{}"))
        except (OSError, ValueError):
            continue
        if stored.get("modality") == "image" and stored.get("pretrained") is False:
            notes.append(
                f"The {path.stem} vectors come from random-init weights ({stored.get('weights', 'no weights')}): "
                "no pretrained model was available, so they carry no learned meaning; put real weights in place "
                "(embeddings.image.checkpoint or a cached pretrained tag) for real image features."
            )
    return notes


def publish_report(out_dir: Path, *, keep: int, stage: StagedGeneration | None = None) -> Path:
    """Write ``out_dir``'s report page again, into a new generation of the folder (``keep`` kept; the
    published files are never written in place), or into ``stage`` (the night's generation of
    ``out_dir``); returns the page's path as readers see it."""
    out_dir = Path(out_dir)
    if stage is not None:
        stage.join("report")
        write_report(stage.folder.root)
    else:
        with RunFolder(out_dir).stage("report", keep=keep) as staged:
            write_report(staged.folder.root)
    return out_dir / REPORT_PAGE


def _page(run: _Run) -> str:
    sections = [
        ("Quality against every baseline", [_metrics_chart, _ceiling_chart], _metrics_table),
        ("Ranker and scores", [_importance_chart, _score_histogram, _score_by_rank], None),
        ("Item embeddings and stage timings", [_projection_chart, _timings_chart], None),
    ]
    body = []
    for heading, builders, extra in sections:
        parts = [_safely(builder, run) for builder in builders]
        figures = "".join(part.html() for part in parts if isinstance(part, _Figure))
        notes = "".join(part.html() for part in parts if isinstance(part, _Note))
        body.append(
            f"<section><h2>{escape(heading)}</h2>{notes}"
            + (f'<div class="charts">{figures}</div>' if figures else "")
            + (_safely(extra, run).html() if extra else "")
            + "</section>"
        )
    title = f"m6rec run report · {run.directory.resolve().name}"
    problems = "".join(_Note(problem).html() for problem in run.problems)
    return _TEMPLATE.format(
        title=escape(title),
        style=_STYLE,
        error_script=_ERROR_SCRIPT,
        render_script=_RENDER_SCRIPT,
        header=_header(run) + problems,
        body="".join(body),
        footer=escape(f"Written by m6rec {__version__} from {run.directory.resolve()}"),
    )


def _safely(builder: Callable[[_Run], object], run: _Run):
    """A chart whose inputs cannot be read becomes a note naming the problem; the rest of the page stays."""
    try:
        return builder(run)
    except (OSError, ValueError, KeyError, TypeError, M6RecError) as error:
        name = builder.__name__.strip("_").replace("_", " ")
        log.warning("report: %s skipped: %s", name, error)
        return _Note(f"Could not draw the {name}: {error}")


def _trained_at(directory: Path) -> datetime:
    """When the model was trained (its manifest), else when the run report was written."""
    try:
        return datetime.fromisoformat(ModelManifest.read(RunFolder(directory).model_manifest).trained_at)
    except ModelNotTrainedError:
        return datetime.fromtimestamp((directory / RUN_REPORT).stat().st_mtime, UTC)


def _header(run: _Run) -> str:
    summary, counts = run.summary, run.summary.get("counts", {})
    finished = _trained_at(run.directory)
    facts = [
        ("Users", _count(counts.get("users"))),
        ("Items", _count(counts.get("items"))),
        ("Train interactions", _count(counts.get("train_interactions"))),
        ("Test interactions", _count(counts.get("test_interactions"))),
        ("Selected model", run.selected),
        ("m6rec version", summary.get("m6rec_version", "?")),
    ]
    fact_html = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(str(v))}</dd></div>" for k, v in facts)
    return (
        "<h1>m6rec run report</h1>"
        f'<p class="subtitle">Run folder <code>{escape(str(run.directory.resolve()))}</code> · dataset '
        f"<code>{escape(str(summary.get('data_dir', '?')))}</code><br>"
        f"Protocol: <strong>{escape(str(summary.get('protocol', '?')))}</strong> · finished "
        f"{escape(finished.strftime('%Y-%m-%d %H:%M UTC'))}</p>"
        f'<dl class="facts">{fact_html}</dl>{_headline(run)}'
    )


def _headline(run: _Run) -> str:
    """Big-number tiles: final NDCG and recall (with the change against the best baseline), the candidate
    recall ceiling and the total run time."""
    tiles = []
    final = run.metrics.get(FINAL)
    if final:
        k = _first_k(final)
        baselines = {name: values for name, values in run.metrics.items() if name != FINAL}
        ndcg = final.get(f"ndcg@{k}", float("nan"))
        detail, tone = "", ""
        if baselines:
            best = max(baselines, key=lambda name: baselines[name].get(f"ndcg@{k}", float("-inf")))
            best_ndcg = baselines[best].get(f"ndcg@{k}", float("nan"))
            change = (ndcg / best_ndcg - 1) * 100 if best_ndcg > 0 else float("nan")
            detail = f"best baseline {best} {best_ndcg:.3f} ({change:+.1f}%)"
            tone = "better" if change > 0 else "worse" if change < 0 else ""
        tiles.append((f"Final NDCG@{k}", f"{ndcg:.3f}", detail, tone))
        tiles.append((f"Final Recall@{k}", f"{final.get(f'recall@{k}', float('nan')):.3f}", "", ""))
        if "candidate_recall" in final:
            tiles.append(
                ("Candidate recall", f"{final['candidate_recall']:.3f}", "ceiling for the ranker", "")
            )
    timings = run.summary.get("timings_seconds") or {}
    if timings:
        tiles.append(("Total time", _duration(sum(timings.values())), f"{len(timings)} stages", ""))
    return (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="tile-label">{escape(label)}</div>'
            f'<div class="tile-value">{escape(value)}</div>'
            f'<div class="tile-detail {tone}">{escape(detail)}</div></div>'
            for label, value, detail, tone in tiles
        )
        + "</div>"
    )


_STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; --card: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 28px 40px; }
h1 { font-size: 26px; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
section { margin-top: 30px; }
code { font-size: 12.5px; background: #eef1f4; padding: 1px 5px; border-radius: 4px; }
.subtitle { color: var(--muted); margin: 0 0 16px; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0; }
.facts div { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px;
  margin-top: 12px; }
.tile { background: var(--card); border: 1px solid var(--line); border-left: 4px solid #4e79a7;
  border-radius: 8px; padding: 10px 14px; }
.tile-label { color: var(--muted); font-size: 12px; }
.tile-value { font-size: 28px; font-weight: 700; line-height: 1.2; font-variant-numeric: tabular-nums; }
.tile-detail { color: var(--muted); font-size: 12px; min-height: 18px; }
.tile-detail.better { color: #0b6e4f; }
.tile-detail.worse { color: #c92a2a; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px;
  align-items: start; }
.charts { grid-auto-flow: row dense; }
figure.chart[data-chart="feature-importance"] { grid-row: span 2; }
figure.chart { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px 14px 10px; }
figure.chart svg { display: block; width: 100%; height: auto; }
figure.chart text { font-family: inherit; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.note { background: #fffbea; border-left: 4px solid #f0b429; border-radius: 4px; padding: 8px 12px;
  margin: 0 0 12px; }
.table-scroll { overflow-x: auto; }
table.metrics { width: 100%; border-collapse: collapse; background: var(--card); margin-top: 16px;
  border: 1px solid var(--line); font-variant-numeric: tabular-nums; }
table.metrics caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 13px;
  padding-top: 6px; }
table.metrics th, table.metrics td { padding: 6px 10px; text-align: right;
  border-bottom: 1px solid var(--line); }
table.metrics th { font-size: 12px; color: var(--muted); font-weight: 600; background: #f8f9fb; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
table.metrics tr.final td { background: #fff3c4; font-weight: 600; }
table.metrics td.best { font-weight: 700; color: #0b6e4f; }
#report-errors { background: #fde8e8; border: 1px solid #e12d39; color: #8a041a; border-radius: 8px;
  padding: 10px 14px; margin-bottom: 16px; }
[hidden] { display: none !important; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
"""


# Runs first: every script error, unhandled rejection or failed resource load is listed in #report-errors.
_ERROR_SCRIPT = """
(function () {
  function show(message) {
    var box = document.getElementById("report-errors");
    if (!box) { (window.reportErrors = window.reportErrors || []).push(message); return; }
    box.hidden = false;
    var item = document.createElement("li");
    item.textContent = message;
    box.querySelector("ul").appendChild(item);
  }
  window.reportError = show;
  window.addEventListener("error", function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      show("failed to load " + (target.src || target.href));
    } else {
      var where = event.filename ? " (" + event.filename + ":" + event.lineno + ")" : "";
      show((event.message || "error") + where);
    }
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    show("unhandled rejection: " + event.reason);
  });
})();
"""


# Runs last: flushes early errors and records each chart's laid-out size, so a test can see it was drawn.
_RENDER_SCRIPT = """
(window.reportErrors || []).forEach(function (message) { window.reportError(message); });
document.querySelectorAll("figure.chart").forEach(function (figure) {
  var svg = figure.querySelector("svg");
  var box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
  figure.setAttribute("data-rendered-width", Math.round(box.width));
  figure.setAttribute("data-rendered-height", Math.round(box.height));
});
document.documentElement.setAttribute("data-page-height", Math.ceil(document.documentElement.scrollHeight));
"""


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
<script>{error_script}</script>
</head>
<body>
<main>
<div id="report-errors" hidden><strong>Errors while showing this page</strong><ul></ul></div>
<header>{header}</header>
{body}
<footer>{footer}</footer>
</main>
<script>{render_script}</script>
</body>
</html>
"""
