"""The deep collaborative-filtering two-tower model of the M6-Rec design.

The item tower reads a learned item-ID embedding and the item's frozen content (fused across modalities)
and maps them through an MLP to an L2-normalised vector. The user tower reads a user-ID embedding, the
mean item-tower vector of the user's recent history and embeddings of categorical user attributes. Both
ID embeddings are dropped at random in training (``id_dropout``), so the content path alone must carry an
item and history plus attributes alone must carry a user: that is what serves cold items and new users.

Training is an in-batch sampled softmax over (user, item) training pairs with a logQ correction for item
popularity, or BPR with one uniformly sampled negative. The temperature is fixed: the vectors are
normalised, so it sets the sharpness of the softmax and there is nothing for a learned one to gain on
the small catalogues this runs on but over-confidence on popular items.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from features.device import resolve_device
from features.fusion import (
    FusionConfig,
    ModalityAttention,
    attention_fusion,
    concat_fusion,
    l2_normalise,
    mean_attention_weights,
)
from features.profiles import interaction_seconds
from features.store import EmbeddingTable, write_embeddings
from m6rec.config import TWO_TOWER_LOSSES, TwoTowerSettings
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.io import atomic_path, write_json
from m6rec.progress import progress, step_log_level

logger = logging.getLogger("m6rec")

LOSSES = TWO_TOWER_LOSSES
MODEL_FORMAT = "m6rec-two-tower"
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "model.pt"
# An attribute with more distinct values than this share of the users identifies users rather than
# grouping them (a zip code), so it is left out of the user tower.
MAX_ATTRIBUTE_VALUE_SHARE = 0.5
MAX_NUMERIC_ATTRIBUTE_VALUES = 64


class TwoTowerConfig(TwoTowerSettings):
    """Hyperparameters of the two-tower model (the ``embeddings.two_tower`` section, see
    :class:`m6rec.config.TwoTowerSettings`), the fusion of its content blocks (``embeddings.fusion``) and
    where it runs."""

    fusion: FusionConfig = Field(default_factory=FusionConfig)
    force_cpu: bool = False

    def to_dict(self) -> dict:
        return self.model_dump()


class ExportedEmbeddings(NamedTuple):
    """Paths written by :meth:`TwoTowerModel.export`; ``fused`` only with attention fusion."""

    items: Path
    users: Path
    fused: Path | None


@dataclass(frozen=True)
class _Catalogue:
    """Rows the model knows: raw IDs and the 1-based row of each in its ID embedding (0 = no ID vector)."""

    ids: np.ndarray
    id_rows: np.ndarray

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        return pd.Index(self.ids).get_indexer(np.asarray(ids, dtype=object).astype(str)).astype(np.int64)


@dataclass(frozen=True)
class _History:
    """Per known user, catalogue positions of the latest history items, oldest first (CSR layout)."""

    indptr: np.ndarray
    indices: np.ndarray

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flattened (batch row, catalogue position) pairs of the histories of ``users``."""
        starts, stops = self.indptr[users], self.indptr[users + 1]
        lengths = stops - starts
        batch_rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return batch_rows, self.indices[np.repeat(starts, lengths) + offsets]


