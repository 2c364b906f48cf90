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

Modules, each importing only those above it: ``config`` (hyperparameters), ``network`` (the torch towers),
``data`` (catalogues, content, attributes and histories as arrays), ``model`` (the trained model: vectors,
save/load, export), ``training`` (``train_two_tower``).
"""

from features.two_tower.config import LOSSES, TwoTowerConfig
from features.two_tower.data import MAX_ATTRIBUTE_VALUE_SHARE, MAX_NUMERIC_ATTRIBUTE_VALUES
from features.two_tower.model import (
    CONFIG_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    SAFETENSORS_FILE,
    TORCH_FILE,
    ExportedEmbeddings,
    TwoTowerModel,
)
from features.two_tower.network import TwoTowerNetwork
from features.two_tower.training import train_two_tower

__all__ = [
    "CONFIG_FILE",
    "LOSSES",
    "MAX_ATTRIBUTE_VALUE_SHARE",
    "MAX_NUMERIC_ATTRIBUTE_VALUES",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "SAFETENSORS_FILE",
    "TORCH_FILE",
    "ExportedEmbeddings",
    "TwoTowerConfig",
    "TwoTowerModel",
    "TwoTowerNetwork",
    "train_two_tower",
]
