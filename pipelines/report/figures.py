"""The report's parts, one function per chart or table: each reads what it needs from the run (``_Run``) and
returns a ``_Figure`` (inline SVG and its caption), a ``_Markup`` (the metrics table) or a ``_Note`` saying
why it is missing. The item-embedding chart, which also reads the dataset, is in
:mod:`pipelines.report.projection`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.evaluation.streamed import FINAL
from pipelines.report import charts
from pipelines.report.folder import _Run
from pipelines.run_folder import METRICS, RANKER_DIR, RANKER_FEATURES, RECOMMENDATIONS, RUN_REPORT

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


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


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


def _timings_chart(run: _Run) -> _Figure | _Note:
    stages = run.summary.get("timings_seconds") or {}
    if not stages:
        return _Note(f"{run.directory / RUN_REPORT} records no stage timings.")
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
