"""The per-run report: one self-contained HTML page of charts drawn from a finished run folder.

``write_report`` reads what a run wrote (``run.json``, ``metrics.json``, ``ranker/``,
``recommendations.parquet``, ``features/``) and the run's items table for item categories. Every chart is
inline SVG from :mod:`pipelines.charts`, so the page needs no network and no JavaScript to show them; its
only script lists page errors in ``#report-errors`` and records each chart's rendered size. A piece the
run did not produce (no test set, no ranker, no embeddings) or cannot be read becomes a note on the page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.data import contract
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID
from m6rec.errors import M6RecError
from m6rec.io import atomic_path
from pipelines import charts
from pipelines.run import FINAL, METRICS, RANKER_DIR, RANKER_FEATURES, RECOMMENDATIONS, REPORT, RUN_SUMMARY

log = logging.getLogger("m6rec")

FEATURES_DIR = "features"

PROJECTED_EMBEDDINGS = ("fused", "text", "cf_items")
MAX_PROJECTED_ITEMS = 3000
PROJECTION_SEED = 0
MAX_CATEGORIES = 9
OTHER_CATEGORY = "other"
CATEGORY_COLUMNS = ("category", "categories", "genre", "genres", "type", "kind")
TOP_FEATURES = 20
FEATURE_FAMILIES = (
    ("candidate sources", charts.colour(0)),
    ("embedding similarity", charts.colour(2)),
    ("knowledge graph", charts.colour(6)),
    ("item & user attributes", charts.colour(1)),
)
STAGE_GROUPS = (
    ("pipeline stage", charts.colour(0)),
    ("embeddings", charts.colour(4)),
    ("candidate sources", charts.colour(1)),
)
CEILING_COLOUR = "#7b8794"


@dataclass(frozen=True)
class _Figure:
    name: str
    svg: str
    caption: str

    def html(self) -> str:
        return (
            f'<figure class="chart" data-chart="{escape(self.name)}">{self.svg}'
            f"<figcaption>{escape(self.caption)}</figcaption></figure>"
        )


@dataclass(frozen=True)
class _Note:
    text: str

    def html(self) -> str:
        return f'<p class="note">{escape(self.text)}</p>'


@dataclass(frozen=True)
class _Markup:
    markup: str

    def html(self) -> str:
        return self.markup


@dataclass
class _Run:
    """A finished run folder: its ``run.json`` and ``metrics.json`` (empty without a test set)."""

    directory: Path
    summary: dict
    metrics: dict[str, dict[str, float]]
    problems: list[str]

    @cached_property
    def recommendations(self) -> pd.DataFrame | None:
        """``rank``, ``score``, ``source`` of the recommended items with a finite score; None if absent."""
        path = self.directory / RECOMMENDATIONS
        if not path.exists():
            return None
        frame = pd.read_parquet(path, columns=["rank", "score", "source"])
        return frame[np.isfinite(frame["score"].to_numpy(dtype=float))]

    @property
    def selected(self) -> str:
        return str(self.summary.get("selected_model", "?"))

    def final_label(self) -> str:
        return f"{FINAL} ({self.selected})"


def write_report(run_dir: Path, out_path: Path | None = None) -> Path:
    """Write the run's HTML report and return its path (default ``<run_dir>/report.html``).

    ``run_dir`` is a finished run folder (it must hold ``run.json``). The page shows the run's facts, a
    table of key metrics and charts: test metrics of the final list against every candidate source,
    candidate recall (the ceiling) against the final list's recall and NDCG, ranker feature importance,
    score distributions, a 2-D PCA projection of item embeddings coloured by category, and stage timings.
    The file is replaced atomically.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / RUN_SUMMARY
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
    run = _Run(run_dir, _read_json(summary_path), metrics, problems)
    page = _page(run)
    out_path = Path(out_path) if out_path is not None else run_dir / REPORT
    with atomic_path(out_path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return out_path


def _read_json(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise M6RecError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise M6RecError(f"{path}: expected a JSON object, found {type(payload).__name__}")
    return payload


def _read_metrics(path: Path) -> dict[str, dict[str, float]]:
    if not path.exists():
        return {}
    return {name: values for name, values in _read_json(path).items() if isinstance(values, dict)}


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


def _header(run: _Run) -> str:
    summary, counts = run.summary, run.summary.get("counts", {})
    finished = datetime.fromtimestamp((run.directory / RUN_SUMMARY).stat().st_mtime, UTC)
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


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


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


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cut_offs(values: dict[str, float]) -> list[int]:
    """The k of every ``ndcg@k`` in one model's metrics, ascending."""
    return sorted(int(key.split("@")[1]) for key in values if key.startswith("ndcg@"))


def _first_k(values: dict[str, float]) -> int:
    cut_offs = _cut_offs(values)
    if not cut_offs:
        raise KeyError(f"{METRICS} has no ndcg@k values")
    return cut_offs[0]


def _source_order(run: _Run, key: str) -> list[str]:
    """``final`` first, then the candidate sources by ``key``, best first."""
    sources = [name for name in run.metrics if name != FINAL]
    sources.sort(key=lambda name: -run.metrics[name].get(key, float("-inf")))
    return ([FINAL] if FINAL in run.metrics else []) + sources


def _no_test_set(run: _Run) -> _Note:
    return _Note(
        f"This run has no test set ({run.summary.get('protocol', 'no protocol recorded')}), so there is no "
        f"{METRICS}: the test-set charts are skipped."
    )


def _metrics_chart(run: _Run) -> _Figure | _Note:
    if FINAL not in run.metrics:
        return _no_test_set(run)
    k = _first_k(run.metrics[FINAL])
    order = _source_order(run, f"ndcg@{k}")
    labels = [run.final_label() if name == FINAL else name for name in order]
    series = {
        f"NDCG@{k}": [run.metrics[name].get(f"ndcg@{k}", np.nan) for name in order],
        f"Recall@{k}": [run.metrics[name].get(f"recall@{k}", np.nan) for name in order],
    }
    svg = charts.bar_chart(
        labels,
        series,
        title=f"Test NDCG@{k} and Recall@{k}: final list vs every baseline",
        axis_label="score on the held-out test interactions (higher is better)",
        highlight=run.final_label(),
    )
    caption = (
        f"The final list ({run.selected}; highlighted) against each candidate source on its own, "
        f"on {_count(run.metrics[FINAL].get('n_users'))} test users."
    )
    return _Figure("metrics", svg, caption)


def _ceiling_chart(run: _Run) -> _Figure | _Note:
    final = run.metrics.get(FINAL)
    if not final:
        return _Note("No test set, so no candidate recall ceiling.")
    if "candidate_recall" not in final:
        return _Note(
            "This run has no merged candidate pool (ranker disabled or a single source), so there is no "
            "candidate recall ceiling to compare with."
        )
    cut_offs = _cut_offs(final)
    labels = ["candidate pool"]
    values = [final["candidate_recall"]]
    colours = [CEILING_COLOUR]
    for metric, colour in (("recall", charts.colour(1)), ("ndcg", charts.colour(0))):
        for k in reversed(cut_offs):
            if f"{metric}@{k}" in final:
                labels.append(f"final {'Recall' if metric == 'recall' else 'NDCG'}@{k}")
                values.append(final[f"{metric}@{k}"])
                colours.append(colour)
    svg = charts.bar_chart(
        labels,
        {"value": values},
        title="Candidate recall ceiling vs the final list",
        axis_label="share of held-out test interactions",
        bar_colours=colours,
        legend=[
            ("candidate recall (ceiling)", CEILING_COLOUR),
            ("final recall", charts.colour(1)),
            ("final NDCG", charts.colour(0)),
        ],
        reference=("ceiling", final["candidate_recall"]),
    )
    caption = (
        "Candidate recall is the share of held-out items that some candidate source put into the pool the "
        "ranker reorders: no reordering can find more. The gap to the final recall is what ranking leaves "
        "on the table."
    )
    pool = _pool_size(run)
    if pool:
        caption += f" Pool: {pool:,.0f} candidates per user on average."
    fold = (run.summary.get("ranker") or {}).get("fold_candidate_recall")
    if isinstance(fold, int | float):
        caption += f" Candidate recall on the ranker's validation fold: {fold:.3f}."
    return _Figure("recall-ceiling", svg, caption)


def _pool_size(run: _Run) -> float | None:
    import pyarrow.parquet as pq

    path = run.directory / RANKER_FEATURES
    users = run.summary.get("counts", {}).get("users")
    if not path.exists() or not users:
        return None
    return pq.ParquetFile(path).metadata.num_rows / users


def _metrics_table(run: _Run) -> _Markup:
    """Key test metrics per source, final first; without a test set, the validation NDCG per model."""
    validation = _validation_ndcg(run)
    if not run.metrics:
        rows = [
            [f"<td>{escape(name)}</td>", f"<td>{value:.4f}</td>"]
            for name, value in sorted(validation.items(), key=lambda item: -item[1])
        ]
        caption = "Validation NDCG@10 on the held-out users of the training fold (this run has no test set)."
        return _Markup(_table(["model", "validation NDCG@10"], rows, caption) if rows else "")
    final = run.metrics.get(FINAL) or next(iter(run.metrics.values()))
    cut_offs = _cut_offs(final)
    columns = [f"{metric}@{k}" for k in cut_offs for metric in ("ndcg", "recall", "hit_rate")]
    columns += ["mrr", f"coverage@{max(cut_offs, default=10)}", "candidate_recall"]
    columns = [column for column in columns if any(column in values for values in run.metrics.values())]
    order = _source_order(run, columns[0] if columns else "")
    best = {
        column: max(
            (run.metrics[name].get(column, float("-inf")) for name in order if name != FINAL),
            default=float("-inf"),
        )
        for column in columns
    }
    rows = []
    for name in order:
        cells = [f"<td>{escape(run.final_label() if name == FINAL else name)}</td>"]
        for column in columns:
            value = run.metrics[name].get(column)
            mark = ' class="best"' if value is not None and value >= best[column] else ""
            cells.append(f"<td{mark}>{value:.4f}</td>" if value is not None else "<td>–</td>")
        if validation:
            value = validation.get(run.selected if name == FINAL else name)
            cells.append(f"<td>{value:.4f}</td>" if value is not None else "<td>–</td>")
        rows.append(cells)
    caption = (
        "Key metrics on the test set; bold: at least as good as every baseline. Validation NDCG@10 is on the "
        "held-out users of the training fold, where the ranker and the final list were chosen."
    )
    header = ["source", *columns] + (["validation NDCG@10"] if validation else [])
    highlighted = order.index(FINAL) if FINAL in order else None
    return _Markup(_table(header, rows, caption, highlighted))


def _table(header: list[str], rows: list[list[str]], caption: str, highlighted: int | None = None) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = "".join(
        f"<tr{' class=final' if index == highlighted else ''}>{''.join(cells)}</tr>"
        for index, cells in enumerate(rows)
    )
    return (
        f'<div class="table-scroll"><table class="metrics"><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _validation_ndcg(run: _Run) -> dict[str, float]:
    ranker = run.summary.get("ranker") or {}
    on_fold = ranker.get("validation_ndcg@10")
    if isinstance(on_fold, dict) and on_fold:
        return {name: float(value) for name, value in on_fold.items() if isinstance(value, int | float)}
    models = run.summary.get("models") or {}
    return {
        name: float(entry["validation_ndcg"])
        for name, entry in models.items()
        if isinstance(entry, dict) and isinstance(entry.get("validation_ndcg"), int | float)
    }


def _importance_chart(run: _Run) -> _Figure | _Note:
    from ranker.model import IMPORTANCE_FILE, MODEL_FILE

    ranker_dir = run.directory / RANKER_DIR
    no_ranker = _Note("This run trained no ranker (ranker disabled or a single candidate source).")
    if "ranker" in run.summary and not run.summary["ranker"]:
        return no_ranker  # files in ranker/ may be left from an earlier run into the same folder
    if (ranker_dir / IMPORTANCE_FILE).exists():
        records = json.loads((ranker_dir / IMPORTANCE_FILE).read_text(encoding="utf-8"))
        importance = pd.DataFrame(records, columns=["feature", "gain", "split"])
        measure, axis = "gain", "total gain (loss reduction) of the splits on the feature"
    elif (ranker_dir / MODEL_FILE).exists():
        importance = _split_counts(ranker_dir / MODEL_FILE)
        measure, axis = "split", "number of splits on the feature"
    else:
        return no_ranker
    importance = importance.sort_values(measure, ascending=False, kind="stable")
    used = importance[importance[measure] > 0]
    if used.empty:
        return _Note(f"The ranker in {ranker_dir} uses no feature (a model without splits).")
    top = used.head(TOP_FEATURES)
    families = [_feature_family(name) for name in top["feature"]]
    family_colour = dict(FEATURE_FAMILIES)
    svg = charts.bar_chart(
        top["feature"].tolist(),
        {measure: top[measure].to_numpy(dtype=float)},
        title=f"Ranker feature importance (top {len(top)} by {measure})",
        axis_label=axis,
        bar_colours=[family_colour[family] for family in families],
        legend=[(family, colour) for family, colour in FEATURE_FAMILIES if family in families],
        value_format="{:,.0f}" if measure == "split" or top[measure].max() >= 100 else "{:.2f}",
    )
    caption = (
        f"{len(used)} of {len(importance)} features are used by the LightGBM ranker; the top {len(top)} "
        "are shown, coloured by what they describe."
    )
    if (run.summary.get("ranker") or {}).get("used") is False:
        caption += (
            " The ranker did not beat the best single source on the validation fold, so the final lists "
            f"come from {run.selected}."
        )
    return _Figure("feature-importance", svg, caption)


def _split_counts(model_path: Path) -> pd.DataFrame:
    """The ``feature_importances:`` block of a LightGBM text model (split counts of the used features)."""
    rows, inside = [], False
    for line in model_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("feature_importances:"):
            inside = True
        elif inside and "=" in line:
            name, count = line.rsplit("=", 1)
            rows.append((name, int(count)))
        elif inside:
            break
    return pd.DataFrame(rows, columns=["feature", "split"])


def _feature_family(name: str) -> str:
    if name.endswith(("_rank", "_score_z")) or name == "n_sources":
        return "candidate sources"
    if name.startswith(("cos_", "sim_", "two_tower")):
        return "embedding similarity"
    if name.startswith("kg_"):
        return "knowledge graph"
    return "item & user attributes"


def _score_histogram(run: _Run) -> _Figure | _Note:
    recs = run.recommendations
    if recs is None or recs.empty:
        return _Note(f"No scored recommendations in {run.directory / RECOMMENDATIONS}.")
    by_source = {
        str(source): group["score"].to_numpy(dtype=float)
        for source, group in sorted(recs.groupby("source", sort=False), key=lambda item: -len(item[1]))
    }
    svg = charts.histogram(
        by_source,
        title="Scores of the final lists",
        x_label=f"score ({run.selected})",
        y_label="recommendations",
    )
    shares = ", ".join(f"{source} {len(values) / len(recs):.0%}" for source, values in by_source.items())
    caption = (
        f"Distribution of the scores of all {len(recs):,} recommended items, stacked by the list each user's "
        f"items came from ({shares}). Scores of different sources are on different scales."
    )
    return _Figure("score-histogram", svg, caption)


def _score_by_rank(run: _Run) -> _Figure | _Note:
    recs = run.recommendations
    if recs is None or recs.empty:
        return _Note(f"No scored recommendations in {run.directory / RECOMMENDATIONS}.")
    main_source = recs["source"].value_counts().index[0]
    mine = recs[recs["source"] == main_source]
    per_rank = mine.groupby("rank")["score"]
    ranks = np.asarray(sorted(mine["rank"].unique()), dtype=float)
    svg = charts.line_chart(
        ranks,
        per_rank.mean().reindex(ranks).to_numpy(),
        title=f"Mean score by rank ({main_source})",
        x_label="rank",
        y_label="score",
        series_name="mean score",
        band=(
            per_rank.quantile(0.1).reindex(ranks).to_numpy(),
            per_rank.quantile(0.9).reindex(ranks).to_numpy(),
        ),
        band_name="10th–90th percentile",
    )
    caption = (
        f"How fast the {main_source} score falls along a list, over {mine['rank'].eq(1).sum():,} users' "
        "lists. "
        "A flat curve means the model barely separates the top of the list from the rest."
    )
    return _Figure("score-by-rank", svg, caption)


def _projection_chart(run: _Run) -> _Figure | _Note:
    from features.store import read_embeddings

    features = run.directory / FEATURES_DIR
    if "embeddings" in run.summary and not run.summary["embeddings"]:
        return _Note("This run computed no embeddings (ranker disabled or no modalities configured).")
    name = next((n for n in PROJECTED_EMBEDDINGS if (features / f"{n}.parquet").exists()), None)
    if name is None:
        return _Note(
            f"This run wrote no item embeddings ({', '.join(f'{n}.parquet' for n in PROJECTED_EMBEDDINGS)} "
            f"in {features}), so there is nothing to project."
        )
    table = read_embeddings(features / f"{name}.parquet")
    keys, vectors = table.keys[table.valid], table.vectors[table.valid].astype(np.float64)
    if len(keys) < 3 or vectors.shape[1] < 2:
        return _Note(f"{features / f'{name}.parquet'}: too few valid embeddings to project ({len(keys)}).")
    sampled = ""
    if len(keys) > MAX_PROJECTED_ITEMS:
        rows = np.sort(
            np.random.default_rng(PROJECTION_SEED).choice(len(keys), MAX_PROJECTED_ITEMS, replace=False)
        )
        keys, vectors = keys[rows], vectors[rows]
        sampled = f" A random sample of {MAX_PROJECTED_ITEMS:,} of {int(table.valid.sum()):,} items."
    coordinates, explained = pca_2d(vectors)
    categories, category_note = _item_categories(run)
    labels = titles = None
    if categories is not None:
        column, values, item_titles = categories
        labels = _fold_rare(values.reindex(keys).fillna("unknown").astype(str).to_numpy())
        titles = [
            f"{key} · {title} ({label})" if title else f"{key} ({label})"
            for key, title, label in zip(
                keys, item_titles.reindex(keys).fillna("").astype(str), labels, strict=True
            )
        ]
    svg = charts.scatter_chart(
        coordinates[:, 0],
        coordinates[:, 1],
        title=f"Item embeddings ({name}), PCA to 2-D",
        x_label=f"PC1 ({explained[0]:.0%} of variance)",
        y_label=f"PC2 ({explained[1]:.0%} of variance)",
        groups=labels,
        point_titles=titles,
    )
    encoder = table.metadata.get("encoder", name)
    caption = (
        f"{len(keys):,} items' {name} vectors ({encoder}, {table.dimension} dimensions) projected on their "
        f"first two principal components.{sampled} "
    )
    caption += (
        f"Colour: the items table's '{categories[0]}' column; items of one category that sit together mean "
        "the embedding has learned it."
        if categories is not None
        else category_note
    )
    return _Figure("embeddings", svg, caption)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``vectors`` [n, d] on their first two principal components.

    Returns ([n, 2] coordinates, the share of variance each component explains). Deterministic: each
    component's sign is fixed so that its largest loading is positive.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"PCA to 2-D needs at least 2 rows and 2 columns, got shape {vectors.shape}")
    centred = vectors - vectors.mean(axis=0)
    left, singular, right = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(right[np.arange(2), np.abs(right[:2]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    coordinates = left[:, :2] * singular[:2] * signs
    total = float((singular**2).sum())
    explained = singular[:2] ** 2 / total if total > 0 else np.zeros(2)
    return coordinates, explained


def _item_categories(run: _Run) -> tuple[tuple[str, pd.Series, pd.Series] | None, str]:
    """(column, category per item_id, title per item_id) from the run's items table, or a note why not."""
    from m6rec.data.dataset import read_columns_file
    from m6rec.data.tables import find_table, read_table

    data_dir = run.summary.get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        return None, f"Not coloured: the run's dataset ({data_dir}) is not reachable from here."
    try:
        path = find_table(Path(data_dir), contract.ITEMS)
        items = read_table(path, contract.ITEMS) if path is not None else None
        declared = read_columns_file(data_dir).items
        roles = resolve_columns(items, ITEM_ID, declared) if items is not None else None
    except (M6RecError, OSError, ValueError) as error:
        return None, f"Not coloured: the dataset's items table could not be read ({error})."
    if items is None:
        return None, f"Not coloured: the dataset in {data_dir} has no items table."
    column = _category_column(items, roles)
    if column is None:
        return None, f"Not coloured: the items table {path} has no category-like column."
    items = items.drop_duplicates(ITEM_ID)
    items.index = items[ITEM_ID].astype(str)
    values = items[column].astype("string").str.split("|").str[0].str.strip()
    title_column = next((c for c in ("title", "name") if c in items.columns), None)
    titles = items[title_column].astype("string") if title_column else pd.Series(dtype="string")
    return (column, values, titles), ""


def _category_column(items: pd.DataFrame, roles: ResolvedColumns) -> str | None:
    """A category column by name (``category``, ``genre``...) unless declared ignored, else the first
    ``categorical`` column (``roles``: the items' resolved column roles) of 2-20 values."""
    for column in CATEGORY_COLUMNS:
        if column in items.columns and roles.role(column) != "ignored":
            return column
    for column in roles.categorical:
        if 2 <= items[column].nunique() <= 20:
            return column
    return None


def _fold_rare(labels: np.ndarray) -> np.ndarray:
    """Keep the ``MAX_CATEGORIES`` most frequent labels; the rest become ``other``."""
    counts = pd.Series(labels).value_counts()
    if len(counts) <= MAX_CATEGORIES + 1:
        return labels
    keep = set(counts.index[:MAX_CATEGORIES])
    return np.asarray([label if label in keep else OTHER_CATEGORY for label in labels], dtype=object)


def _timings_chart(run: _Run) -> _Figure | _Note:
    stages = run.summary.get("timings_seconds") or {}
    if not stages:
        return _Note(f"{run.directory / RUN_SUMMARY} records no stage timings.")
    parts = _stage_parts(run.summary)
    rows = []
    for stage in [*stages, *(parent for parent in parts if parent not in stages)]:
        if stage in stages:
            rows.append((stage, float(stages[stage]), STAGE_GROUPS[0][0]))
        rows.extend(parts.get(stage, []))
    group_colour = dict(STAGE_GROUPS)
    used_groups = {group for _, _, group in rows}
    svg = charts.bar_chart(
        [label for label, _, _ in rows],
        {"seconds": [seconds for _, seconds, _ in rows]},
        title="Stage timings",
        axis_label="wall-clock seconds",
        bar_colours=[group_colour[group] for _, _, group in rows],
        legend=[(group, colour) for group, colour in STAGE_GROUPS if group in used_groups],
        value_format="{:.2f} s",
    )
    caption = (
        f"Wall-clock time of each pipeline stage (total {_duration(sum(stages.values()))}), each followed by "
        "its parts: the encoders and collaborative training of the embeddings stage, and the tuning and "
        "fitting of each candidate source."
    )
    return _Figure("timings", svg, caption)


def _stage_parts(summary: dict) -> dict[str, list[tuple[str, float, str]]]:
    """Sub-stage timings from ``run.json``, by the pipeline stage they belong to."""
    embeddings = summary.get("embeddings") or {}
    embedding_parts = [
        (embeddings, ""),
        (embeddings.get("collaborative") or {}, ""),
        (embeddings.get("fold") or {}, " (fold)"),
    ]
    parts: dict[str, list[tuple[str, float, str]]] = {"embeddings": [], "candidates": []}
    embeddings_group, candidates_group = STAGE_GROUPS[1][0], STAGE_GROUPS[2][0]
    for part, suffix in embedding_parts:
        for stage, seconds in (part.get("timings_seconds") or {}).items():
            parts["embeddings"].append((f"embeddings › {stage}{suffix}", float(seconds), embeddings_group))
    for name, entry in (summary.get("models") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("seconds"), int | float):
            parts["candidates"].append((f"candidates › {name}", float(entry["seconds"]), candidates_group))
    return {stage: rows for stage, rows in parts.items() if rows}


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
