"""Scale benchmark: a training run and three nightly batches on synthetic catalogues of growing size.

For each size (users; items = users / 10; interactions = 20 × users) ``m6rec datasets synth`` data is cut
into two nights: night 0 without the latest 1% of the interactions, night 1 with all of them. Each step
runs in a process of its own, which reports its wall time and peak resident memory:

- ``train``: ``m6rec run`` on night 0 (no test set: the lists come from every interaction);
- ``same``: the nightly batch on night 0 again (nothing changed);
- ``new``: the nightly batch on night 1 (1% new interactions), after ``same``;
- ``all``: the batch on night 1 scoring every user (``batch.rescore_all_share: 0``), whose wall time per
  user is the batch's cost per user.

The configuration is the default one with what a catalogue of this size needs said outright: the text
embeddings only (the synthetic items have text, no media; KG attributes and the two-tower model are left
out of this benchmark), EASE tuned on its grid (one eigendecomposition), ItemKNN and iALS at fixed
parameters, the feature table restricted to the listed candidates (``ranker.feature_table: listed``),
50 candidates per source and a ranker of at most 300 rounds at learning rate 0.1 trained on 20,000 users:
scoring is LightGBM-bound (about 50 ns per tree and candidate row on this CPU), so the rows per user and
the trees set the batch's cost per user.

Each step's report is kept beside its outputs under ``--work``; ``--resume`` reuses the steps already
completed there (same code and data), so a long size can be finished in parts.

``--dask local:1 local:2`` (or scheduler addresses) adds, per address, the all-users batch again with
``dask.address`` set (the item encoders and the lists' partitions on those workers), reported as its
wall time against the first address's in the section ``scale-dask`` of ``--out``.

Usage: .venv/bin/python benchmarks/scale.py [--users 100000 300000 1000000] [--work /tmp/m6rec-scale]
       [--resume] [--out docs/benchmarks.md] [--json benchmarks/results/scale.json]
       [--dask local:1 local:2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

NEW_SHARE = 0.01
STEPS = ("train", "same", "new", "all")
SCALE_CONFIG = {
    "embeddings": {"modalities": ["text"]},
    "baselines": {
        "search_spaces": {"ease": {"l2": [100.0, 500.0, 2000.0]}, "itemknn": {}, "ials": {}},
        "params": {
            "itemknn": {"neighbours": 200},
            "ials": {"factors": 64, "regularization": 10.0, "alpha": 1.0, "iterations": 10},
        },
    },
    "ranker": {
        "extra_sources": ["trend", "content"],
        "feature_table": "listed",
        "candidates_per_source": 50,
        "max_training_users": 20_000,
        "params": {"n_estimators": 300, "learning_rate": 0.1},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/m6rec-scale"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="the steps to run (with --resume, steps done before are reported too)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the report (and outputs) of every step already completed under --work",
    )
    parser.add_argument(
        "--dask", nargs="+", default=[], metavar="ADDRESS", help="the all-users batch on these Dask addresses"
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        _run_step(args.step, *args.args)
        return
    results = []
    for users in args.users:
        results.append(
            _one_size(users, args.work / f"u{users}", args.steps, resume=args.resume, dask=args.dask)
        )
        print(json.dumps(results[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    body = _table(results)
    print(body)
    if args.out:
        update_section(args.out, "scale", body)
    if args.dask:
        body = _dask_table(results, args.dask)
        print(body)
        if args.out:
            update_section(args.out, "scale-dask", body)


def _one_size(
    users: int, work: Path, steps_to_run: list[str], *, resume: bool = False, dask: list[str] = ()
) -> dict:
    from m6rec.data.synth import SyntheticSpec, generate_synthetic_dataset

    started = time.perf_counter()
    full = work / "night1"
    spec = SyntheticSpec(users=users, items=users // 10, interactions=20 * users, seed=7, test_share=0.0)
    if not (full / "synth.json").exists():
        generate_synthetic_dataset(full, spec)
    night0 = _without_latest(full, work / "night0", NEW_SHARE)
    config = work / "scale.yaml"
    config.write_text(json.dumps(SCALE_CONFIG))
    all_config = work / "scale-all.yaml"
    all_config.write_text(json.dumps({**SCALE_CONFIG, "batch": {"rescore_all_share": 0.0}}))
    model = work / "model"
    prepared = time.perf_counter() - started
    plan = {
        "train": ("train", night0, model, config),
        "same": ("batch", night0, model, model / "lists", config),
        "new": ("batch", full, model, model / "lists", config),
        "all": ("batch", full, model, work / "lists-all", all_config),
    }
    for address in dask:
        name = _dask_step(address)
        dask_config = work / f"scale-{name}.yaml"
        dask_config.write_text(
            json.dumps({**SCALE_CONFIG, "batch": {"rescore_all_share": 0.0}, "dask": {"address": address}})
        )
        plan[name] = ("batch", full, model, work / f"lists-{name}", dask_config)
        steps_to_run = [*steps_to_run, name]
    steps = {}
    for name, (kind, *paths) in plan.items():
        report = work / f"{name}.json"
        if name in steps_to_run and not (resume and report.exists()):
            # A step's report goes only after it completed, so --resume redoes the ones that did not.
            report.unlink(missing_ok=True)
            report.write_text(json.dumps(_step(work / f"{name}.log", kind, *paths)))
        if report.exists():
            steps[name] = json.loads(report.read_text())
    return {"users": users, "items": users // 10, "interactions": 20 * users, "prepare_s": prepared, **steps}


def _without_latest(full: Path, out: Path, share: float) -> Path:
    """``full`` without the latest ``share`` of its interactions (the other tables hard-linked as they
    are: a run reads only regular files inside its dataset folder, so symlinks out of it are refused)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if (out / "interactions.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for path in full.iterdir():
        if path.name != "interactions.parquet" and not (out / path.name).exists():
            os.link(path.resolve(), out / path.name)
    table = pq.read_table(full / "interactions.parquet")
    cutoff = pc.quantile(table["timestamp"], q=1 - share, interpolation="lower")[0].as_py()
    pq.write_table(table.filter(pc.less(table["timestamp"], cutoff)), out / "interactions.parquet")
    return out


def _step(log_path: Path, kind: str, *paths: Path) -> dict:
    """Run one step in its own process (its log into ``log_path``); its wall time, peak RSS (the
    highest of its stages' peaks: the stage clock resets the process's peak between stages) and what it
    reported."""
    command = [sys.executable, __file__, "--step", kind, "--args", *map(str, paths)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"step {kind} failed: see {log_path}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["peak_rss_mib"] = max([report["peak_rss_mib"], *report["stage_peak_rss_mib"].values()])
    return {"wall_s": round(wall, 1), **report}


def _run_step(kind: str, *args: str) -> None:
    import logging

    from m6rec.config import load_config
    from m6rec.log import configure_logging

    configure_logging(logging.INFO)
    if kind == "train":
        from pipelines.run import run_pipeline

        data, out, config_path = args
        config = load_config(json.loads(Path(config_path).read_text()), config_path)
        result = run_pipeline(data, out, config)
        report = {
            "selected": result.selected_model,
            "stage_seconds": result.summary["timings_seconds"],
            "stage_peak_rss_mib": result.summary["peak_rss_mib"],
        }
    else:
        from pipelines.batch import batch_recommend

        data, model, out, config_path = args
        config = load_config(json.loads(Path(config_path).read_text()), config_path)
        summary = batch_recommend(data, model, out, config).summary
        report = {
            "reused_lists": bool(summary.get("reused_lists")),
            "sources_mode": summary.get("sources_mode"),
            "users_scored": summary.get("counts", {}).get("users_scored", 0),
            "users": summary.get("counts", {}).get("users"),
            "encoders_loaded": _encoders_loaded(summary),
            "stage_seconds": summary.get("timings_seconds", {}),
            "stage_peak_rss_mib": summary.get("peak_rss_mib", {}),
        }
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report))


