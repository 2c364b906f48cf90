"""One user's list with its reasons: which candidate sources proposed each item and which ranker
features pushed it up (TreeSHAP contributions of the saved LightGBM model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.errors import M6RecError
from pipelines.run_folder import RunFolder


@dataclass(frozen=True)
class ServedLists:
    """The lists a reader is served from an output folder: the published batch lists when there are any,
    else the training run's; the folder of the model that ranked them, the list that served
    (``ranker`` or a source), the generation and the report (``batch.json`` or ``run.json``) they came with."""

    lists: RunFolder
    model: RunFolder
    selected: str
    generation: str
    report: dict

    @classmethod
    def of(cls, out_dir: Path) -> ServedLists:
        published = RunFolder.published(out_dir)  # resolved once: one generation, even mid-publish
        lists = published.lists if published.lists.recommendations.is_file() else published
        if not lists.recommendations.is_file():
            raise M6RecError(
                f"{published.recommendations}: no recommendations here; run `m6rec run DATA_DIR --out {out_dir}` first"
            )
        report_path = lists.batch_report if lists.batch_report.is_file() else published.run_report
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        model = published
        if not published.model_manifest.is_file() and report.get("model_dir"):
            model = RunFolder(Path(report["model_dir"]))  # lists in a folder of their own
        generation = published.root.name if published.root != Path(out_dir) else "(no generations)"
        return cls(lists, model, str(report.get("selected_model", "")), generation, report)


def explain_user(out_dir: Path, user_id: str, *, top_features: int = 3) -> pd.DataFrame:
    """The user's recommendations from the lists an output folder serves (:class:`ServedLists`), with
    ``reasons`` per item: the sources that proposed it and, when the ranker made the list, the ranker
    features that pushed it up. ``frame.attrs["served"]`` is the :class:`ServedLists`.

    Adds the item's title-like column when the run's dataset has an items table.
    """
    served = ServedLists.of(Path(out_dir))
    path = served.lists.recommendations
    recs = pd.read_parquet(path)
    mine = recs[recs[USER_ID] == str(user_id)].sort_values("rank").reset_index(drop=True)
    if mine.empty:
        raise M6RecError(f"{path}: user {user_id!r} has no recommendations (unknown user?)")
    mine["reasons"] = _source_reasons(mine)
    ranked = served.selected == "ranker" and (served.model.ranker_dir / "model.txt").is_file()
    if ranked and served.lists.ranker_features.is_file():
        feature_reasons = _feature_reasons(served, mine, top_features)
        mine["reasons"] = [
            "; ".join(part for part in (sources, features) if part)
            for sources, features in zip(mine["reasons"], feature_reasons, strict=True)
        ]
    mine = _with_titles(served, mine)
    mine.attrs["served"] = served
    return mine


def _source_reasons(frame: pd.DataFrame) -> list[str]:
    rank_columns = [column for column in frame.columns if column.endswith("_rank") and column != "rank"]
    reasons = []
    for _, row in frame.iterrows():
        found = sorted(
            ((column[: -len("_rank")], int(row[column])) for column in rank_columns if pd.notna(row[column])),
            key=lambda pair: pair[1],
        )
        reasons.append(", ".join(f"{name} #{rank}" for name, rank in found[:3]) or str(row.get("source", "")))
    return reasons


def _feature_reasons(served: ServedLists, mine: pd.DataFrame, top_features: int) -> list[str]:
    from ranker.features import read_feature_table
    from ranker.model import LightGBMRanker

    ranker = LightGBMRanker.load(served.model.ranker_dir)
    folder = served.lists
    users = pd.read_parquet(folder.users_index)[USER_ID].astype(str).to_numpy()
    items = pd.read_parquet(folder.items_index)[ITEM_ID].astype(str).to_numpy()
    user_row = int(np.flatnonzero(users == str(mine[USER_ID].iloc[0]))[0])
    table = read_feature_table(folder.ranker_features)
    table = table[table["user_row"] == user_row]
    table = table.assign(**{ITEM_ID: items[table["item"].to_numpy()]}).set_index(ITEM_ID)
    rows = table.reindex(mine[ITEM_ID].astype(str))
    present = rows["item"].notna().to_numpy()
    reasons = [""] * len(mine)
    if present.any():
        contributions = ranker.contributions(rows[present]).drop(columns="bias")
        for position, (_, values) in zip(np.flatnonzero(present), contributions.iterrows(), strict=True):
            best = values.sort_values(ascending=False).head(top_features)
            reasons[position] = ", ".join(f"{name} {value:+.2f}" for name, value in best.items() if value > 0)
    return reasons


def _with_titles(served: ServedLists, mine: pd.DataFrame) -> pd.DataFrame:
    if not served.report.get("data_dir"):
        return mine
    data_dir = Path(served.report["data_dir"])
    from m6rec.data import contract
    from m6rec.data.tables import find_table, read_table

    try:
        items_path = find_table(data_dir, contract.ITEMS)
    except M6RecError:
        return mine
    if items_path is None:
        return mine
    items = read_table(items_path, contract.ITEMS)
    label = next((column for column in ("title", "name", "description") if column in items.columns), None)
    if label is None:
        return mine
    titles = items.set_index(ITEM_ID)[label]
    titles = titles[~titles.index.duplicated()]
    return mine.assign(**{label: mine[ITEM_ID].map(titles)})
