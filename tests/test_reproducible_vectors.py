"""A folder reused night after night gives what a fresh run gives: the incremental cache encodes only
the new item, in a batch of its own, and its vector, every file downstream and the lists come out
byte-identical to a run from scratch."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from m6rec.config import RunConfig
from m6rec.embeddings.store import read_embeddings
from pipelines.run import run_pipeline

CONFIG = {
    "baselines": {
        "models": ["popularity", "ease"],
        "search_spaces": {"popularity": {}, "ease": {"l2": [100.0]}},
    },
    "embeddings": {"modalities": ["text", "cf"], "two_tower": {"epochs": 2, "dimension": 8}},
    "ranker": {"training_folds": 1, "params": {"n_estimators": 20, "num_leaves": 7, "min_child_samples": 10}},
}


def test_a_reused_folder_gives_the_lists_of_a_fresh_one(tiny_flow_inputs, tmp_path):
    source, _ = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    config = RunConfig.model_validate(CONFIG)
    reused = tmp_path / "reused"
    run_pipeline(catalogue, reused, config)

    items = pd.read_parquet(catalogue / "items.parquet")
    # Shorter than every other text: encoded alone it would be padded less than among the others.
    new_item = items.iloc[[0]].assign(item_id="item-new", title="Rain", description="", brand="")
    pd.concat([items, new_item], ignore_index=True).to_parquet(catalogue / "items.parquet")
    again = run_pipeline(catalogue, reused, config)
    fresh = run_pipeline(catalogue, tmp_path / "fresh", config)

    counts = again.summary["embeddings"]["counts"]["text"]
    assert (counts["computed"], counts["reused"]) == (1, len(items)), "only the new item was encoded"
    assert fresh.summary["embeddings"]["counts"]["text"]["computed"] == len(items) + 1
    reused_text, fresh_text = (
        read_embeddings(folder / "features" / "text.parquet") for folder in (reused, tmp_path / "fresh")
    )
    assert list(reused_text.keys) == list(fresh_text.keys)
    assert np.array_equal(reused_text.vectors, fresh_text.vectors), "bitwise the vectors of a fresh run"
    assert (reused / "recommendations.parquet").read_bytes() == (
        tmp_path / "fresh" / "recommendations.parquet"
    ).read_bytes()
