"""Item-item sources at catalogue scale: EASE's l2 grid from one eigendecomposition against one inverse per
l2, and the memory and catalogue coverage of EASE and ItemKNN fits at 20k and 100k items.

Interactions are synthetic and generated here with numpy (seeded): users in 50 taste clusters, user
activity log-normal (median 20 items, σ 1.2, at most 5000), item popularity Zipf (exponent 1.0 over the catalogue, shuffled),
half of each user's items drawn from the whole catalogue and half from their cluster's items, duplicates
merged. Three measurements, each in a fresh process:

- tuning: EASE over the default 6-value l2 grid, fitted one l2 at a time (an inverse each) and with
  ``EASESource.fit_grid`` (one eigendecomposition, one product per l2), on 2000- and 4000-item catalogues
  (dense) and a 20k-item one with a 4000-item head, smaller than the default ``max_items`` 8000 (whose
  per-l2 inverse alone takes about half a minute on 2 cores): wall-time ratio, largest weight difference
  and whether the top-10 lists of a user sample are equal;
- memory: the peak RSS during ``fit`` (the high-water mark, reset just before it) and its growth over
  the RSS before the fit, for EASE (defaults: l2 500,
  max_items 8000) and ItemKNN (defaults: 100 neighbours) at 20k and 100k items;
- coverage: the share of catalogue items each fitted source can score (an item with a non-zero weight
  from some item, so that some history reaches it) and the share that appears in the top-10 lists of a
  user sample; next to it, the share the previous EASE could score (only its ``max_items`` head).

Usage: .venv/bin/python benchmarks/item_item_scale.py [--users 50000] [--seed 0] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402

from m6rec.candidates import create_source, source_class  # noqa: E402
from m6rec.data.interactions import IdIndex, InteractionMatrix  # noqa: E402

SECTION = "item-item-scale"
L2_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
CATALOGUES = (20_000, 100_000)
# (catalogue, dense head): two catalogues within the dense limit (the head is all of it: inverse against
# eigendecomposition alone), and one over it (the tail's supports are shared too, its solves are not).
TUNING_CASES = ((2000, 2000), (4000, 4000), (20_000, 4000))
SAMPLE_USERS = 2000
CLUSTERS = 50
TOP_K = 10


def synthetic_interactions(n_users: int, n_items: int, seed: int) -> InteractionMatrix:
    """Seeded Zipf interactions with taste clusters (see the module docstring); binary, duplicates merged."""
    rng = np.random.default_rng([seed, n_items])
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity = popularity[rng.permutation(n_items)]
    item_cluster = rng.integers(0, CLUSTERS, n_items)
    user_cluster = rng.integers(0, CLUSTERS, n_users)
    lengths = np.clip(np.round(rng.lognormal(np.log(20.0), 1.2, n_users)), 2, 5000).astype(np.int64)
    users = np.repeat(np.arange(n_users), lengths)
    from_cluster = rng.random(len(users)) < 0.5
    items = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    by_cluster = np.argsort(item_cluster, kind="stable")
    cluster_starts = np.searchsorted(item_cluster[by_cluster], np.arange(CLUSTERS + 1))
    for cluster in range(CLUSTERS):
        members = by_cluster[cluster_starts[cluster] : cluster_starts[cluster + 1]]
        draws = from_cluster & (user_cluster[users] == cluster)
        weights = popularity[members] / popularity[members].sum()
        items[draws] = rng.choice(members, size=int(draws.sum()), p=weights)
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    user_ids = IdIndex(np.array([f"u{user}" for user in range(n_users)], dtype=object))
    item_ids = IdIndex(np.array([f"i{item}" for item in range(n_items)], dtype=object))
    return InteractionMatrix(matrix, user_ids, item_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="docs/benchmarks.md to update")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run_child(json.loads(args.child))))
        return
    started = time.perf_counter()
    tuning = [
        _in_child({"task": "tuning", "items": items, "head": head, **vars(args)})
        for items, head in TUNING_CASES
    ]
    fits = []
    for items in CATALOGUES:
        for source in ("ease", "itemknn"):
            fits.append(_in_child({"task": "fit", "source": source, "items": items, **vars(args)}))
        whole = _in_child({"task": "whole-co-occurrence", "items": items, **vars(args)})
        fits[-1]["before"] = whole
    body = _report(tuning, fits, args, time.perf_counter() - started)
    print(body)
    if args.out:
        update_section(args.out, SECTION, body)


def _in_child(task: dict) -> dict:
    """Run one measurement in a fresh interpreter (its own memory) and return its JSON result."""
    task = {key: str(value) if isinstance(value, Path) else value for key, value in task.items()}
    command = [sys.executable, __file__, "--child", json.dumps(task)]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    print(f"{task['task']} {task.get('source', 'ease')} {task['items']}: {result}", file=sys.stderr)
    return result


def _run_child(task: dict) -> dict:
    train = synthetic_interactions(task["users"], task["items"], task["seed"])
    rng = np.random.default_rng(task["seed"])
    users = np.sort(rng.choice(train.n_users, size=min(SAMPLE_USERS, train.n_users), replace=False))
    if task["task"] == "tuning":
        return _tuning(train, task["head"], users)
    if task["task"] == "whole-co-occurrence":
        return _whole_co_occurrence(train)
    return _fit(train, task["source"], users)


def _tuning(train: InteractionMatrix, head: int, users: np.ndarray) -> dict:
    grid = [{"l2": l2, "max_items": head} for l2 in L2_GRID]
    started = time.perf_counter()
    one_by_one = [create_source("ease", **params).fit(train) for params in grid]
    inverse_seconds = time.perf_counter() - started
    one_by_one_lists = [source.recommend(users, TOP_K).items for source in one_by_one]
    one_by_one_weights = [source.weights for source in one_by_one]
    del one_by_one
    started = time.perf_counter()
    largest_difference, same_lists = 0.0, True
    grid_seconds = 0.0
    for position, source in enumerate(source_class("ease").fit_grid(train, grid)):
        grid_seconds += time.perf_counter() - started
        difference = np.abs(source.weights.astype(np.float64) - one_by_one_weights[position]).max()
        largest_difference = max(largest_difference, float(difference))
        same_lists &= bool(np.array_equal(source.recommend(users, TOP_K).items, one_by_one_lists[position]))
        started = time.perf_counter()
    return {
        "head": head,
        "items": train.n_items,
        "interactions": int(train.matrix.nnz),
        "inverse_seconds": inverse_seconds,
        "grid_seconds": grid_seconds,
        "largest_weight_difference": largest_difference,
        "same_lists": same_lists,
    }


def _fit(train: InteractionMatrix, name: str, users: np.ndarray) -> dict:
    before = _reset_peak_rss()
    started = time.perf_counter()
    source = create_source(name).fit(train)
    seconds = time.perf_counter() - started
    peak = _peak_rss_mib()
    if name == "ease":
        reached = np.zeros(train.n_items, dtype=bool)
        reached[source.active_items[np.any(source.weights != 0, axis=0)]] = True
        reached[np.unique(source.tail_weights.indices)] = True
        head = len(source.active_items)
    else:
        reached = np.diff(source.similarity.tocsc().indptr) > 0
        head = None
    listed = np.unique(source.recommend(users, TOP_K).items)
    with_history = int(np.count_nonzero(train.item_popularity()))
    return {
        "source": name,
        "items": train.n_items,
        "interactions": int(train.matrix.nnz),
        "with_history": with_history,
        "seconds": seconds,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "scorable": int(reached.sum()),
        "listed": int(np.count_nonzero(listed >= 0)),
        "head": head,
        "mode": getattr(source, "mode", None),
    }


def _whole_co_occurrence(train: InteractionMatrix) -> dict:
    """The previous ItemKNN's first steps, as it wrote them: the whole items × items co-occurrence in one
    product, its diagonal zeroed and its entries normalised, before the cut to the neighbours."""
    before = _reset_peak_rss()
    columns = train.matrix.tocsc().astype(np.float32)
    co_counts = (columns.T @ columns).tocsr()
    norms = np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0)).ravel())
    co_counts.setdiag(0)
    co_counts.eliminate_zeros()
    rows = np.repeat(np.arange(co_counts.shape[0]), np.diff(co_counts.indptr))
    co_counts.data = co_counts.data / (norms[rows] * norms[co_counts.indices] + 10.0)
    return {"entries": int(co_counts.nnz), "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": before}


def _reset_peak_rss() -> float:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5) and return it in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _report(tuning: list[dict], fits: list[dict], args: argparse.Namespace, seconds: float) -> str:
    command = "Command: `.venv/bin/python benchmarks/item_item_scale.py"
    command += f" --users {args.users} --seed {args.seed} --out docs/benchmarks.md`"
    lines = [
        "## Item-item sources at scale: EASE grid reuse, memory and catalogue coverage",
        "",
        command,
        "",
        f"Synthetic Zipf interactions with taste clusters, {args.users:,} users (generated in the script,"
        f" seed {args.seed}); {platform.processor() or platform.machine()}, {_cores()} cores shared with"
        f" other work, so ratios, not absolute times, are the result. Whole run {seconds / 60:.1f} min.",
        "",
        f"**Tuning EASE over the default l2 grid** ({len(L2_GRID)} values), with dense heads smaller than"
        " the default `max_items` 8000 to keep the run short: one `fit` per l2 (an inverse each) against"
        " `EASESource.fit_grid` (one eigendecomposition, then one product per l2; over the dense limit the"
        " tail's supports are built once, its small solves still run per l2). Wall time of the fits only."
        f" Lists: top-{TOP_K} of {SAMPLE_USERS:,} sampled users, for every l2.",
        "",
        "| catalogue | dense head | interactions | inverse per l2 | one eigendecomposition | speed-up |"
        " largest weight difference | same lists |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in tuning:
        lines.append(
            f"| {row['items']:,} | {row['head']:,} | {row['interactions']:,} | {row['inverse_seconds']:.1f} s"
            f" | {row['grid_seconds']:.1f} s | {row['inverse_seconds'] / row['grid_seconds']:.2f}x"
            f" | {row['largest_weight_difference']:.1e} | {'yes' if row['same_lists'] else 'no'} |"
        )
    lines += [
        "",
        "**Fitting with default parameters** (EASE l2 500, max_items 8000, tail_neighbours 100; ItemKNN"
        " 100 neighbours), each in a fresh process: the peak RSS during `fit` (high-water mark reset just"
        " before it, data loaded) and its growth over the RSS before the fit, the"
        " share of the catalogue the fitted source can score (some item's weight reaches it) and the share"
        f" in the top-{TOP_K} lists of {SAMPLE_USERS:,} sampled users. *Before*: what the previous"
        " versions did there: EASE could score only its `max_items` head (every other item scored 0),"
        " with the same memory; ItemKNN built the whole items × items co-occurrence before cutting it to"
        " the neighbours: its entries, and the peak RSS (growth) of that step alone in its own process.",
        "",
        "| catalogue | interactions | source | mode | fit | peak RSS in fit | growth in fit | can score"
        " | in top-10 lists | before |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in fits:
        if row["head"] is not None:
            before = f"could score {row['head'] / row['items']:.1%}"
        else:
            whole = row["before"]
            growth = whole["peak_rss_mib"] - whole["rss_before_mib"]
            before = (
                f"{whole['entries'] / 1e6:,.0f}M entries, peak {whole['peak_rss_mib']:,.0f} MiB"
                f" (+{growth:,.0f} MiB)"
            )
        lines.append(
            f"| {row['items']:,} | {row['interactions']:,} | {row['source']} | {row['mode'] or '-'}"
            f" | {row['seconds']:.0f} s | {row['peak_rss_mib']:,.0f} MiB"
            f" | {row['peak_rss_mib'] - row['rss_before_mib']:,.0f} MiB | {row['scorable'] / row['items']:.1%}"
            f" | {row['listed'] / row['items']:.1%} | {before} |"
        )
    return "\n".join(lines)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
