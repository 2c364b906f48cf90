"""The evaluation protocol of a training run: which interactions train and which test, and whether the
ranker's fold is cut in time (``RunConfig.split``, ``fold_split``, or the dataset's own test file)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from m6rec.config import RunConfig
from m6rec.data import contract
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import IdIndex
from m6rec.data.splits import SplitSpec

log = logging.getLogger("m6rec")


@dataclass
class Protocol:
    """The training and test interactions (``test`` None: no metrics), what the run says of them, and
    whether the ranker's fold is cut in time."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    description: str
    temporal: bool


def evaluation_protocol(dataset: Dataset, config: RunConfig) -> Protocol:
    """The training and test interactions, and whether the ranker's fold is cut in time
    (``config.fold_split``; ``auto`` cuts it the way the test set was cut)."""
    if dataset.test is not None:
        if config.split != "none":
            log.warning(
                "split %s ignored: the dataset has a test file, which the run evaluates on instead",
                config.split,
            )
        temporal = dataset.has_timestamps and is_cut_in_time(dataset.interactions, dataset.test)
        description = f"explicit test file ({'later than' if temporal else 'interleaved with'} training)"
        train, test = dataset.interactions, dataset.test
    elif config.split == "none":
        train, test, temporal = dataset.interactions, None, False
        description = "no test set: trained on all interactions"
    else:
        spec = SplitSpec.parse(config.split, seed=config.seed)
        train, test = spec.apply(dataset.interactions)
        temporal, description = spec.kind != "random", f"split {spec} (seed {config.seed})"
    if config.fold_split != "auto":
        temporal = config.fold_split == "temporal"
    return Protocol(train, test, description, temporal=temporal)


def is_cut_in_time(train: pd.DataFrame, test: pd.DataFrame, share: float = 0.9) -> bool:
    """Whether at least ``share`` of the ``test`` interactions of users with training history are no
    earlier than that user's latest training interaction: a test set cut in time, not at random."""
    latest = train.groupby(USER_ID)[contract.TIMESTAMP].max()
    test_times = test[[USER_ID, contract.TIMESTAMP]].dropna()
    user_latest = test_times[USER_ID].map(latest)
    known = user_latest.notna()
    if not known.any():
        return False
    return bool((test_times[contract.TIMESTAMP][known] >= user_latest[known]).mean() >= share)


def run_indexes(dataset: Dataset, protocol: Protocol) -> tuple[IdIndex, IdIndex]:
    """Every user and item of the run: of the training and test interactions and the users and items
    tables (new ones included)."""
    test = protocol.test
    users = IdIndex.from_values(
        protocol.train[USER_ID],
        None if test is None else test[USER_ID],
        None if dataset.users is None else dataset.users[USER_ID],
    )
    items = IdIndex.from_values(
        None if dataset.items is None else dataset.items[ITEM_ID],
        protocol.train[ITEM_ID],
        None if test is None else test[ITEM_ID],
    )
    return users, items
