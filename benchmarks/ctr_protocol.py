"""Click-through-rate protocol: score given (user, item) pairs instead of producing top-k lists.

``pair_candidates`` gives any set of pairs the same per-source score/rank columns that merged candidates
carry, so the ranker's features work on them. ``ctr_benchmark`` runs the KGCN protocol on a prepared
Last.FM directory: positives are the listened KGCN-mapped artists, one unlistened mapped artist is sampled
per positive, the labelled pairs are split 6:2:2 at random; sources and embeddings learn from the training
positives, a binary LightGBM ranker learns on the evaluation pairs, and AUC/F1 are measured on test pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.candidates import CandidateSource, create_source
from m6rec.candidates.merge import ITEM, N_SOURCES, SOURCES, USER_ROW
from m6rec.config import EmbeddingConfig
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.evaluation.metrics import auc, f1_at_threshold

log = logging.getLogger("m6rec")


def pair_candidates(
    sources: dict[str, CandidateSource], user_rows: np.ndarray, items: np.ndarray, *, depth: int = 100
) -> pd.DataFrame:
    """Per pair and source: the score, and the rank of the item in the user's full list (seen items
    excluded); ``n_sources`` counts the sources that rank it within ``depth``."""
    user_rows, items = np.asarray(user_rows, dtype=np.int64), np.asarray(items, dtype=np.int64)
    frame = pd.DataFrame({USER_ROW: user_rows, ITEM: items})
    proposed = np.zeros(len(frame), dtype=np.int16)
    for name, source in sources.items():
        scores = np.full(len(frame), np.nan, dtype=np.float32)
        ranks = np.full(len(frame), np.nan, dtype=np.float32)
        for user in np.unique(user_rows):
            positions = np.flatnonzero(user_rows == user)
            row = np.asarray(source.score(np.array([user])), dtype=np.float32)[0]
            row[source.seen[user].indices] = -np.inf
            pair_scores = row[items[positions]]
            finite = np.isfinite(pair_scores)
            ordered = np.sort(row[np.isfinite(row)])[::-1]
            pair_ranks = np.searchsorted(-ordered, -pair_scores, side="left") + 1
            scores[positions[finite]] = pair_scores[finite]
            ranks[positions[finite]] = pair_ranks[finite]
        frame[f"{name}_rank"], frame[f"{name}_score"] = ranks, scores
        proposed += (ranks <= depth).astype(np.int16)
    frame[N_SOURCES] = proposed
    frame[SOURCES] = ""
    return frame


def ctr_benchmark(data_dir: Path, mapping_path: Path, out_dir: Path, *, seed: int = 42) -> dict:
    """Run the KGCN CTR protocol; returns AUC, F1, the threshold, per-source AUC and pair counts."""
    from pipelines.embeddings import compute_item_embeddings, train_collaborative
    from ranker.features import RankerContext, build_ranker_features, feature_columns
    from ranker.model import LightGBMRanker

    dataset = load_dataset(data_dir)
    mapped = pd.read_csv(mapping_path, sep="\t", header=None, dtype=str)[0].str.strip()
    pairs = _labelled_pairs(dataset.interactions, set(mapped), seed)
    split = np.random.default_rng(seed).permutation(len(pairs))
    cut_train, cut_eval = int(0.6 * len(pairs)), int(0.8 * len(pairs))
    part = np.empty(len(pairs), dtype=object)
    part[split[:cut_train]], part[split[cut_train:cut_eval]], part[split[cut_eval:]] = "train", "eval", "test"
    pairs["part"] = part
    train_positive = pairs[(pairs["part"] == "train") & (pairs["label"] == 1)]

    users = IdIndex.from_values(pairs[USER_ID])
    items = IdIndex.from_values(pd.Series(sorted(set(mapped) | set(pairs[ITEM_ID]))))
    train = InteractionMatrix.from_frame(train_positive, users, items)
    config = EmbeddingConfig(modalities=["text", "kg", "cf"])
    item_embeddings = compute_item_embeddings(dataset, Path(out_dir) / "features", config)
    collaborative = train_collaborative(
        dataset, train_positive, item_embeddings, Path(out_dir) / "features", config
    )
    paths = {**item_embeddings.paths, **collaborative.paths}
    sources = {
        "popularity": create_source("popularity"),
        "itemknn": create_source("itemknn", neighbours=200),
        "ease": create_source("ease", l2=100.0),
        "ials": create_source("ials", factors=64, regularization=10.0, alpha=1.0),
        "two_tower": create_source(
            "two_tower", embeddings=str(paths["cf_items"]), user_embeddings=str(paths["cf_users"])
        ),
        "content": create_source("content", embeddings=str(paths["fused"])),
    }
    sources = {name: source.fit(train) for name, source in sources.items()}
    context = RankerContext(
        train=train,
        item_embeddings=item_embeddings.content_tables(_read),
        two_tower_user_vectors=_read(paths["cf_users"]),
        two_tower_item_vectors=_read(paths["cf_items"]),
        items=dataset.items,
        users=dataset.users,
        item_columns=dataset.item_columns,
        user_columns=dataset.user_columns,
        kg=dataset.kg,
    )

    def features(which: str) -> tuple[pd.DataFrame, np.ndarray]:
        chosen = pairs[pairs["part"] == which]
        table = build_ranker_features(
            pair_candidates(sources, users.positions(chosen[USER_ID]), items.positions(chosen[ITEM_ID])),
            context,
        )
        return table, chosen["label"].to_numpy()

    eval_table, eval_labels = features("eval")
    test_table, test_labels = features("test")
    columns = feature_columns(eval_table)
    stop = np.random.default_rng(seed + 1).random(len(eval_table)) < 0.2
    # A pointwise CTR model on one fold: less regularised than the list ranker's defaults.
    ranker = LightGBMRanker(
        objective="binary",
        n_estimators=2000,
        learning_rate=0.03,
        num_leaves=31,
        min_child_samples=20,
        feature_fraction=0.9,
        early_stopping_rounds=100,
        seed=seed,
    )
    ranker.fit(
        eval_table.loc[~stop, columns],
        eval_labels[~stop],
        eval_set=(eval_table.loc[stop, columns], eval_labels[stop]),
    )
    threshold = _best_threshold(eval_labels[stop], ranker.predict(eval_table.loc[stop, columns]))
    predictions = ranker.predict(test_table[columns])
    per_source = {
        name: {"auc": auc(test_labels, np.nan_to_num(test_table[f"{name}_score"].to_numpy(), nan=-1e9))}
        for name in sources
    }
    return {
        "auc": auc(test_labels, predictions),
        "f1": f1_at_threshold(test_labels, predictions, threshold),
        "threshold": float(threshold),
        "sources": per_source,
        "counts": {part: int((pairs["part"] == part).sum()) for part in ("train", "eval", "test")},
    }


def _labelled_pairs(interactions: pd.DataFrame, mapped: set[str], seed: int) -> pd.DataFrame:
    positives = interactions.loc[interactions[ITEM_ID].isin(mapped), [USER_ID, ITEM_ID]].drop_duplicates()
    catalogue = np.array(sorted(mapped), dtype=object)
    rng = np.random.default_rng(seed)
    negatives = []
    for user, group in positives.groupby(USER_ID, sort=True):
        unseen = np.setdiff1d(catalogue, group[ITEM_ID].to_numpy())
        sampled = rng.choice(unseen, size=min(len(group), len(unseen)), replace=False)
        negatives.append(pd.DataFrame({USER_ID: user, ITEM_ID: sampled}))
    return pd.concat(
        [positives.assign(label=1), pd.concat(negatives).assign(label=0)], ignore_index=True
    ).reset_index(drop=True)


def _best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    candidates = np.quantile(scores, np.linspace(0.05, 0.95, 91))
    return float(max(candidates, key=lambda threshold: f1_at_threshold(labels, scores, threshold)))


def _read(path):
    from m6rec.embeddings.store import read_embeddings

    return read_embeddings(path)
