"""What a full training run costs against one tuned EASE, side by side, and what it buys.

Per dataset and seed, in this one process: ``m6rec run`` with EASE alone (its l2 grid tuned on the fold,
then fitted on all training data, every user's list and the metrics: "one tuned EASE fit and recommend",
the whole job for that one model) and the full default run (every embedding the dataset has, every
source, the ranker), on the same split, then the full run without the two-tower model (what its training
costs and what it adds). Reported: the wall-time ratios and the final NDCG@10 of each.

Usage: .venv/bin/python benchmarks/run_cost.py [--data ../shared/data] [--seeds 42 43 44]
       [--only ml100k,lastfm] [--out docs/benchmarks.md] [--json benchmarks/results/run_cost.json]
       [--section run-cost]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from m6rec.config import BaselineConfig, EmbeddingConfig, RankerConfig, RunConfig  # noqa: E402
from m6rec.data.prepare import prepare_dataset  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

DATASETS = {
    "ml100k": ("movielens-100k", "ml-100k", "random:0.25", "MovieLens-100K, 75/25 per-user random split"),
    "lastfm": (
        "lastfm-hetrec",
        "hetrec2011-lastfm-2k",
        "random:0.2",
        "Last.FM HetRec, 80/20 per-user random split",
    ),
}
FULL_MODALITIES = ["text", "image", "audio", "kg", "cf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--only", default=",".join(DATASETS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--section", default="run-cost", help="the marked section of --out to write (one per dataset set)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in [part.strip() for part in args.only.split(",") if part.strip()]:
            dataset, folder, split, _ = DATASETS[name]
            data = prepare_dataset(dataset, Path(scratch) / name, source=args.data / folder).out_dir
            results[name] = [
                _side_by_side(data, split, seed, Path(scratch) / f"{name}-{seed}") for seed in args.seeds
            ]
            print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    body = _table(results, args)
    print(body)
    if args.out:
        update_section(args.out, args.section, body)


def _side_by_side(data: Path, split: str, seed: int, scratch: Path) -> dict:
    ease = RunConfig(
        split=split,
        seed=seed,
        baselines=BaselineConfig(models=["ease"]),
        embeddings=EmbeddingConfig(modalities=[]),
        ranker=RankerConfig(enabled=False),
    )
    full = RunConfig(split=split, seed=seed, embeddings=EmbeddingConfig(modalities=FULL_MODALITIES))
    without_two_tower = full.replace(
        embeddings=EmbeddingConfig(modalities=[name for name in FULL_MODALITIES if name != "cf"])
    )
    timings = {}
    for label, config in (("ease", ease), ("full", full), ("no_cf", without_two_tower)):
        started = time.perf_counter()
        result = run_pipeline(data, scratch / label, config)
        timings[label] = {
            "seconds": time.perf_counter() - started,
            "ndcg@10": result.metrics["final"]["ndcg@10"],
            "selected": result.selected_model,
            "stages": result.summary["timings_seconds"],
            "embeddings": (result.summary.get("embeddings") or {}).get("timings_seconds", {}),
        }
    return {
        "seed": seed,
        **timings,
        "ratio": timings["full"]["seconds"] / timings["ease"]["seconds"],
        "no_cf_ratio": timings["no_cf"]["seconds"] / timings["ease"]["seconds"],
    }


def _table(results: dict, args) -> str:
    lines = [
        "## Cost of a full run against one tuned EASE, side by side",
        "",
        f"Command: `.venv/bin/python benchmarks/run_cost.py --seeds {' '.join(map(str, args.seeds))} "
        f"--only {','.join(results)} --out docs/benchmarks.md --json {args.json} --section {args.section}`",
        "",
        f"Measured on {platform.machine()} with {os.cpu_count()} cores; the runs of a seed back to back in one "
        "process: tuned EASE alone, the full run, and the full run without the two-tower model (modality `cf`).",
        "",
        "| dataset | seed | tuned EASE | full run | ratio | EASE ndcg@10 | full ndcg@10 | final list "
        "| without the two-tower | ratio | its ndcg@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for run in runs:
            lines.append(
                f"| {DATASETS[name][3]} | {run['seed']} | {run['ease']['seconds']:.1f} s | {run['full']['seconds']:.1f} s "
                f"| {run['ratio']:.1f}× | {run['ease']['ndcg@10']:.4f} | {run['full']['ndcg@10']:.4f} | {run['full']['selected']} "
                f"| {run['no_cf']['seconds']:.1f} s | {run['no_cf_ratio']:.1f}× | {run['no_cf']['ndcg@10']:.4f} |"
            )
        full = np.array([run["full"]["ndcg@10"] for run in runs])
        ratios = np.array([run["ratio"] for run in runs])
        bare = np.array([run["no_cf"]["ndcg@10"] for run in runs])
        lines.append(
            f"| **{name} mean** | | | | **{ratios.mean():.1f}×** | "
            f"{np.mean([run['ease']['ndcg@10'] for run in runs]):.4f} | **{full.mean():.4f} ± {full.std():.4f}** | "
            f"| | {np.mean([run['no_cf_ratio'] for run in runs]):.1f}× | {bare.mean():.4f} ± {bare.std():.4f} |"
        )
    stages = {
        name: {
            stage: np.mean([run["full"]["stages"].get(stage, 0.0) for run in runs])
            for stage in runs[0]["full"]["stages"]
        }
        for name, runs in results.items()
    }
    lines += [
        "",
        "Mean seconds per stage of the full run: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{stage} {value:.1f}" for stage, value in parts.items())
            for name, parts in stages.items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
