"""Fusing the frozen modality blocks of an item (text, image, audio, KG) into one content vector.

Two ways: ``concat`` is a fixed weighted concatenation of the L2-normalised blocks, computed once;
``attention`` is :class:`ModalityAttention`, which learns per item how much each available block counts and
is trained inside the two-tower item tower, so the fusion is learned with the recommendation objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from m6rec.config import FusionSettings
from m6rec.embeddings.store import EmbeddingTable

FusionConfig = FusionSettings


def concat_fusion(
    blocks: dict[str, EmbeddingTable], item_ids: Sequence[str], weights: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted concatenation of the L2-normalised modality blocks of ``item_ids``.

    Blocks are concatenated in sorted modality order; an item lacking a block gets zeros there. The result
    is L2-normalised per item.

    Args:
        blocks: modality name to its embedding table.
        item_ids: raw item IDs to fuse.
        weights: per-modality multiplier applied after normalising the block (default 1 for each).

    Returns:
        ``(vectors, present)``: float32 ``[len(item_ids), sum of block dimensions]`` and a boolean mask of
        the items with at least one block.
    """
    weights = weights or {}
    unknown = set(weights) - set(blocks)
    if unknown:
        raise ValueError(f"fusion weights name modalities without a block: {sorted(unknown)}")
    parts, present = [], np.zeros(len(item_ids), dtype=bool)
    for modality in sorted(blocks):
        vectors, found = blocks[modality].lookup(item_ids)
        parts.append(l2_normalise(vectors) * np.float32(weights.get(modality, 1.0)))
        present |= found
    if not parts:
        return np.zeros((len(item_ids), 0), dtype=np.float32), present
    return l2_normalise(np.concatenate(parts, axis=1)), present


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class ModalityAttention(nn.Module):
    """Per-item attention over the available modality blocks.

    Each block ``x_m`` is projected to ``dimension`` (``p_m = W_m x_m + b_m``); its score is
    ``q · tanh(p_m)`` with a learned query ``q``; a softmax over the blocks the item has gives ``α_m``,
    and the output is ``Σ α_m p_m``. Items without any block get a zero vector.

    Args:
        input_dimensions: size of each modality block, in the order the blocks are passed (sorted
            modality names everywhere in m6rec).
        dimension: output size.
    """

    def __init__(self, input_dimensions: Sequence[int], dimension: int):
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(int(size), dimension) for size in input_dimensions)
        self.query = nn.Parameter(torch.randn(dimension) / dimension**0.5)
        self.dimension = dimension

    def forward(self, blocks: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]):
        """Fuse a batch.

        Args:
            blocks: one float tensor ``[batch, d_m]`` per modality.
            masks: one bool tensor ``[batch]`` per modality, True where the item has that block.

        Returns:
            ``(fused, attention)``: ``[batch, dimension]`` and ``[batch, n_modalities]`` weights (rows sum
            to 1 where the item has a block, else 0).
        """
        projected = torch.stack([project(x) for project, x in zip(self.projections, blocks, strict=True)], 1)
        available = torch.stack(list(masks), dim=1)
        scores = (torch.tanh(projected) @ self.query).masked_fill(~available, float("-inf"))
        # Rows without any block would softmax to NaN; give them finite scores, then zero their weights.
        scores = scores.masked_fill(~available.any(dim=1, keepdim=True), 0.0)
        attention = torch.softmax(scores, dim=1) * available
        fused = (attention.unsqueeze(-1) * projected).sum(dim=1)
        return fused, attention


def mean_attention_weights(attention: np.ndarray, modalities: Sequence[str]) -> dict[str, float]:
    """Mean attention weight of each modality over the items that have at least one block.

    Args:
        attention: ``[n_items, n_modalities]`` weights as returned by :class:`ModalityAttention`.
        modalities: modality names in column order.
    """
    attention = np.asarray(attention, dtype=np.float64)
    fused_items = attention.sum(axis=1) > 0
    if not fused_items.any():
        return {modality: 0.0 for modality in modalities}
    means = attention[fused_items].mean(axis=0)
    return {modality: float(value) for modality, value in zip(modalities, means, strict=True)}


def attention_fusion(
    module: ModalityAttention,
    blocks: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused vectors and attention weights of a batch of items from a trained :class:`ModalityAttention`.

    Args:
        module: the trained attention fusion.
        blocks: one ``[n_items, d_m]`` array per modality, in the order the module was built with.
        masks: one boolean ``[n_items]`` array per modality, True where the item has that block.
        batch_size: items per forward pass.

    Returns:
        ``(vectors, present, attention)``: float32 ``[n_items, dimension]``, a mask of the items with at
        least one block, and the float32 ``[n_items, n_modalities]`` attention weights.
    """
    n_items = len(masks[0]) if masks else 0
    vectors = np.zeros((n_items, module.dimension), dtype=np.float32)
    attention = np.zeros((n_items, len(blocks)), dtype=np.float32)
    device = module.query.device
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for start in range(0, n_items, batch_size):
            stop = start + batch_size
            x = [torch.as_tensor(np.asarray(v[start:stop], dtype=np.float32), device=device) for v in blocks]
            m = [torch.as_tensor(np.asarray(p[start:stop], dtype=bool), device=device) for p in masks]
            fused, weights = module(x, m)
            vectors[start:stop] = fused.float().cpu().numpy()
            attention[start:stop] = weights.float().cpu().numpy()
    module.train(was_training)
    present = np.logical_or.reduce([np.asarray(p, dtype=bool) for p in masks]) if masks else np.zeros(0, bool)
    return vectors, present, attention
