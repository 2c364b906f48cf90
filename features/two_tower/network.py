"""The two towers as a torch module, and the tensor operations that training and serving share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from features.fusion import FusionConfig, ModalityAttention


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