class TwoTowerNetwork(nn.Module):
    """The two towers. Item content arrives as ``(vectors, mask)`` pairs prepared by the model.

    With attention fusion there is one pair per modality and a :class:`ModalityAttention`; with concat
    fusion one pair (the weighted concatenation) and a Linear; without content no pair.
    """

    def __init__(
        self,
        *,
        n_item_ids: int,
        n_user_ids: int,
        attribute_sizes: Sequence[int],
        content_dimensions: Sequence[int],
        fusion: FusionConfig,
        dimension: int,
    ):
        super().__init__()
        self.item_ids = nn.Embedding(n_item_ids + 1, dimension, padding_idx=0)
        self.user_ids = nn.Embedding(n_user_ids + 1, dimension, padding_idx=0)
        self.attributes = nn.ModuleList(
            nn.Embedding(size + 1, dimension, padding_idx=0) for size in attribute_sizes
        )
        for embedding in (self.item_ids, self.user_ids, *self.attributes):
            nn.init.normal_(embedding.weight, std=0.1)
            with torch.no_grad():
                embedding.weight[0].zero_()
        if not content_dimensions:
            self.content, content_size = None, 0
        elif fusion.mode == "attention":
            self.content, content_size = (
                ModalityAttention(content_dimensions, fusion.dimension),
                fusion.dimension,
            )
        else:
            self.content, content_size = nn.Linear(int(sum(content_dimensions)), dimension), dimension
        self.attention = fusion.mode == "attention"
        self.item_mlp = _mlp(dimension + content_size, dimension)
        self.user_mlp = _mlp(dimension * (2 + len(attribute_sizes)), dimension)

    def items(
        self, id_rows: torch.Tensor, content: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Normalised item vectors from ID rows (0 = none) and content pairs."""
        parts = [self.item_ids(id_rows)]
        if self.content is not None:
            if self.attention:
                fused, _ = self.content([x for x, _ in content], [m for _, m in content])
            else:
                vectors, present = content[0]
                fused = self.content(vectors) * present.unsqueeze(-1)
            parts.append(fused)
        return nn.functional.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=-1)

    def users(
        self, id_rows: torch.Tensor, history_mean: torch.Tensor, attributes: torch.Tensor
    ) -> torch.Tensor:
        """Normalised user vectors from ID rows (0 = none), mean history vectors and attribute codes."""
        parts = [self.user_ids(id_rows), history_mean]
        parts += [embedding(attributes[:, k]) for k, embedding in enumerate(self.attributes)]
        return nn.functional.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=-1)


def _mlp(inputs: int, dimension: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 2 * dimension), nn.ReLU(), nn.Linear(2 * dimension, dimension))


class TwoTowerModel:
    """A trained two-tower model with its catalogue, content, user attributes and training histories."""

    def __init__(
        self,
        *,
        config: TwoTowerConfig,
        network: TwoTowerNetwork,
        items: _Catalogue,
        users: _Catalogue,
        modalities: list[str],
        content: list[tuple[np.ndarray, np.ndarray]],
        attribute_vocabularies: dict[str, list[str]],
        user_attributes: np.ndarray,
        history: _History,
        loss_history: list[float],
        input_hash: str,
    ):
        self.config = config
        self.network = network
        self.items = items
        self.users = users
        self.modalities = modalities
        self.content = content
        self.attribute_vocabularies = attribute_vocabularies
        self.user_attributes = user_attributes
        self.history = history
        self.loss_history = loss_history
        self.input_hash = input_hash
        self.device = next(network.parameters()).device

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1] if self.loss_history else float("nan")

    @property
    def weights_identity(self) -> str:
        return f"trained:{self.input_hash[:16]}"

    def item_vectors(
        self, item_ids: Sequence[str], *, content: dict[str, EmbeddingTable] | None = None
    ) -> np.ndarray:
        """Normalised float32 item vectors ``[len(item_ids), dimension]``.

        Items without training interactions are served by their content alone. By default content comes
        from what the model was trained with; pass ``content`` (same modalities) for items added since.
        Items the model has neither an ID vector nor content for get a zero vector.
        """
        positions = self.items.positions(item_ids)
        known = positions >= 0
        id_rows = np.where(known, self.items.id_rows[np.maximum(positions, 0)], 0)
        if content is None:
            pairs = [
                (vectors[np.maximum(positions, 0)], mask[np.maximum(positions, 0)] & known)
                for vectors, mask in self.content
            ]
        else:
            if sorted(content) != self.modalities:
                raise ValueError(
                    f"content has modalities {sorted(content)}; the model uses {self.modalities}"
                )
            pairs = _content_arrays(content, item_ids, self.config.fusion)
        vectors = self._item_tower(id_rows, pairs)
        has_content = (
            np.logical_or.reduce([mask for _, mask in pairs]) if pairs else np.zeros(len(positions), bool)
        )
        vectors[(id_rows == 0) & ~has_content] = 0.0
        return vectors

    def user_vectors(
        self,
        user_ids: Sequence[str],
        history: Mapping[str, Sequence[str]] | InteractionMatrix | None = None,
        *,
        attributes: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Normalised float32 user vectors ``[len(user_ids), dimension]``.

        Args:
            user_ids: raw user IDs; users unknown to the model have no ID vector.
            history: ``None`` for the training histories; a mapping user ID → item IDs, oldest first; or an
                :class:`InteractionMatrix` (no order: columns in matrix order). The latest ``history_size``
                items the model knows count; users without history are served by ID and attributes.
            attributes: ``user_id`` plus attribute columns for users the model did not see in training;
                known users keep their training attributes.
        """
        user_ids = np.asarray(user_ids, dtype=object).astype(str)
        positions = self.users.positions(user_ids)
        known = positions >= 0
        id_rows = np.where(known, self.users.id_rows[np.maximum(positions, 0)], 0)
        codes = np.where(known[:, None], self.user_attributes[np.maximum(positions, 0)], 0)
        if attributes is not None and self.attribute_vocabularies:
            given = _attribute_codes(attributes, user_ids, self.attribute_vocabularies)
            codes = np.where(known[:, None], codes, given)
        if history is None:
            batch_rows, items = self.history.rows(np.maximum(positions, 0))
            keep = known[batch_rows]
            batch_rows, items = batch_rows[keep], items[keep]
        else:
            batch_rows, items = self._given_history(user_ids, history)
        item_vectors = torch.as_tensor(self.item_vectors(self.items.ids), device=self.device)
        with torch.no_grad():
            history_mean = _history_mean(
                item_vectors,
                torch.as_tensor(batch_rows, device=self.device),
                torch.as_tensor(items, device=self.device),
                len(user_ids),
            )
            self.network.eval()
            vectors = self.network.users(
                torch.as_tensor(id_rows, device=self.device),
                history_mean,
                torch.as_tensor(codes, dtype=torch.int64, device=self.device),
            )
        return vectors.float().cpu().numpy()

    def attention_weights(self) -> dict[str, float]:
        """Mean attention weight per modality over the catalogue items with content (attention only)."""
        if not self.network.attention or self.network.content is None:
            return {}
        _, _, attention = attention_fusion(
            self.network.content, [v for v, _ in self.content], [m for _, m in self.content]
        )
        return mean_attention_weights(attention, self.modalities)

    def save(self, directory: Path) -> None:
        """Write ``config.json`` and the tensors (``model.safetensors``; ``model.pt`` without safetensors)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"network.{k}": v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()
        }
        tensors["items.id_rows"] = torch.as_tensor(self.items.id_rows)
        tensors["users.id_rows"] = torch.as_tensor(self.users.id_rows)
        tensors["users.attributes"] = torch.as_tensor(self.user_attributes)
        tensors["history.indptr"] = torch.as_tensor(self.history.indptr)
        tensors["history.indices"] = torch.as_tensor(self.history.indices)
        for k, (vectors, mask) in enumerate(self.content):
            tensors[f"content.{k}.vectors"] = torch.as_tensor(vectors)
            tensors[f"content.{k}.mask"] = torch.as_tensor(mask.astype(np.uint8))
        description = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "modalities": self.modalities,
            "content_dimensions": [int(v.shape[1]) for v, _ in self.content],
            "attribute_vocabularies": self.attribute_vocabularies,
            "item_ids": [str(i) for i in self.items.ids],
            "user_ids": [str(u) for u in self.users.ids],
            "loss_history": self.loss_history,
            "input_hash": self.input_hash,
        }
        try:
            from safetensors.torch import save_file
        except ImportError:
            with atomic_path(directory / TORCH_FILE) as temporary:
                torch.save(tensors, temporary)
        else:
            with atomic_path(directory / SAFETENSORS_FILE) as temporary:
                save_file(tensors, str(temporary))
        write_json(description, directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: Path, *, force_cpu: bool = False) -> TwoTowerModel:
        """Rebuild a model saved with :meth:`save` (tensors loaded as data only)."""
        directory = Path(directory)
        description = json.loads((directory / CONFIG_FILE).read_text())
        if description.get("format") != MODEL_FORMAT:
            raise ValueError(f"{directory}: not a two-tower model (format {description.get('format')!r})")
        if (directory / SAFETENSORS_FILE).exists():
            from safetensors.torch import load_file

            tensors = load_file(str(directory / SAFETENSORS_FILE))
        else:
            tensors = torch.load(directory / TORCH_FILE, weights_only=True, map_location="cpu")
        config = TwoTowerConfig(**description["config"])
        vocabularies = description["attribute_vocabularies"]
        items = _Catalogue(
            np.asarray(description["item_ids"], dtype=object), tensors["items.id_rows"].numpy()
        )
        users = _Catalogue(
            np.asarray(description["user_ids"], dtype=object), tensors["users.id_rows"].numpy()
        )
        network = TwoTowerNetwork(
            n_item_ids=int(items.id_rows.max(initial=0)),
            n_user_ids=int(users.id_rows.max(initial=0)),
            attribute_sizes=[len(vocabulary) for vocabulary in vocabularies.values()],
            content_dimensions=description["content_dimensions"],
            fusion=config.fusion,
            dimension=config.dimension,
        )
        prefix = "network."
        network.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        network.to(resolve_device(force_cpu or config.force_cpu).name)
        content = [
            (tensors[f"content.{k}.vectors"].numpy(), tensors[f"content.{k}.mask"].numpy().astype(bool))
            for k in range(len(description["content_dimensions"]))
        ]
        return cls(
            config=config,
            network=network,
            items=items,
            users=users,
            modalities=description["modalities"],
            content=content,
            attribute_vocabularies=vocabularies,
            user_attributes=tensors["users.attributes"].numpy(),
            history=_History(tensors["history.indptr"].numpy(), tensors["history.indices"].numpy()),
            loss_history=[float(v) for v in description["loss_history"]],
            input_hash=description["input_hash"],
        )

    def export(self, out_dir: Path) -> ExportedEmbeddings:
        """Write ``cf_items.parquet``, ``cf_users.parquet`` and, with attention fusion, ``fused.parquet``.

        Item rows are every catalogue item (trained or content-only); user rows every known user. The
        schema metadata names the encoder ``two-tower`` with weights ``trained:<hash of inputs+config>``.
        """
        out_dir = Path(out_dir)
        attention = self.attention_weights()
        metadata = {
            "encoder": "two-tower",
            "weights": self.weights_identity,
            "pretrained": False,
            "loss": self.config.loss,
            "epochs": self.config.epochs,
            "final_loss": self.final_loss,
            "temperature": self.config.temperature,
            "id_dropout": self.config.id_dropout,
            "fusion": self.config.fusion.mode if self.modalities else None,
            "modalities": self.modalities,
        }
        if attention:
            metadata["attention_weights"] = attention
        paths = ExportedEmbeddings(out_dir / "cf_items.parquet", out_dir / "cf_users.parquet", None)
        item_vectors = self.item_vectors(self.items.ids)
        write_embeddings(
            paths.items,
            ITEM_ID,
            self.items.ids,
            item_vectors,
            valid=np.linalg.norm(item_vectors, axis=1) > 0,
            metadata={**metadata, "side": "items"},
        )
        write_embeddings(
            paths.users,
            USER_ID,
            self.users.ids,
            self.user_vectors(self.users.ids),
            metadata={**metadata, "side": "users"},
        )
        if attention:
            fused, present, _ = attention_fusion(
                self.network.content, [v for v, _ in self.content], [m for _, m in self.content]
            )
            problems = [None if found else "no content block" for found in present]
            paths = paths._replace(fused=out_dir / "fused.parquet")
            write_embeddings(
                paths.fused,
                ITEM_ID,
                self.items.ids,
                fused,
                valid=present,
                problems=problems,
                metadata={**metadata, "encoder": "two-tower-attention-fusion", "side": "items"},
            )
        return paths

    def _item_tower(self, id_rows: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        vectors = np.zeros((len(id_rows), self.config.dimension), dtype=np.float32)
        self.network.eval()
        with torch.no_grad():
            for start in range(0, len(id_rows), 8192):
                rows = slice(start, start + 8192)
                out = self.network.items(
                    torch.as_tensor(id_rows[rows], device=self.device),
                    _to_tensors([(v[rows], m[rows]) for v, m in pairs], self.device),
                )
                vectors[rows] = out.float().cpu().numpy()
        return vectors

    def _given_history(
        self, user_ids: np.ndarray, history: Mapping[str, Sequence[str]] | InteractionMatrix
    ) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(history, InteractionMatrix):
            rows = history.users.positions(user_ids)
            found = np.flatnonzero(rows >= 0)
            block = history.matrix[rows[found]].tocsr()
            batch_rows = found[np.repeat(np.arange(len(found)), np.diff(block.indptr))]
            items = self.items.positions(history.items.ids[block.indices])
        else:
            lists = [list(history.get(user, ())) for user in user_ids]
            batch_rows = np.repeat(np.arange(len(user_ids)), [len(items) for items in lists])
            flat = [str(item) for items in lists for item in items]
            items = self.items.positions(np.asarray(flat, dtype=object))
        keep = items >= 0
        latest = _latest_unique(batch_rows[keep], items[keep], self.config.history_size)
        return batch_rows[keep][latest], items[keep][latest]


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


@dataclass(frozen=True)
class _TrainingData:
    """Everything a training step reads, as arrays and tensors on the training device."""

    pair_users: np.ndarray
    pair_items: np.ndarray
    warm_items: np.ndarray
    log_q: torch.Tensor
    item_id_rows: torch.Tensor
    content: list[tuple[torch.Tensor, torch.Tensor]]
    user_id_rows: torch.Tensor
    attributes: torch.Tensor
    history: _History
    device: str

    @classmethod
    def build(
        cls,
        train: InteractionMatrix,
        items: _Catalogue,
        content: list[tuple[np.ndarray, np.ndarray]],
        user_attributes: np.ndarray,
        history: _History,
        device: str,
    ) -> _TrainingData:
        coo = train.matrix.tocoo()
        popularity = train.item_popularity().astype(np.float64)
        log_q = np.log(np.maximum(popularity, 1.0) / popularity.sum())
        user_id_rows = np.where(train.user_activity() > 0, np.arange(1, train.n_users + 1), 0)
        return cls(
            pair_users=coo.row.astype(np.int64),
            pair_items=coo.col.astype(np.int64),
            warm_items=np.flatnonzero(popularity > 0),
            log_q=torch.as_tensor(log_q, dtype=torch.float32, device=device),
            item_id_rows=torch.as_tensor(items.id_rows, device=device),
            content=_to_tensors(content, device),
            user_id_rows=torch.as_tensor(user_id_rows, device=device),
            attributes=torch.as_tensor(user_attributes, dtype=torch.int64, device=device),
            history=history,
            device=device,
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


def _history_mean(
    item_vectors: torch.Tensor, rows: torch.Tensor, items: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """Mean of ``item_vectors[items]`` per batch row (zero for rows without history).

    A sparse [rows × items] averaging matrix times the item vectors: its backward pass is much cheaper on
    CPU than the gradient of a gather followed by a scatter-add.
    """
    counts = torch.bincount(rows, minlength=n_rows).clamp(min=1)
    weights = 1.0 / counts[rows].to(item_vectors.dtype)
    averaging = torch.sparse_coo_tensor(
        torch.stack([rows, items]), weights, (n_rows, item_vectors.shape[0]), check_invariants=False
    )
    return torch.sparse.mm(averaging, item_vectors)


def _to_tensors(
    pairs: list[tuple[np.ndarray, np.ndarray]], device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.as_tensor(np.asarray(v, dtype=np.float32), device=device),
            torch.as_tensor(np.asarray(m, bool), device=device),
        )
        for v, m in pairs
    ]


def _item_catalogue(train: InteractionMatrix, content: dict[str, EmbeddingTable]) -> _Catalogue:
    """Training items first (ID rows 1..n for those with interactions), then content-only items, sorted."""
    train_ids = np.asarray(train.items.ids, dtype=object).astype(str)
    content_ids = set()
    for table in content.values():
        content_ids.update(str(key) for key, valid in zip(table.keys, table.valid, strict=True) if valid)
    extra = np.asarray(sorted(content_ids - set(train_ids)), dtype=object)
    id_rows = np.where(train.item_popularity() > 0, np.arange(1, train.n_items + 1), 0)
    return _Catalogue(
        np.concatenate([train_ids, extra]).astype(object),
        np.concatenate([id_rows, np.zeros(len(extra), dtype=np.int64)]).astype(np.int64),
    )


def _user_catalogue(train: InteractionMatrix, users: pd.DataFrame | None) -> _Catalogue:
    """Training users first (ID rows 1..n for those with interactions), then attribute-only users."""
    train_ids = np.asarray(train.users.ids, dtype=object).astype(str)
    extra = np.zeros(0, dtype=object)
    if users is not None:
        listed = pd.unique(users[USER_ID].astype(str).to_numpy(dtype=object))
        extra = listed[~pd.Index(listed).isin(train_ids)]
    id_rows = np.where(train.user_activity() > 0, np.arange(1, train.n_users + 1), 0)
    return _Catalogue(
        np.concatenate([train_ids, extra]).astype(object),
        np.concatenate([id_rows, np.zeros(len(extra), dtype=np.int64)]).astype(np.int64),
    )


def _content_arrays(
    content: dict[str, EmbeddingTable], item_ids: Sequence[str], fusion: FusionConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The item tower's content input: ``(vectors, present)`` per normalised block, or the concatenation.

    Attention fusion gets one L2-normalised block per modality (sorted names); concat fusion gets the single
    weighted concatenation of :func:`concat_fusion`; no content gives an empty list.
    """
    if not content:
        return []
    if fusion.mode == "concat":
        return [concat_fusion(content, item_ids, fusion.weights)]
    pairs = []
    for modality in sorted(content):
        vectors, present = content[modality].lookup(item_ids)
        pairs.append((l2_normalise(vectors), present))
    return pairs


def _attribute_vocabularies(
    users: pd.DataFrame | None, columns: ResolvedColumns | None = None
) -> dict[str, list[str]]:
    """Attribute columns of ``users`` and their sorted values (code = position + 1; 0 unknown).

    The attributes are the ``categorical`` columns (roles from ``columns``, inferred when ``None``) and the
    ``numeric`` columns of whole numbers with at most ``MAX_NUMERIC_ATTRIBUTE_VALUES`` values, each taking
    2 to ``MAX_ATTRIBUTE_VALUE_SHARE`` × users distinct values.
    """
    if users is None or USER_ID not in users.columns:
        return {}
    roles = columns if columns is not None else resolve_columns(users, USER_ID)
    vocabularies = {}
    n_users = max(users[USER_ID].nunique(), 1)
    for column, role in roles.roles.items():
        if role not in ("categorical", "numeric") or column not in users.columns:
            continue
        values = users[column].dropna()
        n_values = values.nunique()
        if role == "numeric" and not (
            pd.api.types.is_integer_dtype(pd.to_numeric(values, errors="coerce"))
            and n_values <= MAX_NUMERIC_ATTRIBUTE_VALUES
        ):
            logger.info("two-tower: user attribute %r is not categorical; skipped", column)
            continue
        if n_values < 2 or n_values > MAX_ATTRIBUTE_VALUE_SHARE * n_users:
            logger.info("two-tower: user attribute %r has %d values; skipped", column, n_values)
            continue
        vocabularies[str(column)] = sorted(set(_attribute_values(values)))
    return vocabularies


def _attribute_codes(
    users: pd.DataFrame, user_ids: Sequence[str], vocabularies: dict[str, list[str]]
) -> np.ndarray:
    """``[len(user_ids), n_attributes]`` codes (0 where the user or the value is unknown)."""
    table = users.assign(**{USER_ID: users[USER_ID].astype(str)}).drop_duplicates(USER_ID, keep="last")
    table = table.set_index(USER_ID).reindex(pd.Index(np.asarray(user_ids, dtype=object)))
    codes = np.zeros((len(user_ids), len(vocabularies)), dtype=np.int64)
    for k, (column, vocabulary) in enumerate(vocabularies.items()):
        if column in table.columns:
            codes[:, k] = pd.Index(vocabulary).get_indexer(_attribute_values(table[column])) + 1
    return codes


def _attribute_values(column: pd.Series) -> np.ndarray:
    """Attribute values as strings (None where missing), the form vocabularies are keyed by."""
    return np.asarray([None if pd.isna(value) else str(value) for value in column], dtype=object)


def _training_history(
    train: InteractionMatrix, interactions: pd.DataFrame | None, n_users: int, history_size: int
) -> _History:
    """The latest ``history_size`` training items per user (by time when ``interactions`` has timestamps)."""
    if interactions is not None:
        rows = train.users.positions(interactions[USER_ID].astype(str))
        cols = train.items.positions(interactions[ITEM_ID].astype(str))
        in_train = (rows >= 0) & (cols >= 0)
        in_train[in_train] = np.asarray(train.matrix[rows[in_train], cols[in_train]]).ravel() > 0
        rows, cols = rows[in_train], cols[in_train]
        times = interaction_seconds(interactions)
        if times is not None:
            # Rows without a time count as the latest, as in the user profiles.
            order = np.argsort(np.where(np.isnan(times[in_train]), np.inf, times[in_train]), kind="stable")
            rows, cols = rows[order], cols[order]
    else:
        coo = train.matrix.tocoo()
        order = np.lexsort((coo.col, coo.row))
        rows, cols = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    latest = _latest_unique(rows, cols, history_size)
    rows, cols = rows[latest], cols[latest]
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return _History(indptr, cols[order].astype(np.int64))


def _latest_unique(rows: np.ndarray, items: np.ndarray, limit: int) -> np.ndarray:
    """Mask of the pairs to keep: per row the last occurrence of each item, then the last ``limit``."""
    pairs = pd.DataFrame({"row": rows, "item": items})
    last = ~pairs.duplicated(keep="last").to_numpy()
    from_end = np.zeros(len(rows), dtype=np.int64)
    from_end[last] = pairs[last].groupby("row", sort=False).cumcount(ascending=False).to_numpy()
    return last & (from_end < limit)


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
