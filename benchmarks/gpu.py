"""GPU benchmark: each GPU path of m6rec against the CPU, side by side in one run, with the card's name.

One command for a machine with a GPU (about 5 minutes on an H100-class card; the CPU side sets the pace):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --out docs/benchmarks.md

Rows, each timed on the CPU and on CUDA with the same inputs (the best of ``--repeats`` runs after one
warm-up):

- text: MiniLM embeddings of the MovieLens-100K titles (``TextEncoder`` end to end, benchmarks/
  embedding_throughput.py);
- image: CLIP ViT-B-32 embeddings of ~600 GroceryStore photos (seeded random weights: no pretrained
  weights are reachable offline, so this is throughput only);
- kg: pykeen training of the MovieLens-100K attribute graph, ``--kg-epochs`` epochs;
- two-tower: ``--two-tower-epochs`` epochs of the two-tower model on MovieLens-100K (no content);
- faiss: exact inner-product search (``IndexFlatIP``) of 10,000 queries, top 100, over 100,000 clustered
  64-dimensional vectors, on faiss-cpu against a GPU index (needs the faiss-gpu wheel, see pyproject);
- dask: the text row again, encoded through a one-worker ``LocalCluster`` (the partitioned path of
  ``m6rec embed --dask``), against the same encoder in-process on the same device.

Without CUDA the script still runs the CPU column and says so (a check of the script, not a GPU result).

Usage: .venv/bin/python benchmarks/gpu.py [--data ../shared/data] [--repeats 2] [--kg-epochs 20]
       [--two-tower-epochs 3] [--out docs/benchmarks.md] [--json benchmarks/results/gpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402
from embedding_throughput import bench_image, bench_text  # noqa: E402

DEVICES = ("cpu", "cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kg-epochs", type=int, default=20)
    parser.add_argument("--two-tower-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    devices = [device for device in DEVICES if device == "cpu" or torch.cuda.is_available()]
    card = torch.cuda.get_device_name() if "cuda" in devices else None
    print(
        f"devices: {devices}; card: {card or 'none (CPU column only)'}; torch {torch.__version__}", flush=True
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        dataset = _movielens(args.data, scratch)
        for name, bench in (
            ("text", lambda device, s: _encoder_seconds(bench_text, args, device, s)),
            ("image", lambda device, s: _encoder_seconds(bench_image, args, device, s)),
            ("kg", lambda device, s: _kg_seconds(dataset, args, device, s)),
            ("two-tower", lambda device, s: _two_tower_seconds(dataset, args, device)),
            ("faiss", lambda device, s: _faiss_seconds(device)),
            ("dask (1 worker)", lambda device, s: _dask_seconds(dataset, args, device, s)),
        ):
            row = {"row": name}
            for device in devices:
                started = time.perf_counter()
                row[device] = bench(device, scratch / f"{name}-{device}".replace(" ", "_"))
                print(
                    f"{name} on {device}: {json.dumps(row[device])} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            rows.append(row)
    result = {
        "card": card,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    body = _table(result, args)
    print(body)
    if args.out:
        update_section(args.out, "gpu", body)


def _movielens(data: Path, scratch: Path):
    from m6rec.data.dataset import load_dataset
    from m6rec.data.prepare import prepare_dataset

    return load_dataset(
        prepare_dataset("movielens-100k", scratch / "ml100k", source=data / "ml-100k").out_dir
    )


def _best(repeats: int, run) -> float:
    run()  # warm-up: model loads, CUDA context, kernels
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _encoder_seconds(bench, args, device: str, scratch: Path) -> dict:
    scratch.mkdir(parents=True)
    options = SimpleNamespace(
        data=args.data,
        device=device,
        image_model="ViT-B-32",
        pretrained=None,
        repeats=args.repeats,
        num_workers=2,
    )
    found = bench(options, scratch, None)
    return {"seconds": found.ours_seconds, "items": found.items, "per_second": found.ours_per_second}


def _kg_seconds(dataset, args, device: str, scratch: Path) -> dict:
    from features.kg import KGConfig, build_kg_triples, train_kg_embeddings

    triples = build_kg_triples(dataset.kg, dataset.items, item_columns=dataset.item_columns)
    config = KGConfig(epochs=args.kg_epochs, force_cpu=device == "cpu", warm_start_epochs=0)
    items = dataset.items["item_id"].astype(str).tolist()
    runs = iter(range(1_000))
    seconds = _best(
        args.repeats,
        lambda: train_kg_embeddings(triples, items, scratch / f"kg-{next(runs)}.parquet", config),
    )
    return {"seconds": seconds, "triples": len(triples), "epochs": args.kg_epochs}


def _two_tower_seconds(dataset, args, device: str) -> dict:
    from features.two_tower import TwoTowerConfig, train_two_tower
    from m6rec.data.interactions import IdIndex, InteractionMatrix

    frame = dataset.interactions
    matrix = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame["user_id"]), IdIndex.from_values(frame["item_id"])
    )
    config = TwoTowerConfig(epochs=args.two_tower_epochs, force_cpu=device == "cpu")
    seconds = _best(args.repeats, lambda: train_two_tower(matrix, {}, config))
    return {"seconds": seconds, "interactions": int(matrix.matrix.nnz), "epochs": args.two_tower_epochs}


def _faiss_seconds(device: str) -> dict | None:
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64)).astype(np.float32)
    items = (centres[rng.integers(0, 200, 100_000)] + 0.3 * rng.standard_normal((100_000, 64))).astype(
        np.float32
    )
    queries = (centres[rng.integers(0, 200, 10_000)] + 0.3 * rng.standard_normal((10_000, 64))).astype(
        np.float32
    )
    index = faiss.IndexFlatIP(64)
    if device == "cuda":
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            return None  # faiss-cpu installed: see pyproject's gpu extra
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(items)
    return {
        "seconds": _best(2, lambda: index.search(queries, 100)),
        "vectors": len(items),
        "queries": len(queries),
    }


def _dask_seconds(dataset, args, device: str, scratch: Path) -> dict:
    from features.base import encode_items
    from features.encoders import create_encoder
    from m6rec.cluster import cluster_at

    scratch.mkdir(parents=True)
    runs = iter(range(1_000))

    def encode(cluster=None) -> None:
        encoder = create_encoder("text", item_columns=dataset.item_columns, force_cpu=device == "cpu")
        encode_items(
            encoder, dataset.items, dataset.directory, scratch / f"text-{next(runs)}.parquet", cluster=cluster
        )

    in_process = _best(args.repeats, encode)
    with cluster_at("local:1") as cluster:
        on_worker = _best(args.repeats, lambda: encode(cluster))
    return {"seconds": on_worker, "in_process_seconds": in_process, "items": len(dataset.items)}


def _table(result: dict, args) -> str:
    card = result["card"]
    lines = [
        "## GPU runs",
        "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --repeats {args.repeats} --kg-epochs "
        f"{args.kg_epochs} --two-tower-epochs {args.two_tower_epochs} --out docs/benchmarks.md`",
        "",
        f"Card: **{card}**; CPU: {result['cpu']}, {result['cores']} cores."
        if card
        else f"**No CUDA device**: CPU column only ({result['cpu']}, {result['cores']} cores); a check of "
        "the script, not a GPU measurement.",
        "",
        "| row | what | CPU (s) | CUDA (s) | CPU / CUDA |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cpu, cuda = row.get("cpu"), row.get("cuda")
        what = ", ".join(
            f"{key} {value:,}"
            for key, value in (cpu or {}).items()
            if key != "seconds" and isinstance(value, int)
        )
        ratio = f"{cpu['seconds'] / cuda['seconds']:.1f}×" if cpu and cuda else "-"
        cuda_cell = (
            f"{cuda['seconds']:.2f}" if cuda else ("no FAISS GPU" if row["row"] == "faiss" and card else "-")
        )
        lines.append(f"| {row['row']} | {what} | {cpu['seconds']:.2f} | {cuda_cell} | {ratio} |")
    dask = next(row for row in result["rows"] if row["row"].startswith("dask"))
    lines += [
        "",
        "dask: the text encoding through one local worker process against the same encoder in-process, per "
        "device: "
        + "; ".join(
            f"{device} {dask[device]['seconds']:.2f} s against {dask[device]['in_process_seconds']:.2f} s"
            for device in DEVICES
            if dask.get(device)
        )
        + ". Image rows use seeded random ViT-B-32 weights (throughput only).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
