"""Typed run configuration, loaded from YAML with errors that name the bad key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from m6rec.errors import ConfigError

DEFAULT_SEARCH_SPACES: dict[str, dict[str, list]] = {
    "popularity": {},
    "itemknn": {"neighbours": [20, 50, 100, 200, 400]},
    "ease": {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]},
    "ials": {"factors": [32, 64, 128], "regularization": [3.0, 10.0, 30.0], "alpha": [1.0]},
    "sequential": {"window": [1, 3, 10]},
}


@dataclass
class BaselineConfig:
    """Which baselines run, and how each one's hyperparameters are chosen on a validation fold.

    ``search_spaces[model]`` maps a parameter to the values tried (the grid); ``params[model]`` fixes
    parameters outright. The model with the best validation NDCG@``selection_k`` makes the final list.
    """

    models: list[str] = field(default_factory=lambda: ["popularity", "itemknn", "ease", "ials"])
    search_spaces: dict[str, dict[str, list]] = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACES))
    params: dict[str, dict] = field(default_factory=dict)
    validation_ratio: float = 0.2
    selection_k: int = 10


@dataclass
class EmbeddingConfig:
    """The nightly embedding stage: which modalities run and each one's options.

    ``text``, ``image``, ``audio`` are keyword arguments of the encoders in ``features/`` (e.g.
    ``text: {model: /path/or/hub-id, template: "{title}. {genres}"}``, ``image: {model: ViT-B-32,
    pretrained: laion2b_s34b_b79k}`` or ``{checkpoint: /path/to/weights.pt}``); ``kg`` of
    ``features.kg.KGConfig``; ``two_tower`` of ``features.two_tower.TwoTowerConfig``. ``fusion.mode`` is
    ``concat`` (weighted concatenation of normalised blocks) or ``attention`` (learned with the two-tower
    objective). Without pretrained image weights the image encoder falls back to a randomly initialised
    network, warns loudly and records ``pretrained: false`` in the file metadata, unless
    ``image: {allow_random_weights: false}`` makes that an error.
    """

    modalities: list[str] = field(default_factory=lambda: ["text", "image", "audio", "kg", "cf"])
    text: dict = field(default_factory=dict)
    image: dict = field(default_factory=lambda: {"allow_random_weights": True})
    audio: dict = field(default_factory=dict)
    kg: dict = field(default_factory=dict)
    two_tower: dict = field(default_factory=dict)
    fusion: dict = field(default_factory=lambda: {"mode": "concat"})
    profile_half_life_days: float = 30.0
    force_cpu: bool = False

    MODALITIES = ("text", "image", "audio", "kg", "cf")

    def __post_init__(self) -> None:
        unknown = [name for name in self.modalities if name not in self.MODALITIES]
        if unknown:
            raise ConfigError(
                f"embeddings: unknown modality {unknown[0]!r}; known: {', '.join(self.MODALITIES)}"
            )


@dataclass
class RankerConfig:
    """The second stage: which extra candidate sources feed it and how the LightGBM ranker is trained.

    The baselines are always candidate sources; ``extra_sources`` adds ``trend`` (needs timestamps),
    ``two_tower`` and ``content`` (need the embeddings) and ``kg_neighbours`` (needs a kg file) where their
    inputs exist; ``sequential`` (items used next to each other in time, needs timestamps) is available but
    not a default: added on MovieLens-100K it lowered the ranker's NDCG@10 from 0.487 to 0.482
    (``benchmarks/two_stage.py --only ranker_ablation``). ``params`` are keyword arguments of ``ranker.model.LightGBMRanker``; the defaults are
    strongly regularised because the ranker must transfer from sources fitted on the fold to sources
    refitted on all training data. ``training_folds`` random label folds are stacked for training where
    the sources allow it. ``excluded_features`` are shell-style patterns of feature columns the ranker
    does not learn from: raw scores and raw counts, whose scale differs between the fold and the final
    candidates (ranks, per-user standardised scores and shares stand in for them). ``monotone_features``
    maps feature-name patterns to the direction the ranker's score must follow (``ranker.model``'s
    ``monotone``): by default no worse source rank and no lower standardised source score may raise an
    item, so a list never moves an item down because a source liked it more. The same ablation measured
    it only with the sequential source added, where it cost 0.002 NDCG@10, within the seed spread.

    New items, without any training interaction, reach users only through content (content and
    two-tower retrieval, KG neighbours). So that the ranker learns what those are worth,
    ``cold_item_share`` of the fold's items are simulated new items (their fold history hidden; used where
    content modalities run, see :meth:`RunConfig.fold_cold_item_share`). Their labels keep the rate of
    any item's, so the ranker still puts few new items above well-known ones; ``new_item_slots`` places
    of each final list are reserved for the user's best-ranked new items, at positions
    ``new_item_slot_spacing``, ``2 * new_item_slot_spacing``, ... unless the ranker already put them
    higher (``pipelines.ranking.rank_with_new_item_slots``); 0 (the default) turns this off. Measured on
    MovieLens-100K (``benchmarks/two_stage.py --only coldstart``): 5 slots every 10th place take the
    final lists' Recall@50 on items held out entirely from 0 to about 0.12, at about 4% of the NDCG@10 on
    the other items, whose own lists lose those places.
    """

    enabled: bool = True
    extra_sources: list[str] = field(
        default_factory=lambda: ["trend", "two_tower", "content", "kg_neighbours"]
    )
    candidates_per_source: int = 100
    early_stopping_share: float = 0.2
    training_folds: int = 3
    excluded_features: list[str] = field(
        default_factory=lambda: ["*_score", "item_pop", "item_pop_recent", "user_activity"]
    )
    params: dict = field(
        default_factory=lambda: {
            "learning_rate": 0.05,
            "num_leaves": 7,
            "min_child_samples": 500,
            "feature_fraction": 0.7,
            "n_estimators": 600,
            "early_stopping_rounds": 80,
        }
    )
    monotone_features: dict[str, int] = field(default_factory=lambda: {"*_rank": -1, "*_score_z": 1})
    cold_item_share: float = 0.1
    new_item_slots: int = 0
    new_item_slot_spacing: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.cold_item_share < 1.0:
            raise ConfigError(f"ranker: cold_item_share must be in [0, 1), got {self.cold_item_share!r}")
        for pattern, direction in self.monotone_features.items():
            if direction not in (-1, 0, 1) or isinstance(direction, bool):
                raise ConfigError(
                    f"ranker: monotone_features maps feature-name patterns to -1, 0 or 1, "
                    f"got {pattern!r}: {direction!r}"
                )
        if self.new_item_slots < 0:
            raise ConfigError(f"ranker: new_item_slots must be at least 0, got {self.new_item_slots!r}")
        if self.new_item_slot_spacing < 1:
            raise ConfigError(
                f"ranker: new_item_slot_spacing must be at least 1, got {self.new_item_slot_spacing!r}"
            )


@dataclass
class RunConfig:
    """Configuration of ``m6rec run``.

    ``split`` holds out a test set from ``interactions`` (``random:0.25``, ``temporal:0.2``,
    ``leave-last-out:1``, ``cutoff:<time>``); ``none`` trains on everything. A ``test`` file in the
    dataset directory takes precedence over ``split``.

    ``fold_split`` is how the fold that tunes the sources and trains the ranker is cut from the training
    interactions: ``random`` or ``temporal`` (each user's latest), or ``auto``, the way the test set was
    cut (a test file counts as temporal when nearly all of it is later than each user's training
    history) and random without a test set. A ranker trained on a temporal fold but tested on a random
    split learns recency that the test does not reward: on MovieLens-100K with a random test file
    (``benchmarks/two_stage.py --only coldstart``) the final lists' NDCG@10 was 0.35 with a temporal fold
    and is 0.48 with the random one ``auto`` now picks.
    """

    split: str = "none"
    seed: int = 42
    top_k: int = 10
    k_values: list[int] = field(default_factory=lambda: [10, 20])
    candidate_depth: int = 100
    skip_invalid_rows: bool = False
    fold_split: str = "auto"
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)

    FOLD_SPLITS = ("auto", "random", "temporal")

    def __post_init__(self) -> None:
        if self.fold_split not in self.FOLD_SPLITS:
            raise ConfigError(
                f"fold_split must be one of {', '.join(self.FOLD_SPLITS)}, got {self.fold_split!r}"
            )

    def fold_cold_item_share(self) -> float:
        """Share of items the ranker's fold treats as new: ``ranker.cold_item_share`` when the ranker runs
        with a content modality (text, image, audio, kg) that can reach items without history, else 0."""
        content = set(self.embeddings.modalities) - {"cf"}
        return self.ranker.cold_item_share if self.ranker.enabled and content else 0.0

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read a YAML file whose keys mirror this dataclass."""
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config: {error}") from None
        return from_mapping(cls, raw, str(path))


def from_mapping(cls, raw: dict, where: str):
    """Build dataclass ``cls`` from ``raw``, naming any unknown key or wrongly typed value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(fields)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            values[key] = from_mapping(type(default), value, f"{where}: {key}")
        elif default is not None and not _same_kind(default, value):
            raise ConfigError(f"{where}: {key} must be {type(default).__name__}, got {value!r}")
        else:
            values[key] = value
    return cls(**values)


def _same_kind(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default))
