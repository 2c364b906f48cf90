"""Two-stage benchmarks: the full pipeline against every single source, on real data and the demo catalogue.

Sections (``--only`` picks some):
- ``ml100k``: MovieLens-100K, 75/25 per-user random split, mean and spread over ``--seeds``.
- ``ranker_ablation``: the same split with the sequential source added to the ranker's candidates, with
  and without the monotone constraints, against the defaults, per seed.
- ``lastfm``: Last.FM HetRec, 80/20 per-user random split; final NDCG@10 against the best single baseline.
- ``kgcn``: Last.FM with the KGCN graph under the KGCN CTR protocol (random 6:2:2 split of user-artist pairs
  over the KGCN-mapped artists, one sampled unlistened artist per positive): AUC and F1 of the ranker.
- ``ablation``: the demo catalogue with growing sets of modalities.
- ``coldstart``: MovieLens-100K with 10% of the items held out entirely; Recall@50 of the final list on
  those items and its NDCG@10 on the other test items, without and with the cold-start handling.

Usage: .venv/bin/python benchmarks/two_stage.py [--data ../shared/data] [--seeds 42 43 44] [--only ml100k,lastfm]
       [--out docs/benchmarks.md]
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
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from m6rec.config import EmbeddingConfig, RunConfig  # noqa: E402
from m6rec.data.prepare import prepare_dataset  # noqa: E402
from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402

BASELINES = ("popularity", "itemknn", "ease", "ials")
SECTIONS = ("ml100k", "ranker_ablation", "lastfm", "kgcn", "ablation", "coldstart")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name in chosen:
            started = time.perf_counter()
            body = SECTION_FUNCTIONS[name](args, scratch)
            body += (
                f"\n\nSection wall time: {time.perf_counter() - started:.0f} s on {platform.machine()} CPU.\n"
            )
            print(body, flush=True)
            if args.out:
                update_section(args.out, f"two-stage-{name}", body)


def ml100k(args, scratch: Path) -> str:
    data = prepare_dataset("movielens-100k", scratch / "ml100k", source=args.data / "ml-100k").out_dir
    runs = [run_pipeline(data, scratch / f"ml-{seed}", _config("random:0.25", seed)) for seed in args.seeds]
    return _header("MovieLens-100K, 75/25 per-user random split", "ml100k", args) + _table(runs)


def ranker_ablation(args, scratch: Path) -> str:
    data = prepare_dataset(
        "movielens-100k", scratch / "ml100k-ablation", source=args.data / "ml-100k"
    ).out_dir
    with_sequential = ["trend", "sequential", "two_tower", "content", "kg_neighbours"]
    variants = {
        "monotone ranks, sequential source added": {"extra_sources": with_sequential},
        "sequential source added, no monotone constraints (monotone_features {})": {
            "extra_sources": with_sequential,
            "monotone_features": {},
        },
        "defaults: monotone ranks, no sequential source": {},
    }
    results = {label: [] for label in variants}
    for seed in args.seeds:
        for label, overrides in variants.items():
            config = _config("random:0.25", seed)
            config.ranker = config.ranker.replace(**overrides)
            # A fresh folder per run: a reused one keeps the first run's embeddings and two-tower files,
            # and the lists then differ from a fresh run of the same configuration.
            out_dir = scratch / f"ml-ablation-{seed}-{len(results[label])}-{list(variants).index(label)}"
            results[label].append(run_pipeline(data, out_dir, config))
    rows = ["| ranker | final ndcg@10 | per seed | ranker used |", "|---|---|---|---|"]
    for label, runs in results.items():
        values = np.array([run.metrics["final"]["ndcg@10"] for run in runs])
        used = sum(run.selected_model == "ranker" for run in runs)
        rows.append(
            f"| {label} | {values.mean():.4f} ± {values.std():.4f} | "
            f"{' / '.join(f'{value:.4f}' for value in values)} | {used} of {len(runs)} |"
        )
    header = _header("MovieLens-100K ranker ablation, 75/25 per-user random split", "ranker_ablation", args)
    return header + "\n".join(rows)


def lastfm(args, scratch: Path) -> str:
    data = prepare_dataset(
        "lastfm-hetrec", scratch / "lastfm", source=args.data / "hetrec2011-lastfm-2k"
    ).out_dir
    seeds = args.seeds[:1]
    runs = [run_pipeline(data, scratch / f"lastfm-{seed}", _config("random:0.2", seed)) for seed in seeds]
    final = np.mean([run.metrics["final"]["ndcg@10"] for run in runs])
    best_name = max(BASELINES, key=lambda name: np.mean([run.metrics[name]["ndcg@10"] for run in runs]))
    best = np.mean([run.metrics[best_name]["ndcg@10"] for run in runs])
    verdict = f"\nFinal NDCG@10 {final:.4f} vs best single baseline ({best_name}) {best:.4f}: {100 * (final / best - 1):+.1f}%."
    return (
        _header("Last.FM HetRec, 80/20 per-user random split", "lastfm", args, seeds) + _table(runs) + verdict
    )


def kgcn(args, scratch: Path) -> str:
    from ctr_protocol import ctr_benchmark

    data = prepare_dataset(
        "lastfm-hetrec",
        scratch / "lastfm-kgcn",
        source=args.data / "hetrec2011-lastfm-2k",
        kgcn=args.data / "kgcn-music",
    ).out_dir
    result = ctr_benchmark(
        data, args.data / "kgcn-music" / "item_index2entity_id.txt", scratch / "kgcn-run", seed=args.seeds[0]
    )
    lines = [
        _header(
            "Last.FM + KGCN graph, KGCN CTR protocol (6:2:2 pairs, 1 negative per positive)",
            "kgcn",
            args,
            args.seeds[:1],
        ),
        "| model | AUC | F1 |",
        "|---|---|---|",
        f"| m6rec ranker (binary, all features) | {result['auc']:.4f} | {result['f1']:.4f} |",
        *(f"| {name} score alone | {value['auc']:.4f} | — |" for name, value in result["sources"].items()),
        "| KGCN-concat (published, Wang et al. WWW 2019) | 0.796 | 0.721 |",
        "| KGCN-sum (published) | 0.794 | 0.719 |",
        "",
        f"Pairs: {json.dumps(result['counts'])}. F1 at the threshold chosen on the evaluation split "
        f"({result['threshold']:.3f}).",
    ]
    return "\n".join(lines)


def ablation(args, scratch: Path) -> str:
    data = generate_demo_catalogue(scratch / "demo", DemoCatalogueSpec())
    variants = {
        "collaborative only": ["cf"],
        "+ text": ["text", "cf"],
        "+ KG": ["text", "kg", "cf"],
        "+ image and audio (everything)": ["text", "kg", "image", "audio", "cf"],
    }
    rows = [
        "| modalities | final ndcg@10 | final recall@20 | candidate recall | ranker used |",
        "|---|---|---|---|---|",
    ]
    for label, modalities in variants.items():
        config = _config("none", args.seeds[0])
        config.embeddings.modalities = modalities
        run = run_pipeline(data, scratch / f"ablation-{len(modalities)}", config)
        final = run.metrics["final"]
        used = (run.summary.get("ranker") or {}).get("used")
        rows.append(
            f"| {label} | {final['ndcg@10']:.4f} | {final['recall@20']:.4f} | "
            f"{final.get('candidate_recall', float('nan')):.4f} | {used} |"
        )
    best_baseline = max(BASELINES, key=lambda name: run.metrics[name]["ndcg@10"])
    rows.append(
        f"| best single baseline ({best_baseline}) | {run.metrics[best_baseline]['ndcg@10']:.4f} | "
        f"{run.metrics[best_baseline]['recall@20']:.4f} | — | — |"
    )
    header = _header(
        "Ablation on the synthetic demo catalogue (its own test file; 24 cold items)",
        "ablation",
        args,
        args.seeds[:1],
    )
    return header + "\n".join(rows)


def coldstart(args, scratch: Path) -> str:
    raw = prepare_dataset("movielens-100k", scratch / "ml-cold-raw", source=args.data / "ml-100k").out_dir
    data = scratch / "ml-cold"
    data.mkdir()
    interactions = pd.read_parquet(raw / "interactions.parquet")
    rng = np.random.default_rng(args.seeds[0])
    items = interactions["item_id"].unique()
    cold = set(rng.choice(items, size=len(items) // 10, replace=False))
    is_cold = interactions["item_id"].isin(cold)
    from m6rec.data.splits import random_split
    from m6rec.evaluation.metrics import evaluate_recommendations

    warm_train, warm_test = random_split(interactions[~is_cold], 0.25, seed=args.seeds[0])
    warm_train.to_parquet(data / "interactions.parquet", index=False)
    pd.concat([warm_test, interactions[is_cold]]).to_parquet(data / "test.parquet", index=False)
    for name in ("items", "users", "kg"):
        (data / f"{name}.parquet").write_bytes((raw / f"{name}.parquet").read_bytes())
    cold_test = interactions[is_cold]
    catalogue = pd.read_parquet(raw / "items.parquet")["item_id"]
    variants = {
        "final list, no cold-item handling (cold_item_share 0)": {"cold_item_share": 0.0},
        "final list, defaults (10% of the fold's items simulated as new)": {},
        "final list, defaults + new_item_slots 5 (every 10th place)": {"new_item_slots": 5},
    }
    rows = [
        "| list | Recall@50 on the cold items | NDCG@10 on the warm items | cold items in top-10 / top-50 |",
        "|---|---|---|---|",
    ]
    for number, (label, overrides) in enumerate(variants.items()):
        config = _config("none", args.seeds[0])
        config.top_k = 50
        config.ranker = config.ranker.replace(**overrides)
        # One output folder for every variant: later runs reuse the item embeddings of the first.
        run = run_pipeline(data, scratch / "cold-run", config)
        recs = pd.read_parquet(run.recommendations_path)
        cold_metrics = evaluate_recommendations(recs, cold_test, k_values=(50,), catalogue=catalogue)
        warm_metrics = evaluate_recommendations(recs, warm_test, k_values=(10,), catalogue=catalogue)
        in_cold = recs["item_id"].isin(cold)
        share_10, share_50 = in_cold[recs["rank"] <= 10].mean(), in_cold.mean()
        if number == 0:
            content_recall = _source_recall_on(run.out_dir, cold_test, "content", 50)
            rows.append(
                f"| content source (fused text + KG vectors, user profile query) | {content_recall:.4f} | — | — |"
            )
        used = "ranker" if run.selected_model == "ranker" else f"ranker not used: {run.selected_model}"
        rows.append(
            f"| {label} ({used}) | {cold_metrics['recall@50']:.4f} | {warm_metrics['ndcg@10']:.4f} | "
            f"{share_10:.3f} / {share_50:.3f} |"
        )
    rows.append("| any collaborative-only source | 0.0000 (cold items have no interactions) | — | — |")
    header = _header(
        f"Cold start: {len(cold)} MovieLens-100K items held out entirely (all their ratings in test)",
        "coldstart",
        args,
        args.seeds[:1],
    )
    note = (
        "\n\nRecall@50 on the cold items is the mean over users with cold test items; NDCG@10 on the warm "
        "items is over users with warm test items, cold items in a list counting as misses. The last "
        "column is the share of list positions that hold a cold item."
    )
    return header + "\n".join(rows) + note


def _source_recall_on(out_dir: Path, relevant: pd.DataFrame, source: str, k: int) -> float:
    from ranker.features import read_feature_table

    table = read_feature_table(out_dir / "ranker_features.parquet")
    users = pd.read_parquet(out_dir / "index" / "users.parquet")["user_id"].astype(str).to_numpy()
    items = pd.read_parquet(out_dir / "index" / "items.parquet")["item_id"].astype(str).to_numpy()
    hits = table[table[f"{source}_rank"] <= k]
    proposed = pd.DataFrame({"user_id": users[hits["user_row"]], "item_id": items[hits["item"]]})
    found = proposed.merge(relevant[["user_id", "item_id"]].astype(str), on=["user_id", "item_id"])
    per_user = relevant.groupby("user_id").size()
    per_user.index = per_user.index.astype(str)
    return float(
        (found.groupby("user_id").size() / per_user).reindex(per_user.index, fill_value=0).fillna(0).mean()
    )


def _config(split: str, seed: int) -> RunConfig:
    return RunConfig(
        split=split, seed=seed, embeddings=EmbeddingConfig(modalities=["text", "image", "audio", "kg", "cf"])
    )


def _header(title: str, section: str, args, seeds=None) -> str:
    seeds = seeds or args.seeds
    command = f".venv/bin/python benchmarks/two_stage.py --only {section} --seeds {' '.join(map(str, seeds))} --out docs/benchmarks.md"
    return f"## Two-stage: {title}\n\nCommand: `{command}`\n\n"


def _table(runs) -> str:
    names = [name for name in runs[0].metrics if name != "final"] + ["final"]
    columns = ["ndcg@10", "recall@10", "map@10", "recall@20"]
    lines = ["| list | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for column in columns:
            values = np.array([run.metrics[name][column] for run in runs])
            cells.append(f"{values.mean():.4f}" + (f" ± {values.std():.4f}" if len(values) > 1 else ""))
        label = (
            f"final ({', '.join(sorted({run.selected_model for run in runs}))})" if name == "final" else name
        )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ceiling = np.array([run.metrics["final"].get("candidate_recall", np.nan) for run in runs])
    lines += [
        "",
        f"Candidate-stage recall ceiling (share of test items among the merged candidates): "
        f"{np.nanmean(ceiling):.4f}; final NDCG@10 {np.mean([r.metrics['final']['ndcg@10'] for r in runs]):.4f}.",
    ]
    return "\n".join(lines)


SECTION_FUNCTIONS = {
    "ml100k": ml100k,
    "ranker_ablation": ranker_ablation,
    "lastfm": lastfm,
    "kgcn": kgcn,
    "ablation": ablation,
    "coldstart": coldstart,
}

if __name__ == "__main__":
    main()
