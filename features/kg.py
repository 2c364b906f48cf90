"""Knowledge-graph embeddings of items, trained with pykeen on the ``kg`` table plus item attributes.

The graph is the dataset's ``kg`` triples (head, relation, tail; items appear by their ``item_id``) and,
for every categorical item column, ``(item_id, "has_<column>", "<column>:<value>")``. A model chosen by
name (TransE, TransH, RotatE, DistMult) is trained on all triples with pykeen's sLCWA training loop, and
the entity embeddings of the catalogue's items are written to one Parquet file (``features/store.py``).

The file is recomputed as a whole or not at all: its ``weights`` (``trained:<sha256>``) hash the
canonical triples (deduplicated, sorted) and the training settings, and a file whose weights and item
list match the current ones is reused untouched.

We drive pykeen's model and training loop ourselves rather than through ``pykeen.pipeline.pipeline``:
``pipeline`` requires a testing set and always runs a rank-based evaluation on it, which we do not need
and which on the KGCN music graph (15,518 triples) takes minutes on a CPU against seconds of training.
The components and their defaults (margin ranking loss, Adam, sLCWA with uniform negative sampling)
are those ``pipeline`` would use.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from features.device import resolve_device
from features.store import IncrementalReport, content_hash, read_embeddings, write_embeddings
from m6rec.data.contract import AUDIO_PATH, IMAGE_PATH, ITEM_ID, KG_HEAD, KG_RELATION, KG_TAIL
from m6rec.errors import ConfigError, DataError
from m6rec.progress import progress_enabled

logger = logging.getLogger(__name__)

KG_MODELS = ("TransE", "TransH", "RotatE", "DistMult")
KG_LAYOUT_VERSION = "1"
NOT_IN_GRAPH = "not in the knowledge graph"

NON_ATTRIBUTE_COLUMNS = frozenset({ITEM_ID, IMAGE_PATH, AUDIO_PATH, "title", "description", "name"})
LIST_COLUMN_NAMES = frozenset(
    {"tags", "tag", "genres", "genre", "categories", "keywords", "labels", "styles", "moods", "topics"}
)
MAX_ATTRIBUTE_TEXT_LENGTH = 40


@dataclass
class KGConfig:
    """Knowledge-graph embedding settings.

    ``model`` is one of ``KG_MODELS``; ``dimension`` is the embedding size (RotatE's embeddings are
    complex, so its files hold ``2 * dimension`` values: real parts, then imaginary parts).
    ``attribute_columns`` names the item columns turned into ``has_<column>`` relations by
    :func:`build_kg_triples`; ``None`` picks the categorical ones automatically.
    """

    model: str = "TransE"
    dimension: int = 64
    epochs: int = 100
    batch_size: int = 1024
    learning_rate: float = 0.01
    seed: int = 0
    force_cpu: bool = False
    attribute_columns: list[str] | None = None

    def __post_init__(self) -> None:
        canonical = {name.lower(): name for name in KG_MODELS}
        if not isinstance(self.model, str) or self.model.lower() not in canonical:
            raise ConfigError(f"kg: unknown model {self.model!r}; known: {', '.join(KG_MODELS)}")
        self.model = canonical[self.model.lower()]
        for key in ("dimension", "epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"kg: {key} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"kg: learning_rate must be positive, got {self.learning_rate!r}")

    def training_settings(self) -> dict:
        """The settings that fix the trained embeddings (not where they run nor how triples were built)."""
        settings = asdict(self)
        del settings["force_cpu"], settings["attribute_columns"]
        return settings


def build_kg_triples(
    kg: pd.DataFrame | None, items: pd.DataFrame | None, attribute_columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The training graph: ``kg`` triples plus ``(item_id, has_<column>, <column>:<value>)`` per attribute.

    ``attribute_columns`` ``None`` picks :func:`categorical_item_columns`; named columns are used as given.
    Multi-valued fields (``"A|B"``, or ``"A, B"`` in list-like columns such as ``genres``) give one triple
    per value. Returns string columns ``head``, ``relation``, ``tail`` without duplicates.
    """
    frames = []
    if kg is not None and len(kg):
        frames.append(kg[[KG_HEAD, KG_RELATION, KG_TAIL]].dropna().astype(str))
    if items is not None and len(items):
        if attribute_columns is None:
            attribute_columns = categorical_item_columns(items)
        missing = [column for column in attribute_columns if column not in items.columns]
        if missing:
            raise ConfigError(
                f"kg: attribute column {missing[0]!r} is not in items; columns: {', '.join(items.columns)}"
            )
        for column in attribute_columns:
            frames.append(_attribute_triples(items, column))
    if not frames:
        return pd.DataFrame({KG_HEAD: [], KG_RELATION: [], KG_TAIL: []}, dtype=str)
    triples = pd.concat(frames, ignore_index=True)
    for column in (KG_HEAD, KG_RELATION, KG_TAIL):
        triples[column] = triples[column].str.strip()
    return triples[(triples != "").all(axis=1)].drop_duplicates().reset_index(drop=True)


