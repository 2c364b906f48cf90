"""Prefect artifacts of the flows: per run, a markdown summary and a table built from a stage's result.

Keys are stable (lowercase, dashes), so every run adds a new version of the same two artifacts and the
Prefect UI shows their history side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.policies import IO_RETRIES, NO_PERSISTED_RESULT

HEADLINE_METRICS = ("ndcg@", "recall@", "hit_rate@", "coverage@", "mrr", "candidate_recall")


@dataclass(frozen=True)
class RunArtifacts:
    """One run's markdown summary and table, with the keys they are published under."""

    markdown_key: str
    markdown: str
    table_key: str
    table: list[dict[str, Any]]
    description: str


def embedding_artifacts(embeddings: dict) -> RunArtifacts:
    """Counts per modality (total, computed, reused, failed) of an item embedding run."""
    timings = embeddings.get("timings_seconds", {})
    table = [
        {"modality": name, **_counts(counts), "seconds": timings.get(name)}
        for name, counts in embeddings["counts"].items()
    ]
    lines = [
        "# Item embeddings",
        "",
        f"Features folder: `{embeddings['features_dir']}`",
        "",
        "Dataset and configuration unchanged since the last run: these are that run's counts (cached)."
        if embeddings.get("cached")
        else "",
        _markdown_table(table) if table else "No modality produced embeddings (see the run's logs).",
        "",
        f"Items with problems: **{embeddings['problems']}**",
    ]
    examples = embeddings.get("problem_examples", [])
    lines += [f"- {_describe(problem)}" for problem in examples]
    if embeddings["problems"] > len(examples):
        lines.append(f"- … and {embeddings['problems'] - len(examples)} more")
    return RunArtifacts(
        "embeddings-summary",
        "\n".join(lines),
        "embedding-counts",
        table,
        "Item embeddings computed and reused per modality",
    )


def ranker_artifacts(trained: dict) -> RunArtifacts:
    """Validation NDCG and test metrics of every candidate source and of the final list."""
    metrics = trained.get("metrics") or {}
    validation = {name: model.get("validation_ndcg") for name, model in trained.get("models", {}).items()}
    ranker_validation = ((trained.get("ranker") or {}).get("validation_ndcg@10") or {}).get("ranker")
    if ranker_validation is not None:
        validation["ranker"] = ranker_validation
    sources = list(dict.fromkeys([*validation, *metrics]))
    table = [
        {
            "source": name,
            "validation_ndcg": _number(validation.get(name)),
            **{key: _number(value) for key, value in metrics.get(name, {}).items() if _is_headline(key)},
        }
        for name in sources
    ]
    final = metrics.get("final", {})
    headline = ", ".join(f"{key} {value:.4f}" for key, value in final.items() if _is_headline(key))
    lines = [
        "# Ranker training",
        "",
        f"Selected model: **{trained['selected_model']}**",
        f"Protocol: {trained.get('protocol', 'unknown')}",
        f"Final list: {headline}" if headline else "No test set: validation NDCG only.",
        "",
        _markdown_table([{"count": key, "value": value} for key, value in trained.get("counts", {}).items()]),
        "",
        f"Output folder: `{trained['out_dir']}`",
        "",
        _timings(trained.get("timings_seconds", {})),
    ]
    return RunArtifacts(
        "ranker-summary", "\n".join(lines), "ranker-metrics", table, "NDCG and recall per candidate source"
    )


def batch_artifacts(batch: dict) -> RunArtifacts:
    """Users, items, interactions and list rows of a batch of recommendation lists."""
    table = [{"count": key, "value": value} for key, value in batch["counts"].items()]
    lines = [
        "# Batch recommendations",
        "",
        f"Lists: `{batch['recommendations']}`",
        f"Ranked by: **{batch['selected_model']}** over {', '.join(batch['sources'])}",
        f"Model trained at: {batch.get('model_trained_at', 'unknown')}",
        "",
        _markdown_table(table),
        "",
        _timings(batch.get("timings_seconds", {})),
    ]
    return RunArtifacts("batch-summary", "\n".join(lines), "batch-counts", table, "Rows of the batch lists")


def nightly_artifacts(steps: list[dict[str, Any]], outputs: dict[str, str | None]) -> RunArtifacts:
    """Which stages of the nightly job ran or were skipped, and where its outputs are."""
    lines = ["# Nightly job", "", _markdown_table(steps), ""]
    lines += [f"- {name}: `{path}`" for name, path in outputs.items() if path]
    return RunArtifacts(
        "nightly-summary", "\n".join(lines), "nightly-steps", steps, "Stages of the nightly job"
    )


@task(**IO_RETRIES, **NO_PERSISTED_RESULT)
def publish_artifacts(artifacts: RunArtifacts) -> None:
    """Send a run's markdown summary and table to the Prefect API."""
    create_markdown_artifact(
        markdown=artifacts.markdown, key=artifacts.markdown_key, description=artifacts.description
    )
    create_table_artifact(table=artifacts.table, key=artifacts.table_key, description=artifacts.description)


def _counts(counts: dict) -> dict[str, int]:
    return {name: int(counts.get(name, 0)) for name in ("total", "computed", "reused", "failed")}


def _is_headline(key: str) -> bool:
    return key.startswith(HEADLINE_METRICS)


def _number(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 4)


def _describe(problem: dict) -> str:
    return ", ".join(f"{key}: {value}" for key, value in problem.items())


def _timings(timings: dict[str, float]) -> str:
    if not timings:
        return ""
    return "Seconds per stage: " + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in timings.items())


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")
