"""The item-embedding chart: one of the run's item embedding tables projected to 2-D by PCA (``pca_2d``),
coloured by a category column of the dataset's items table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.data import contract
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID
from m6rec.errors import M6RecError
from pipelines.report import charts
from pipelines.report.figures import _Figure, _Note
from pipelines.report.folder import _Run
from pipelines.run_folder import FEATURES_DIR

PROJECTED_EMBEDDINGS = ("fused", "text", "cf_items")
MAX_PROJECTED_ITEMS = 3000
PROJECTION_SEED = 0
MAX_CATEGORIES = 9
OTHER_CATEGORY = "other"
CATEGORY_COLUMNS = ("category", "categories", "genre", "genres", "type", "kind")


def _projection_chart(run: _Run) -> _Figure | _Note:
    from m6rec.embeddings.store import read_embeddings

    features = run.directory / FEATURES_DIR
    if "embeddings" in run.summary and not run.summary["embeddings"]:
        return _Note("This run computed no embeddings (ranker disabled or no modalities configured).")
    name = next(
        (n for n in PROJECTED_EMBEDDINGS if n in run.item_vectors or (features / f"{n}.parquet").exists()),
        None,
    )
    if name is None:
        return _Note(
            f"This run wrote no item embeddings ({', '.join(f'{n}.parquet' for n in PROJECTED_EMBEDDINGS)} "
            f"in {features}), so there is nothing to project."
        )
    if name in run.item_vectors:
        table = run.item_vectors[name]
    else:
        table = read_embeddings(features / f"{name}.parquet")
    keys, vectors = table.keys[table.valid], table.vectors[table.valid].astype(np.float64)
    if len(keys) < 3 or vectors.shape[1] < 2:
        return _Note(f"{features / f'{name}.parquet'}: too few valid embeddings to project ({len(keys)}).")
    sampled = ""
    if len(keys) > MAX_PROJECTED_ITEMS:
        rows = np.sort(
            np.random.default_rng(PROJECTION_SEED).choice(len(keys), MAX_PROJECTED_ITEMS, replace=False)
        )
        keys, vectors = keys[rows], vectors[rows]
        sampled = f" A random sample of {MAX_PROJECTED_ITEMS:,} of {int(table.valid.sum()):,} items."
    coordinates, explained = pca_2d(vectors)
    categories, category_note = _item_categories(run)
    labels = titles = None
    if categories is not None:
        column, values, item_titles = categories
        labels = _fold_rare(values.reindex(keys).fillna("unknown").astype(str).to_numpy())
        titles = [
            f"{key} · {title} ({label})" if title else f"{key} ({label})"
            for key, title, label in zip(
                keys, item_titles.reindex(keys).fillna("").astype(str), labels, strict=True
            )
        ]
    svg = charts.scatter_chart(
        coordinates[:, 0],
        coordinates[:, 1],
        title=f"Item embeddings ({name}), PCA to 2-D",
        x_label=f"PC1 ({explained[0]:.0%} of variance)",
        y_label=f"PC2 ({explained[1]:.0%} of variance)",
        groups=labels,
        point_titles=titles,
    )
    encoder = table.metadata.get("encoder", name)
    caption = (
        f"{len(keys):,} items' {name} vectors ({encoder}, {table.dimension} dimensions) projected on their "
        f"first two principal components.{sampled} "
    )
    caption += (
        f"Colour: the items table's '{categories[0]}' column; items of one category that sit together mean "
        "the embedding has learned it."
        if categories is not None
        else category_note
    )
    return _Figure("embeddings", svg, caption)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``vectors`` [n, d] on their first two principal components.

    Returns ([n, 2] coordinates, the share of variance each component explains). Deterministic: each
    component's sign is fixed so that its largest loading is positive.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"PCA to 2-D needs at least 2 rows and 2 columns, got shape {vectors.shape}")
    centred = vectors - vectors.mean(axis=0)
    left, singular, right = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(right[np.arange(2), np.abs(right[:2]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    coordinates = left[:, :2] * singular[:2] * signs
    total = float((singular**2).sum())
    explained = singular[:2] ** 2 / total if total > 0 else np.zeros(2)
    return coordinates, explained


def _item_categories(run: _Run) -> tuple[tuple[str, pd.Series, pd.Series] | None, str]:
    """(column, category per item_id, title per item_id) from the run's items table, or a note why not."""
    from m6rec.data.dataset import read_columns_file
    from m6rec.data.tables import find_table, read_table

    data_dir = run.summary.get("data_dir")
    if not data_dir or not Path(data_dir).is_dir():
        return None, f"Not coloured: the run's dataset ({data_dir}) is not reachable from here."
    try:
        path = find_table(Path(data_dir), contract.ITEMS)
        items = read_table(path, contract.ITEMS) if path is not None else None
        declared = read_columns_file(data_dir).items
        roles = resolve_columns(items, ITEM_ID, declared) if items is not None else None
    except (M6RecError, OSError, ValueError) as error:
        return None, f"Not coloured: the dataset's items table could not be read ({error})."
    if items is None:
        return None, f"Not coloured: the dataset in {data_dir} has no items table."
    column = _category_column(items, roles)
    if column is None:
        return None, f"Not coloured: the items table {path} has no category-like column."
    items = items.drop_duplicates(ITEM_ID)
    items.index = items[ITEM_ID].astype(str)
    values = items[column].astype("string").str.split("|").str[0].str.strip()
    title_column = next((c for c in ("title", "name") if c in items.columns), None)
    titles = items[title_column].astype("string") if title_column else pd.Series(dtype="string")
    return (column, values, titles), ""


def _category_column(items: pd.DataFrame, roles: ResolvedColumns) -> str | None:
    """A category column by name (``category``, ``genre``...) unless declared ignored, else the first
    ``categorical`` column (``roles``: the items' resolved column roles) of 2-20 values."""
    for column in CATEGORY_COLUMNS:
        if column in items.columns and roles.role(column) != "ignored":
            return column
    for column in roles.categorical:
        if 2 <= items[column].nunique() <= 20:
            return column
    return None


def _fold_rare(labels: np.ndarray) -> np.ndarray:
    """Keep the ``MAX_CATEGORIES`` most frequent labels; the rest become ``other``."""
    counts = pd.Series(labels).value_counts()
    if len(counts) <= MAX_CATEGORIES + 1:
        return labels
    keep = set(counts.index[:MAX_CATEGORIES])
    return np.asarray([label if label in keep else OTHER_CATEGORY for label in labels], dtype=object)
