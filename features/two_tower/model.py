"""The trained two-tower model: item and user vectors from it, save and load as data, and the export of its
embedding files (``cf_items``, ``cf_users`` and, with attention fusion, ``fused``)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from features.device import resolve_device
from features.fusion import attention_fusion, mean_attention_weights
from features.two_tower.config import TwoTowerConfig
from features.two_tower.data import (
    _attribute_codes,
    _Catalogue,
    _catalogue_by_id,
    _content_arrays,
    _History,
    _item_catalogue,
    _latest_unique,
    _pairs_by_id,
    _training_history,
    _user_catalogue,
)
from features.two_tower.network import TwoTowerNetwork, _history_mean, _to_tensors
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import InteractionMatrix
from m6rec.embeddings.store import EmbeddingTable, write_embeddings
from m6rec.io import atomic_path, write_json

MODEL_FORMAT = "m6rec-two-tower"
MODEL_FORMAT_VERSION = 2  # 2 adds the validation history, the best epoch and the held-out pairs
CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "model.pt"


class ExportedEmbeddings(NamedTuple):
    """Paths of the files of :meth:`TwoTowerModel.export`; ``fused`` only with attention fusion. ``written``
    names the files written (``items``, ``users``, ``fused``); the others already held these vectors."""

    items: Path
    users: Path
    fused: Path | None
    written: tuple[str, ...] = ()


class TwoTowerModel:
    """A trained two-tower model with its catalogue, content, user attributes and training histories.

    ``loss_history`` and ``validation_history`` hold the training and validation loss of each epoch run,
    ``best_epoch`` (1-based) the epoch whose weights it holds, ``validation_pairs`` the held-out
    interactions as (user, item) catalogue positions, which training never saw.
    """

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
        validation_history: list[float] | None = None,
        best_epoch: int | None = None,
        validation_pairs: np.ndarray | None = None,
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
        self.validation_history = list(validation_history or [])
        self.best_epoch = best_epoch if best_epoch is not None else len(loss_history)
        self.validation_pairs = (
            np.zeros((0, 2), dtype=np.int64)
            if validation_pairs is None
            else np.asarray(validation_pairs, dtype=np.int64).reshape(-1, 2)
        )
        self.device = next(network.parameters()).device

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1] if self.loss_history else float("nan")

    @property
    def best_validation_loss(self) -> float | None:
        """The validation loss of the epoch whose weights the model holds; None without one."""
        if not 0 < self.best_epoch <= len(self.validation_history):
            return None
        loss = self.validation_history[self.best_epoch - 1]
        return None if math.isnan(loss) else loss

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
        tensors["validation.pairs"] = torch.as_tensor(self.validation_pairs)
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
            "validation_history": [None if math.isnan(v) else v for v in self.validation_history],
            "best_epoch": self.best_epoch,
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
        if description.get("format_version", 1) > MODEL_FORMAT_VERSION:
            raise ValueError(
                f"{directory}: two-tower format version {description['format_version']} is newer than this "
                f"code reads ({MODEL_FORMAT_VERSION}); upgrade m6rec or retrain"
            )
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
            # The tables' own sizes: the last matrix rows may have no interactions, hence no ID row in use.
            n_item_ids=tensors["network.item_ids.weight"].shape[0] - 1,
            n_user_ids=tensors["network.user_ids.weight"].shape[0] - 1,
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
            validation_history=[
                float("nan") if v is None else float(v) for v in description.get("validation_history", [])
            ],
            best_epoch=description.get("best_epoch"),
            validation_pairs=tensors["validation.pairs"].numpy() if "validation.pairs" in tensors else None,
        )

    def fold_in(
        self,
        train: InteractionMatrix,
        content: dict[str, EmbeddingTable],
        *,
        users: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
    ) -> TwoTowerModel:
        """This model's weights over current data, without training.

        The catalogue is that of ``train`` and ``content`` (the same modalities as the model's), the users
        those of ``train`` and ``users``; their histories are the latest ``history_size`` items of ``train``
        (by time with ``interactions``, as in training) and their attributes those of ``users`` (without
        it, known users keep theirs). Items and users the model knows keep their ID vectors, matched by
        raw ID; new items are served by their content alone, new users by their history and attributes,
        the inputs ID dropout trained the towers on. The folded model shares this model's network.
        """
        if sorted(content) != self.modalities:
            raise ValueError(f"content has modalities {sorted(content)}; the model uses {self.modalities}")
        items = _catalogue_by_id(_item_catalogue(train, content), self.items)
        user_catalogue = _catalogue_by_id(_user_catalogue(train, users), self.users)
        if users is not None and self.attribute_vocabularies:
            codes = _attribute_codes(users, user_catalogue.ids, self.attribute_vocabularies)
        else:
            positions = self.users.positions(user_catalogue.ids)
            codes = np.where((positions >= 0)[:, None], self.user_attributes[np.maximum(positions, 0)], 0)
        return TwoTowerModel(
            config=self.config,
            network=self.network,
            items=items,
            users=user_catalogue,
            modalities=self.modalities,
            content=_content_arrays(content, items.ids, self.config.fusion),
            attribute_vocabularies=self.attribute_vocabularies,
            user_attributes=codes.astype(np.int64),
            history=_training_history(train, interactions, len(user_catalogue.ids), self.config.history_size),
            loss_history=self.loss_history,
            input_hash=self.input_hash,
            validation_history=self.validation_history,
            best_epoch=self.best_epoch,
            validation_pairs=_pairs_by_id(self.validation_pairs, self.users.ids, self.items.ids, train),
        )

    def export(self, out_dir: Path) -> ExportedEmbeddings:
        """Write ``cf_items.parquet``, ``cf_users.parquet`` and, with attention fusion, ``fused.parquet``.

        Item rows are every catalogue item (trained or content-only); user rows every known user. The
        schema metadata names the encoder ``two-tower`` with weights ``trained:<hash of inputs+config>``,
        and ``inputs``, a hash of the weights and of the arrays that file's vectors are computed from
        (items: catalogue and content; users: those and the users, histories and attributes). A file that
        already holds its keys and this metadata is left as it is; ``written`` names the files written.
        """
        from m6rec.embeddings.store import current_file_problems

        out_dir = Path(out_dir)
        attention = self.attention_weights()
        metadata = {
            "encoder": "two-tower",
            "weights": self.weights_identity,
            "pretrained": False,
            "loss": self.config.loss,
            "epochs": len(self.loss_history),
            "best_epoch": self.best_epoch,
            "validation_loss": self.best_validation_loss,
            "final_loss": self.final_loss,
            "temperature": self.config.temperature,
            "id_dropout": self.config.id_dropout,
            "fusion": self.config.fusion.mode if self.modalities else None,
            "modalities": self.modalities,
        }
        if attention:
            metadata["attention_weights"] = attention
        item_inputs, user_inputs = self._file_inputs()
        files = {
            "items": (
                out_dir / "cf_items.parquet",
                self.items.ids,
                {**metadata, "side": "items", "inputs": item_inputs},
            ),
            "users": (
                out_dir / "cf_users.parquet",
                self.users.ids,
                {**metadata, "side": "users", "inputs": user_inputs},
            ),
        }
        if attention:
            fused_metadata = {**metadata, "encoder": "two-tower-attention-fusion", "side": "items"}
            files["fused"] = (
                out_dir / "fused.parquet",
                self.items.ids,
                {**fused_metadata, "inputs": item_inputs},
            )
        written = tuple(
            name
            for name, (path, keys, file_metadata) in files.items()
            if current_file_problems(path, keys, file_metadata) is None
        )
        if "items" in written:
            path, keys, file_metadata = files["items"]
            item_vectors = self.item_vectors(keys)
            write_embeddings(
                path,
                ITEM_ID,
                keys,
                item_vectors,
                valid=np.linalg.norm(item_vectors, axis=1) > 0,
                metadata=file_metadata,
            )
        if "users" in written:
            path, keys, file_metadata = files["users"]
            write_embeddings(path, USER_ID, keys, self.user_vectors(keys), metadata=file_metadata)
        if "fused" in written:
            path, keys, file_metadata = files["fused"]
            fused, present, _ = attention_fusion(
                self.network.content, [v for v, _ in self.content], [m for _, m in self.content]
            )
            problems = [None if found else "no content block" for found in present]
            write_embeddings(
                path, ITEM_ID, keys, fused, valid=present, problems=problems, metadata=file_metadata
            )
        return ExportedEmbeddings(
            files["items"][0], files["users"][0], files["fused"][0] if attention else None, written
        )

    def _file_inputs(self) -> tuple[str, str]:
        """SHA-256 of what the item files' vectors are computed from (configuration, weights, catalogue,
        content) and of what the user file's are (those, users, ID rows, attributes, histories)."""
        weights = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, value in sorted(self.network.state_dict().items()):
            weights.update(name.encode())
            _hash_array(weights, value.detach().cpu().contiguous().numpy())
        items = weights.copy()
        items.update("\0".join(map(str, self.items.ids)).encode())
        for array in (self.items.id_rows, *(array for pair in self.content for array in pair)):
            _hash_array(items, array)
        users = items.copy()
        users.update("\0".join(map(str, self.users.ids)).encode())
        for array in (self.users.id_rows, self.user_attributes, self.history.indptr, self.history.indices):
            _hash_array(users, array)
        return items.hexdigest(), users.hexdigest()

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


def _hash_array(digest, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
