"""Nightly item embeddings with nothing to do: a cold run, an unchanged rerun and one edited title, side by side.

On the demo catalogue (``m6rec.demo_catalogue.generate_demo_catalogue``) the item embedding stage
(``pipelines.embeddings.compute_item_embeddings``: text, image, audio, KG and their concatenated fusion)
runs three times into one features folder: cold (empty folder), again with nothing changed, and again
after one item's title changed. Each run is a fresh process, as the nightly job is: in one process the
cold run's imports and loaded models would flatter the later runs. For each run the table gives the
stage's seconds (``compute_item_embeddings`` alone, its lazy imports included), the whole process's
seconds (interpreter start, imports, dataset loading), both as ratios to the cold run, the items
computed per file, the models loaded (text transformer, image network) and the files rewritten (a file
counts as rewritten when its inode or modification time changed).

Hub access is off unless the environment says otherwise (``HF_HUB_OFFLINE=1``): the demo's image
encoder then uses its seeded random-init ViT-B-32 without trying a download.

Usage: .venv/bin/python benchmarks/nightly_embeddings_noop.py [--device cpu|cuda] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

SECTION = "nightly-embeddings-noop"
EDITED_ITEM_SUFFIX = " (remastered)"
FILES = ("text", "image", "audio", "kg", "fused")


@dataclass
class StageRun:
    """One run of the item embedding stage in its own process, as the worker reported it."""

    name: str
    stage_seconds: float
    process_seconds: float
    timings: dict[str, float]
    counts: dict[str, dict]
    model_loads: list[str]
    rewritten: list[str]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to update")
    parser.add_argument(
        "--worker", nargs=3, metavar=("CATALOGUE", "FEATURES", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        _worker(Path(args.worker[0]), Path(args.worker[1]), args.worker[2])
        return

    from m6rec.demo_catalogue import generate_demo_catalogue

    with tempfile.TemporaryDirectory() as scratch:
        catalogue = generate_demo_catalogue(Path(scratch) / "catalogue")
        features = Path(scratch) / "features"
        runs = [_run("cold", catalogue, features, args.device)]
        runs.append(_run("nothing changed", catalogue, features, args.device))
        edited = _edit_one_title(catalogue)
        runs.append(_run(f"one title changed ({edited})", catalogue, features, args.device))

    body = _markdown(runs, args.device, _device_name(args.device))
    print(body)
    if args.out is not None:
        update_section(args.out, SECTION, body)
        print(f"updated section '{SECTION}' of {args.out}")


def _run(name: str, catalogue: Path, features: Path, device: str) -> StageRun:
    """The stage in a fresh interpreter (this script in worker mode), timed from outside as a whole."""
    before = _file_stamps(features)
    environment = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **os.environ}
    command = [sys.executable, __file__, "--worker", str(catalogue), str(features), device]
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    process_seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"{name}: the worker failed:\n{finished.stderr}")
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    after = _file_stamps(features)
    rewritten = [stem for stem in FILES if stem in after and before.get(stem) != after[stem]]
    run = StageRun(
        name,
        report["stage_seconds"],
        round(process_seconds, 2),
        report["timings"],
        report["counts"],
        report["model_loads"],
        rewritten,
    )
    print(
        f"{name}: stage {run.stage_seconds:.2f} s, process {run.process_seconds:.2f} s, models loaded: "
        f"{', '.join(run.model_loads) or 'none'}, rewritten: {', '.join(rewritten) or 'none'}",
        flush=True,
    )
    return run


def _worker(catalogue: Path, features: Path, device: str) -> None:
    """Run the stage once and print one JSON line: seconds, per-stage timings, counts, models loaded."""
    loads = _count_model_loads()
    from m6rec.config import EmbeddingConfig
    from m6rec.data.dataset import load_dataset
    from pipelines.embeddings import compute_item_embeddings

    dataset = load_dataset(catalogue)
    config = EmbeddingConfig(modalities=["text", "image", "audio", "kg"], force_cpu=device == "cpu")
    started = time.perf_counter()
    result = compute_item_embeddings(dataset, features, config)
    seconds = time.perf_counter() - started
    report = {"stage_seconds": round(seconds, 2), "timings": result.timings, "counts": result.counts}
    print(json.dumps({**report, "model_loads": loads}))


def _count_model_loads() -> list[str]:
    """Wrap the text and image encoders' model loaders so that each load appends its modality."""
    import features.image as image
    import features.text as text

    loads: list[str] = []
    for module, loader, modality in ((text, "_load_model", "text"), (image, "_build_model", "image")):
        original = getattr(module, loader)

        def counted(*args, original=original, modality=modality, **kwargs):
            loads.append(modality)
            return original(*args, **kwargs)

        setattr(module, loader, counted)
    return loads


def _edit_one_title(catalogue: Path) -> str:
    """Append a suffix to the first item's title in ``items.parquet``; return that item's ID."""
    import pandas as pd

    path = catalogue / "items.parquet"
    items = pd.read_parquet(path)
    items.loc[0, "title"] = items.loc[0, "title"] + EDITED_ITEM_SUFFIX
    items.to_parquet(path, index=False)
    return str(items.loc[0, "item_id"])


def _file_stamps(features: Path) -> dict[str, tuple[int, int]]:
    stamps = {}
    for stem in FILES:
        path = features / f"{stem}.parquet"
        if path.exists():
            stamps[stem] = (path.stat().st_ino, path.stat().st_mtime_ns)
    return stamps


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _markdown(runs: list[StageRun], device: str, device_name: str) -> str:
    cold = runs[0]
    command = "    .venv/bin/python benchmarks/nightly_embeddings_noop.py " + " ".join(sys.argv[1:])
    items = cold.counts["text"]["total"]
    lines = [
        "## Nightly item embeddings with nothing to do",
        "",
        f"Device: {device} — {device_name}. The demo catalogue ({items} items; text, image, audio, KG, "
        "concatenated fusion; the image encoder is the seeded random-init ViT-B-32), the item embedding "
        "stage run three times into one features folder, each run a fresh process. *Stage* is "
        "`compute_item_embeddings` alone (lazy imports included); *process* adds interpreter start, "
        "imports and dataset loading. *Computed* counts items per file (text, image, audio, kg, fused); "
        "a file is *rewritten* when its inode or modification time changed.",
        "",
        "| run | stage s | stage / cold | process s | process / cold | computed | models loaded | rewritten |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for run in runs:
        computed = ", ".join(str(run.counts.get(stem, {}).get("computed", "–")) for stem in FILES)
        lines.append(
            f"| {run.name} | {run.stage_seconds:.2f} | {run.stage_seconds / cold.stage_seconds:.2f} "
            f"| {run.process_seconds:.2f} | {run.process_seconds / cold.process_seconds:.2f} | {computed} "
            f"| {', '.join(run.model_loads) or 'none'} | {', '.join(run.rewritten) or 'none'} |"
        )
    lines += ["", "Seconds per step of the stage:", ""]
    lines.append("| step | " + " | ".join(run.name for run in runs) + " |")
    lines.append("|---|" + "---:|" * len(runs))
    for stem in FILES:
        lines.append(f"| {stem} | " + " | ".join(f"{run.timings.get(stem, 0.0):.2f}" for run in runs) + " |")
    lines += ["", "Command:", "", command.rstrip()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
