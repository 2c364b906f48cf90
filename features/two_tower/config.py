"""The two-tower model's hyperparameters: its ``embeddings.two_tower`` and ``embeddings.fusion`` settings and
where it runs."""

from __future__ import annotations

from pydantic import Field

from features.fusion import FusionConfig
from m6rec.config import TWO_TOWER_LOSSES, TwoTowerSettings

LOSSES = TWO_TOWER_LOSSES


class TwoTowerConfig(TwoTowerSettings):
    """Hyperparameters of the two-tower model (the ``embeddings.two_tower`` section, see
    :class:`m6rec.config.TwoTowerSettings`), the fusion of its content blocks (``embeddings.fusion``) and
    where it runs."""

    fusion: FusionConfig = Field(default_factory=FusionConfig)
    force_cpu: bool = False

    def to_dict(self) -> dict:
        return self.model_dump()