def _dask_step(address: str) -> str:
    """The step (and report) name of the all-users batch on ``address``."""
    return "all-dask-" + "".join(char if char.isalnum() else "-" for char in address)


def _dask_table(results: list[dict], addresses: list[str]) -> str:
    lines = [
        "## Scale: the all-users batch on Dask workers",
        "",
        f"Command: `.venv/bin/python benchmarks/scale.py --users {' '.join(str(r['users']) for r in results)} "
        f"--steps all --dask {' '.join(addresses)} --resume --out docs/benchmarks.md`",
        "",
        f"Measured on {platform.machine()} with {os.cpu_count()} cores; the same batch as the all-users "
        "step, with `dask.address` set, one process per run.",
        "",
        "| users | " + " | ".join(addresses) + " | speed-up |",
        "|---|" + "---|" * (len(addresses) + 1),
    ]
    for result in results:
        walls = [result.get(_dask_step(address), {}).get("wall_s") for address in addresses]
        cells = [f"{wall:.0f} s" if wall else "not run" for wall in walls]
        speed = f"{walls[0] / walls[-1]:.2f}×" if walls[0] and walls[-1] and len(walls) > 1 else "-"
        lines.append(f"| {result['users']:,} | " + " | ".join(cells) + f" | {speed} |")
    return "\n".join(lines) + "\n"


