"""How much can a learned ranker add to EASE on MovieLens-100K, and why does the gain shrink at test time?

A study, not part of the pipeline. The ranker (``ranker.model.LightGBMRanker``, lambdarank with the
pipeline's default parameters and monotone ranks) learns from candidates of four sources (EASE, DLAE,
RP3beta, sequential co-occurrence; their per-user standardised scores and ranks) plus item popularity,
the user's genre affinity, popularity in the user's active time window and a not-yet-released flag. It is
trained on label folds cut from the training data: per user a random ``share`` of the training
interactions become labels, the sources are fitted on the rest. Its NDCG@10 is compared with EASE's
(l2 = 500) three ways:

- in the fold, on users held out from the ranker's training (sources fitted on the fold's history);
- on the test split, sources refitted on all training data (what the pipeline does);
- on the test split, sources fitted on a fold-sized random subsample of the training data, so that
  they are exactly as strong as during training.

Usage: .venv/bin/python benchmarks/ml100k_headroom.py [--data ../shared/data] [--seed 42] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import update_section  # noqa: E402
from ml100k_signals import Study, read_ratings, study_arguments, zscores  # noqa: E402

from m6rec.config import RankerConfig  # noqa: E402
from m6rec.data.splits import random_split  # noqa: E402
from m6rec.evaluation.metrics import ranking_metrics  # noqa: E402
from ranker.model import LightGBMRanker  # noqa: E402

SHARES = (0.05, 0.1, 0.25, 0.4)
FOLDS = 3
DEPTH = 50


def main() -> None:
    args = study_arguments(__doc__)
    ratings = read_ratings(args.data)
    genres = _genres(args.data / "ml-100k" / "u.item", np.sort(ratings["item_id"].unique()))
    train, test = random_split(ratings, 0.25, seed=args.seed)
    full = _Tables(ratings, train, test, genres)
    rows = []
    for share in SHARES:
        folds = [
            _Tables(ratings, *random_split(train, share, seed=args.seed * 100 + number), genres)
            for number in range(FOLDS)
        ]
        ranker, held_out = _train(folds, args.seed)
        in_fold = folds[0].gain(ranker, held_out)
        at_test = full.gain(ranker)
        subsample, _ = random_split(train, share, seed=args.seed + 7)
        weaker = _Tables(ratings, subsample, test, genres, seen=train).gain(ranker)
        rows.append((share, in_fold, at_test, weaker))
        print(f"share {share}: in fold {in_fold}, test {at_test}, test with fold-sized sources {weaker}")

    lines = [
        "## MovieLens-100K: how much can a ranker add to EASE, in the fold and at test time?",
        "",
        f"Command: `.venv/bin/python benchmarks/ml100k_headroom.py --seed {args.seed} --out docs/benchmarks.md`",
        "",
        f"75/25 per-user random split (seed {args.seed}). The ranker is trained on {FOLDS} stacked label "
        "folds of the training data (label share per user in the first column) over candidates of EASE, "
        "DLAE, RP3beta and sequential co-occurrence with popularity, genre and time features. Each cell: "
        "ranker NDCG@10 / EASE NDCG@10 (relative gain).",
        "",
        "| fold label share | in the fold (held-out users) | test, sources fitted on all training data "
        "| test, sources fitted on a fold-sized subsample |",
        "|---|---|---|---|",
    ]
    for share, *cells in rows:
        lines.append(f"| {share} | " + " | ".join(_cell(*cell) for cell in cells) + " |")
    body = "\n".join(lines)
    print(body)
    if args.out:
        update_section(args.out, "ml100k-headroom", body)


class _Tables(Study):
    """One history/labels split: the sources' scores, the candidate table and its features."""

    def __init__(self, ratings, history, labels, genres, *, seen=None):
        super().__init__(ratings, history, labels)
        excluded = self.dense if seen is None else Study(ratings, seen, labels).dense
        scores = {
            "ease": self.ease(500.0),
            "dlae": self.dlae(0.33, 600.0),
            "rp3beta": self.rp3beta(0.8, 0.5),
            "sequential": self.sequential_cooccurrence(3),
        }
        self.excluded = excluded
        self.ease_scores = scores["ease"]
        ranks = {name: _ranks(np.where(excluded > 0, -np.inf, value)) for name, value in scores.items()}
        candidate = np.zeros(excluded.shape, dtype=bool)
        for rank in ranks.values():
            candidate |= rank < DEPTH
        self.users, self.items = np.nonzero(candidate & (excluded == 0))
        pick = (self.users, self.items)
        columns = {}
        for name, value in scores.items():
            columns[f"{name}_score_z"] = zscores(value)[pick]
            columns[f"{name}_rank"] = ranks[name][pick].astype(np.float32)
        popularity = self.dense.sum(0)
        genre_profile = self.dense @ genres
        genre_profile /= np.maximum(genre_profile.sum(1, keepdims=True), 1)
        columns["item_pop_share"] = (popularity / self.dense.shape[0])[self.items]
        columns["genre_affinity"] = (genre_profile[self.users] * genres[self.items]).sum(1)
        window = self.window_popularity(30)
        columns["window_pop_share"] = (window / np.maximum(popularity, 1))[pick]
        columns["released_later"] = self.released_later()[pick].astype(np.float32)
        self.table = pd.DataFrame(columns)
        self.labels = self.relevant.toarray()[pick].astype(np.int32)

    def gain(self, ranker: LightGBMRanker, users: np.ndarray | None = None) -> tuple[float, float]:
        """(ranker, EASE) NDCG@10 over ``users`` (default all) on this split's labels."""
        ranked = np.full(self.excluded.shape, -np.inf)
        ranked[self.users, self.items] = ranker.predict(self.table)
        ease = np.where(self.excluded > 0, -np.inf, self.ease_scores)
        users = np.arange(self.excluded.shape[0]) if users is None else users
        return self._ndcg(ranked[users], users), self._ndcg(ease[users], users)

    def _ndcg(self, scores: np.ndarray, users: np.ndarray) -> float:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        relevant = sp.csr_array(self.relevant.toarray()[users])
        return ranking_metrics(top, relevant, k_values=(10,), n_catalogue_items=scores.shape[1])["ndcg@10"]