def categorical_item_columns(items: pd.DataFrame) -> list[str]:
    """Item columns that look like categories: short strings taking 2 to n / 2 distinct values.

    n is the number of non-empty values, counted after splitting multi-valued columns, so that ID-like
    columns (every value different) are left out. Media paths, titles, descriptions and names never are
    attributes.
    """
    chosen = []
    for column in items.columns:
        if column in NON_ATTRIBUTE_COLUMNS or not _is_string_column(items[column]):
            continue
        present = items[column].dropna().astype(str).str.strip()
        present = present[present != ""]
        if present.empty or present.str.len().mean() >= MAX_ATTRIBUTE_TEXT_LENGTH:
            continue
        values = _split_values(present, _separator(column, present))
        if 2 <= values.nunique() <= max(2, len(values) // 2):
            chosen.append(column)
    return chosen


def train_kg_embeddings(
    triples: pd.DataFrame, item_ids: Sequence[str], out_path: Path, config: KGConfig
) -> IncrementalReport:
    """Train ``config.model`` on ``triples`` and write the embeddings of ``item_ids`` to ``out_path``.

    Items that are not entities of the graph get a null embedding and the problem ``"not in the knowledge
    graph"``. When ``out_path`` already holds embeddings of the same items trained on the same triples with
    the same settings, it is reused (``computed == 0``). The same seed gives the same vectors on the CPU.
    """
    graph = _canonical_triples(triples)
    item_ids = [str(item_id) for item_id in item_ids]
    weights = f"trained:{_graph_hash(graph, config)}"
    encoder = f"pykeen:{config.model}"
    previous = _reusable(out_path, weights, item_ids)
    if previous is not None:
        return previous

    entity_vectors, entity_to_id, final_loss, device = _train(graph, config)
    positions = np.array([entity_to_id.get(item_id, -1) for item_id in item_ids], dtype=np.int64)
    valid = positions >= 0
    vectors = np.zeros((len(item_ids), entity_vectors.shape[1]), dtype=np.float32)
    vectors[valid] = entity_vectors[positions[valid]]
    problems = [None if ok else NOT_IN_GRAPH for ok in valid]
    identity = {"encoder": encoder, "weights": weights}
    write_embeddings(
        out_path,
        ITEM_ID,
        item_ids,
        vectors,
        valid=valid,
        content_hashes=[content_hash(identity, item_id) for item_id in item_ids],
        problems=problems,
        metadata={
            **identity,
            "modality": "kg",
            "pretrained": False,
            **config.training_settings(),
            "n_triples": len(graph),
            "n_entities": len(entity_to_id),
            "n_relations": int(len(np.unique(graph[:, 1]))),
            "final_loss": final_loss,
            "device": device,
            "pykeen_version": version("pykeen"),
        },
    )
    failed = [item_id for item_id, ok in zip(item_ids, valid, strict=True) if not ok]
    return IncrementalReport(
        "kg",
        total=len(item_ids),
        computed=len(item_ids),
        reused=0,
        failed=len(failed),
        problems=[{"modality": "kg", ITEM_ID: item_id, "problem": NOT_IN_GRAPH} for item_id in failed],
    )


def _train(graph: np.ndarray, config: KGConfig) -> tuple[np.ndarray, dict[str, int], float | None, str]:
    """Entity embeddings (rows follow ``entity_to_id``), that map, the last epoch's loss and the device."""
    import torch
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import TriplesFactory
    from pykeen.utils import set_random_seed

    device = resolve_device(config.force_cpu)
    set_random_seed(config.seed)
    factory = TriplesFactory.from_labeled_triples(graph, create_inverse_triples=False)
    model = model_resolver.make(
        config.model, triples_factory=factory, embedding_dim=config.dimension, random_seed=config.seed
    ).to(device.name)
    # Memory optimisation would probe sub-batch sizes with an extra pass; our batch size is explicit.
    loop = SLCWATrainingLoop(
        model=model,
        triples_factory=factory,
        optimizer="adam",
        optimizer_kwargs={"lr": config.learning_rate},
        automatic_memory_optimization=False,
    )
    with _frozen_heap():
        losses = loop.train(
            triples_factory=factory,
            num_epochs=config.epochs,
            batch_size=config.batch_size,
            drop_last=False,
            use_tqdm=progress_enabled(),
            use_tqdm_batch=False,
            tqdm_kwargs={"desc": f"training KG embeddings ({config.model})", "leave": False},
            pin_memory=device.is_cuda,
        )
    with torch.no_grad():
        embeddings = model.entity_representations[0](indices=None).detach().cpu()
    if embeddings.is_complex():
        embeddings = torch.cat([embeddings.real, embeddings.imag], dim=-1)
    final_loss = float(losses[-1]) if losses else None
    logger.info("kg: trained %s on %d triples, final loss %s", config.model, len(graph), final_loss)
    return embeddings.to(torch.float32).numpy(), dict(factory.entity_to_id), final_loss, device.name


@contextlib.contextmanager
def _frozen_heap():
    """Exclude the objects alive before training from garbage collection while training runs.

    pykeen calls ``gc.collect()`` after every epoch; with torch and pandas loaded, scanning their heap
    took most of a second per epoch, far longer than an epoch of a small graph.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _canonical_triples(triples: pd.DataFrame) -> np.ndarray:
    """Distinct, stripped, non-empty triples as a sorted ``[n, 3]`` string array, whatever the input order."""
    missing = [column for column in (KG_HEAD, KG_RELATION, KG_TAIL) if column not in triples.columns]
    if missing:
        raise DataError("kg", f"triples need columns head, relation, tail; missing {', '.join(missing)}")
    frame = triples[[KG_HEAD, KG_RELATION, KG_TAIL]].dropna().astype(str)
    frame = frame.apply(lambda column: column.str.strip())
    frame = frame[(frame != "").all(axis=1)].drop_duplicates()
    if frame.empty:
        raise DataError(
            "kg", "no knowledge-graph triples to train on", hint="add a kg table or item attributes"
        )
    frame = frame.sort_values([KG_HEAD, KG_RELATION, KG_TAIL], kind="stable")
    return frame.to_numpy(dtype=str)


def _graph_hash(graph: np.ndarray, config: KGConfig) -> str:
    digest = hashlib.sha256()
    settings = {**config.training_settings(), "layout": KG_LAYOUT_VERSION, "pykeen": version("pykeen")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for head, relation, tail in graph:
        digest.update(f"{head}\t{relation}\t{tail}\n".encode())
    return digest.hexdigest()


def _reusable(out_path: Path, weights: str, item_ids: list[str]) -> IncrementalReport | None:
    """The report of reusing ``out_path`` if it holds these very items and weights, else ``None``."""
    if not Path(out_path).exists():
        return None
    try:
        table = read_embeddings(out_path)
    except Exception:  # an unreadable previous file is retrained, never trusted
        return None
    if table.metadata.get("weights") != weights or list(table.keys) != item_ids:
        return None
    problems = [
        {"modality": "kg", ITEM_ID: key, "problem": problem}
        for key, ok, problem in zip(table.keys, table.valid, table.problems, strict=True)
        if not ok
    ]
    return IncrementalReport(
        "kg", total=len(item_ids), computed=0, reused=len(item_ids), failed=len(problems), problems=problems
    )


def _attribute_triples(items: pd.DataFrame, column: str) -> pd.DataFrame:
    present = items[[ITEM_ID, column]].dropna()
    values = present[column].astype(str).str.strip()
    separator = _separator(column, values)
    if separator is not None:
        values = values.str.split(separator, regex=False)
    exploded = pd.DataFrame({KG_HEAD: present[ITEM_ID].astype(str), "value": values}).explode("value")
    exploded["value"] = exploded["value"].astype(str).str.strip()
    exploded = exploded[exploded["value"] != ""]
    return pd.DataFrame(
        {
            KG_HEAD: exploded[KG_HEAD],
            KG_RELATION: f"has_{column}",
            KG_TAIL: f"{column}:" + exploded["value"],
        }
    )


def _separator(column: str, values: pd.Series) -> str | None:
    """``"|"`` when values use it, ``", "`` in list-like columns (tags, genres, ...), else ``None``."""
    if values.str.contains("|", regex=False).any():
        return "|"
    if column.lower() in LIST_COLUMN_NAMES and values.str.contains(", ", regex=False).any():
        return ", "
    return None


def _split_values(values: pd.Series, separator: str | None) -> pd.Series:
    if separator is None:
        return values
    split = values.str.split(separator, regex=False).explode().astype(str).str.strip()
    return split[split != ""]


def _is_string_column(column: pd.Series) -> bool:
    return pd.api.types.infer_dtype(column, skipna=True) == "string"
