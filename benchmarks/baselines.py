"""Baselines on MovieLens-100K (75/25 per-user random split) and Last.FM HetRec (80/20), same code for all.

Usage: .venv/bin/python benchmarks/baselines.py [--data ../shared/data] [--seeds 42] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from m6rec.config import RankerConfig, RunConfig  # noqa: E402
from m6rec.data.prepare import prepare_dataset  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

DATASETS = {
    "MovieLens-100K": ("movielens-100k", "ml-100k", "random:0.25"),
    "Last.FM HetRec": ("lastfm-hetrec", "hetrec2011-lastfm-2k", "random:0.2"),
}
COLUMNS = ["ndcg@10", "recall@10", "precision@10", "map@10", "mrr", "coverage@10", "avg_popularity@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown file whose 'baselines' section to update"
    )
    args = parser.parse_args()

    sections = []
    with tempfile.TemporaryDirectory() as scratch:
        for title, (name, folder, split) in DATASETS.items():
            data_dir = Path(scratch) / name
            prepare_dataset(name, data_dir, source=args.data / folder)
            per_seed = []
            for seed in args.seeds:
                started = time.perf_counter()
                result = run_pipeline(
                    data_dir,
                    Path(scratch) / f"{name}-{seed}",
                    RunConfig(split=split, seed=seed, ranker=RankerConfig(enabled=False)),
                )
                per_seed.append((result, time.perf_counter() - started))
                print(
                    f"{title} seed {seed}: {json.dumps({k: round(v['ndcg@10'], 4) for k, v in result.metrics.items()})}"
                )
            sections.append(_table(title, split, per_seed))

    command = "make benchmark  # = .venv/bin/python benchmarks/baselines.py --out docs/benchmarks.md"
    body = "\n".join(
        [
            "## Baselines (issue: foundation)",
            "",
            f"Command: `{command}`",
            f"Machine: {platform.machine()}, {platform.python_version()}; seeds of the split: {args.seeds}. "
            "Hyperparameters of every model were tuned on a validation fold cut from the training part "
            "(grids in `m6rec/config.py`); the final list is the model with the best validation NDCG@10. "
            "Metrics follow [docs/metrics.md](metrics.md). Published on ML-100K with this protocol "
            "(Microsoft Recommenders): BiVAE 0.475, BPR 0.442, SAR 0.382 NDCG@10.",
            "",
            *sections,
        ]
    )
    print(body)
    if args.out:
        update_section(args.out, "baselines", body)


def _table(title: str, split: str, per_seed) -> str:
    models = list(per_seed[0][0].metrics)
    lines = [
        f"### {title}, split `{split}`",
        "",
        "| model | " + " | ".join(COLUMNS) + " | tuned parameters |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for model in models:
        cells = []
        for column in COLUMNS:
            values = np.array([result.metrics[model][column] for result, _ in per_seed])
            cells.append(f"{values.mean():.4f}" + (f" ± {values.std():.4f}" if len(values) > 1 else ""))
        params = per_seed[0][0].summary["models"].get(model, {}).get("params", {})
        label = f"{model} ({per_seed[0][0].selected_model})" if model == "final" else model
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {json.dumps(params) if params else ''} |")
    seconds = [round(elapsed, 1) for _, elapsed in per_seed]
    lines += ["", f"Whole run (prepare excluded), seconds per seed: {seconds}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