def _train(folds: list[_Tables], seed: int) -> tuple[LightGBMRanker, np.ndarray]:
    n_users = folds[0].dense.shape[0]
    held_out = np.random.default_rng(seed).choice(n_users, size=n_users // 5, replace=False)
    parts = []
    for number, fold in enumerate(folds):
        part = fold.table.assign(label=fold.labels, query=fold.users + number * n_users)
        parts.append(part[~np.isin(fold.users, held_out)])
    train = pd.concat(parts, ignore_index=True)
    train = train[train.groupby("query")["label"].transform("sum") > 0]
    first = folds[0]
    valid = first.table.assign(label=first.labels, query=first.users)[np.isin(first.users, held_out)]
    config = RankerConfig()
    ranker = LightGBMRanker(**config.params.ranker_kwargs(), seed=seed, monotone=config.monotone_features)
    features = list(first.table.columns)
    ranker.fit(
        train[features],
        train["label"],
        group=train.groupby("query", sort=False).size().to_numpy(),
        eval_set=(valid[features], valid["label"]),
        eval_group=valid.groupby("query", sort=False).size().to_numpy(),
    )
    return ranker, np.sort(held_out)


def _ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


def _genres(path: Path, item_ids: np.ndarray) -> np.ndarray:
    items = pd.read_csv(path, sep="|", encoding="latin-1", header=None)
    genres = np.zeros((len(item_ids), 19))
    genres[pd.Index(item_ids).get_indexer(items[0])] = items.iloc[:, 5:24].to_numpy(float)
    return genres


def _cell(ranker: float, ease: float) -> str:
    return f"{ranker:.4f} / {ease:.4f} ({(ranker / ease - 1) * 100:+.1f}%)"


if __name__ == "__main__":
    main()
