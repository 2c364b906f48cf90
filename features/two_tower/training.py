"""Training the two-tower model: ``train_two_tower``, its epoch loop, its losses and the hash of its inputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from features.device import resolve_device
from features.two_tower.config import TwoTowerConfig
from features.two_tower.data import (
    _attribute_codes,
    _attribute_vocabularies,
    _content_arrays,
    _item_catalogue,
    _training_history,
    _TrainingData,
    _user_catalogue,
)
from features.two_tower.model import TwoTowerModel
from features.two_tower.network import TwoTowerNetwork, _history_mean
from m6rec.data.columns import ResolvedColumns
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.store import EmbeddingTable
from m6rec.progress import progress, step_log_level

logger = logging.getLogger("m6rec")


def train_two_tower(
    train: InteractionMatrix,
    content: dict[str, EmbeddingTable],
    config: TwoTowerConfig | None = None,
    *,
    users: pd.DataFrame | None = None,
    user_columns: ResolvedColumns | None = None,
    interactions: pd.DataFrame | None = None,
) -> TwoTowerModel:
    """Train the two-tower model on ``train`` with frozen ``content`` blocks.

    Args:
        train: training interactions (binary user × item matrix with raw IDs).
        content: modality name → item embedding table; may be empty (ID-only model). Items that appear in
            a table but not in ``train`` join the catalogue as content-only (cold) items.
        config: hyperparameters; defaults to :class:`TwoTowerConfig`.
        users: optional ``user_id`` plus attributes: its ``categorical`` columns and its ``numeric`` columns
            of whole numbers with few values (columns taking a value per user are skipped).
        user_columns: the roles of the ``users`` columns (``Dataset.user_columns``); inferred when ``None``.
        interactions: optional raw training interactions; with a ``timestamp`` column the user history is
            the latest ``history_size`` items by time.

    Returns:
        The trained :class:`TwoTowerModel`, the loss of each epoch in ``loss_history``. One INFO line sums
        the training up; each epoch's line is INFO on a terminal and DEBUG otherwise (``step_log_level``).
    """
    config = config or TwoTowerConfig()
    if train.matrix.nnz == 0:
        raise ValueError("two-tower training needs at least one interaction")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.force_cpu)
    items = _item_catalogue(train, content)
    users_catalogue = _user_catalogue(train, users)
    modalities = sorted(content)
    content_arrays = _content_arrays(content, items.ids, config.fusion)
    vocabularies = _attribute_vocabularies(users, user_columns)
    user_attributes = (
        _attribute_codes(users, users_catalogue.ids, vocabularies)
        if vocabularies
        else np.zeros((len(users_catalogue.ids), 0), dtype=np.int64)
    )
    history = _training_history(train, interactions, len(users_catalogue.ids), config.history_size)
    network = TwoTowerNetwork(
        n_item_ids=train.n_items,
        n_user_ids=train.n_users,
        attribute_sizes=[len(vocabulary) for vocabulary in vocabularies.values()],
        content_dimensions=[v.shape[1] for v, _ in content_arrays],
        fusion=config.fusion,
        dimension=config.dimension,
    ).to(device.name)
    started = time.perf_counter()
    with _cpu_threads(config.cpu_threads if device.name == "cpu" else None):
        data = _TrainingData.build(train, items, content_arrays, user_attributes, history, device.name)
        loss_history = _fit(network, data, config, rng)
    logger.info(
        "two-tower: %d epochs in %.1f s on %s, final %s loss %.4f (%d users, %d items of which %d "
        "content-only, modalities %s, %d user attributes)",
        config.epochs,
        time.perf_counter() - started,
        device.name,
        config.loss,
        loss_history[-1],
        train.n_users,
        len(items.ids),
        int((items.id_rows == 0).sum()),
        ", ".join(modalities) or "none",
        len(vocabularies),
    )
    return TwoTowerModel(
        config=config,
        network=network,
        items=items,
        users=users_catalogue,
        modalities=modalities,
        content=content_arrays,
        attribute_vocabularies=vocabularies,
        user_attributes=user_attributes,
        history=history,
        loss_history=loss_history,
        input_hash=_input_hash(train, content, config, users, interactions, list(vocabularies)),
    )


def _fit(
    network: TwoTowerNetwork, data: _TrainingData, config: TwoTowerConfig, rng: np.random.Generator
) -> list[float]:
    """Run the epochs over shuffled (user, item) pairs; returns the mean training loss of each epoch."""
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    losses = []
    epoch_level = step_log_level()
    network.train()
    for epoch in progress(range(config.epochs), desc="training two-tower", unit="epoch"):
        order = rng.permutation(len(data.pair_users))
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                continue
            loss = _batch_loss(network, data, batch, config, rng)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
        losses.append(total / max(count, 1))
        logger.log(
            epoch_level,
            "two-tower epoch %d/%d: %s loss %.4f",
            epoch + 1,
            config.epochs,
            config.loss,
            losses[-1],
        )
    network.eval()
    return losses


def _batch_loss(
    network: TwoTowerNetwork,
    data: _TrainingData,
    batch: np.ndarray,
    config: TwoTowerConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Loss of one batch of pairs; every item it touches goes through the item tower once."""
    device = data.device
    users, positives = data.pair_users[batch], data.pair_items[batch]
    bpr = config.loss == "bpr"
    negatives = rng.choice(data.warm_items, size=len(batch)) if bpr else np.zeros(0, np.int64)
    history_rows, history_items = data.history.rows(users)
    # The positive itself is left out of its user's history, or the task would be to find it there.
    not_target = history_items != positives[history_rows]
    history_rows, history_items = history_rows[not_target], history_items[not_target]

    needed, inverse = np.unique(np.concatenate([positives, negatives, history_items]), return_inverse=True)
    keep_item_ids = torch.as_tensor(rng.random(len(needed)) >= config.id_dropout, device=device)
    needed = torch.as_tensor(needed, device=device)
    item_vectors = network.items(
        data.item_id_rows[needed] * keep_item_ids,
        [(vectors[needed], mask[needed]) for vectors, mask in data.content],
    )
    inverse = torch.as_tensor(inverse, device=device)
    n_positives, n_negatives = len(positives), len(negatives)
    positive_vectors = item_vectors[inverse[:n_positives]]
    history_mean = _history_mean(
        item_vectors,
        torch.as_tensor(history_rows, device=device),
        inverse[n_positives + n_negatives :],
        len(users),
    )
    users = torch.as_tensor(users, device=device)
    keep_user_ids = torch.as_tensor(rng.random(len(users)) >= config.id_dropout, device=device)
    user_vectors = network.users(
        data.user_id_rows[users] * keep_user_ids, history_mean, data.attributes[users]
    )
    if bpr:
        negative_vectors = item_vectors[inverse[n_positives : n_positives + n_negatives]]
        margin = (user_vectors * (positive_vectors - negative_vectors)).sum(-1) / config.temperature
        return nn.functional.softplus(-margin).mean()
    positive_ids = torch.as_tensor(positives, device=device)
    return _sampled_softmax_loss(user_vectors, positive_vectors, positive_ids, data.log_q, config.temperature)


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the previous setting."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _sampled_softmax_loss(
    users: torch.Tensor,
    positives: torch.Tensor,
    positive_ids: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """In-batch softmax: each user's positive against the batch's other positives, logQ-corrected.

    Subtracting log q(item) removes the bias of in-batch negatives being drawn by popularity. A batch item
    equal to the row's own positive is not a negative and is masked out.
    """
    logits = users @ positives.T / temperature - log_q[positive_ids].unsqueeze(0)
    same_item = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)
    same_item.fill_diagonal_(False)
    logits = logits.masked_fill(same_item, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(len(users), device=users.device))


def _input_hash(
    train: InteractionMatrix,
    content: dict[str, EmbeddingTable],
    config: TwoTowerConfig,
    users: pd.DataFrame | None,
    interactions: pd.DataFrame | None,
    attribute_columns: list[str],
) -> str:
    """SHA-256 of everything the trained weights depend on."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    matrix = train.matrix.tocsr()
    for array in (matrix.indptr, matrix.indices):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    digest.update("\0".join(map(str, train.users.ids)).encode())
    digest.update("\0".join(map(str, train.items.ids)).encode())
    for modality in sorted(content):
        table = content[modality]
        digest.update(modality.encode())
        digest.update("\0".join(map(str, table.keys)).encode())
        digest.update(np.ascontiguousarray(table.vectors).tobytes())
        digest.update(np.asarray(table.valid, dtype=bool).tobytes())
    for frame in (users, interactions):
        if frame is not None:
            digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update("\0".join(attribute_columns).encode())
    return digest.hexdigest()
