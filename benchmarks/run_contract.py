"""One `m6rec run` on the demo catalogue, measured for the contracts between its stages.

Prints (and with ``--out FILE`` writes as JSON): the run folder's file list, ``metrics.json``, how many
times each embedding file was read (``read_embeddings``) and how many user profiles were computed
(``user_profiles``), both in ``m6rec.embeddings``. Run it before and after a change to the stages and
compare with ``--compare BEFORE.json``: same files (but the ones named in ``--allow-new``), metrics
within ``--tolerance``.

    .venv/bin/python benchmarks/run_contract.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _count_calls() -> tuple[Counter, Counter]:
    """Wrap the embedding reader and the profile computation before any pipeline module imports them."""
    import importlib

    try:
        store, profiles_module = (
            importlib.import_module(f"m6rec.embeddings.{name}") for name in ("store", "profiles")
        )
    except ModuleNotFoundError:  # before the embedding contract moved into m6rec core
        store, profiles_module = (
            importlib.import_module(f"features.{name}") for name in ("store", "profiles")
        )

    reads, profiles = Counter(), Counter()
    read, profile = store.read_embeddings, profiles_module.user_profiles

    def counted_read(path, *args, **kwargs):
        reads[Path(path).name if Path(path).parent.name != "fold" else f"fold/{Path(path).name}"] += 1
        return read(path, *args, **kwargs)

    def counted_profile(*args, **kwargs):
        profiles["user_profiles"] += 1
        return profile(*args, **kwargs)

    store.read_embeddings = counted_read
    profiles_module.user_profiles = counted_profile
    return reads, profiles


def measure(scratch: Path) -> dict:
    reads, profiles = _count_calls()
    from m6rec.config import RunConfig
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
    from m6rec.log import configure_logging
    from pipelines.run import run_pipeline

    configure_logging()
    catalogue = generate_demo_catalogue(scratch / "catalogue", DemoCatalogueSpec(seed=7))
    started = time.perf_counter()
    result = run_pipeline(catalogue, scratch / "run", RunConfig())
    seconds = time.perf_counter() - started
    files = sorted(
        str(path.relative_to(result.out_dir)) for path in result.out_dir.rglob("*") if path.is_file()
    )
    return {
        "files": files,
        "metrics": json.loads((result.out_dir / "metrics.json").read_text()),
        "embedding_file_reads": dict(sorted(reads.items())),
        "embedding_file_reads_total": sum(reads.values()),
        "profile_computations": profiles["user_profiles"],
        "seconds": round(seconds, 1),
    }


def compare(before: dict, after: dict, tolerance: float, allow_new: set[str]) -> list[str]:
    """Differences that break the contract: files added or lost, metrics beyond ``tolerance``."""
    problems = []
    added = set(after["files"]) - set(before["files"]) - allow_new
    lost = set(before["files"]) - set(after["files"])
    problems += [f"new file {name}" for name in sorted(added)] + [
        f"lost file {name}" for name in sorted(lost)
    ]
    for model, values in before["metrics"].items():
        for key, value in values.items():
            other = after["metrics"].get(model, {}).get(key)
            if other is None or abs(other - value) > tolerance:
                problems.append(f"metrics {model}.{key}: {value} before, {other} after")
    return problems


def _write_section(doc: Path, before: dict, after: dict, verdict: str, args) -> None:
    from _report import update_section

    rows = ["| | before | after |", "|---|---|---|"]
    rows.append(
        f"| embedding-file reads | {before['embedding_file_reads_total']} | {after['embedding_file_reads_total']} |"
    )
    for name in sorted(set(before["embedding_file_reads"]) | set(after["embedding_file_reads"])):
        rows.append(
            f"| &nbsp;&nbsp;{name} | {before['embedding_file_reads'].get(name, 0)} | "
            f"{after['embedding_file_reads'].get(name, 0)} |"
        )
    rows.append(
        f"| profile computations | {before['profile_computations']} | {after['profile_computations']} |"
    )
    rows.append(f"| files in the run folder | {len(before['files'])} | {len(after['files'])} |")
    final_before, final_after = before["metrics"]["final"], after["metrics"]["final"]
    rows.append(f"| final NDCG@10 | {final_before['ndcg@10']:.6f} | {final_after['ndcg@10']:.6f} |")
    body = "\n".join(
        [
            "## Contracts between stages: one `m6rec run` on the demo catalogue (seed 7, default configuration)",
            "",
            f"`.venv/bin/python benchmarks/run_contract.py --compare {args.compare} --out {args.out} --doc {doc}"
            + (f" --allow-new {args.allow_new}" if args.allow_new != "model.json" else "")
            + (f" --before-commit {args.before_commit}" if args.before_commit else "")
            + "`; the "
            "before file was measured the same way on the code before the change"
            + (f" (commit {args.before_commit})." if args.before_commit else "."),
            "",
            *rows,
            "",
            f"Verdict: {verdict}.",
        ]
    )
    update_section(doc, "run-contract", body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the measurement here as JSON")
    parser.add_argument("--compare", type=Path, help="a measurement from before the change")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--allow-new", default="model.json", help="comma-separated files a change may add")
    parser.add_argument(
        "--doc", type=Path, help="with --compare: write the before/after table into this file"
    )
    parser.add_argument("--before-commit", default="", help="the commit the --compare file was measured on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        measured = measure(Path(scratch))
    shown = {key: value for key, value in measured.items() if key != "metrics"}
    print(json.dumps(shown, indent=2))
    if args.out:
        args.out.write_text(json.dumps(measured, indent=2) + "\n")
    if args.compare:
        problems = compare(
            json.loads(args.compare.read_text()), measured, args.tolerance, set(args.allow_new.split(","))
        )
        verdict = (
            "\n".join(problems)
            or f"same files (new allowed: {args.allow_new}), metrics within {args.tolerance}"
        )
        print(verdict)
        if args.doc:
            _write_section(args.doc, json.loads(args.compare.read_text()), measured, verdict, args)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