def _encoders_loaded(summary: dict) -> list[str]:
    """The frozen encoders whose model the batch loaded: those that computed any item."""
    counts = (summary.get("embeddings") or {}).get("counts", {})
    return sorted(name for name in ("text", "image", "audio") if counts.get(name, {}).get("computed", 0) > 0)


def _batch_cell(step: dict | None, train: dict | None, *, with_users: bool) -> str:
    """A batch step's wall time, its share of the training run and (``with_users``) the users scored."""
    if step is None:
        return "not run"
    details = [f"{step['wall_s'] / train['wall_s']:.1%}"] if train else []
    details += [f"{step['users_scored']:,} users scored"] if with_users else []
    return f"{step['wall_s']:.0f} s" + (f" ({', '.join(details)})" if details else "")


def _table(results: list[dict]) -> str:
    header = (
        "## Scale: training run and nightly batches on synthetic catalogues\n\n"
        f"Command: `.venv/bin/python benchmarks/scale.py --users {' '.join(str(r['users']) for r in results)} "
        "--out docs/benchmarks.md --json benchmarks/results/scale.json`\n\n"
        f"Measured on {platform.machine()} with {os.cpu_count()} cores, one process per step.\n\n"
        "| users | items | interactions | training run | peak | nothing changed | 1% new | all users scored | peak (batch) | batch per user |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    first_per_user = None
    for result in results:
        train = result.get("train")
        cells = [f"{result['users']:,}", f"{result['items']:,}", f"{result['interactions']:,}"]
        cells += (
            [f"{train['wall_s']:.0f} s", f"{train['peak_rss_mib'] / 1024:.1f} GiB"]
            if train
            else ["not run"] * 2
        )
        same, new, everyone = (result.get(name) for name in ("same", "new", "all"))
        cells.append(_batch_cell(same, train, with_users=False))
        cells.append(_batch_cell(new, train, with_users=True))
        batches = [step for step in (same, new, everyone) if step]
        if everyone:
            per_user = everyone["wall_s"] / result["users"] * 1000
            first_per_user = first_per_user or per_user
            cells.append(f"{everyone['wall_s']:.0f} s")
        else:
            cells.append("not run")
        cells.append(f"{max(step['peak_rss_mib'] for step in batches) / 1024:.1f} GiB" if batches else "-")
        cells.append(f"{per_user:.2f} ms ({per_user / first_per_user:.2f}×)" if everyone else "-")
        rows.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Percentages are of the training run on the same data. Nothing changed: the batch finds the lists "
        "of the same model and data and keeps them (no encoder loaded: "
        + ", ".join(
            f"{r['users']:,}: {r['same']['encoders_loaded'] or 'none'}" for r in results if "same" in r
        )
        + "). 1% new: the saved sources fold in the new interactions and only users with a changed history "
        "are scored again. Batch per user: the all-users batch's wall time per user, relative to the "
        "smallest size.",
    ]
    return header + "\n".join(rows) + "\n" + "\n".join(notes) + "\n"


if __name__ == "__main__":
    main()
