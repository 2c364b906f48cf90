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
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from features.device import resolve_device
from m6rec.config import KGSettings
from m6rec.data.columns import ResolvedColumns, distinct_values, resolve_columns, value_separator
from m6rec.data.contract import ITEM_ID, KG_HEAD, KG_RELATION, KG_TAIL
from m6rec.embeddings.store import IncrementalReport, content_hash, read_embeddings, write_embeddings
from m6rec.errors import ConfigError, DataError
from m6rec.log import quiet_third_party_loggers
from m6rec.progress import progress_enabled, step_log_level

logger = logging.getLogger("m6rec")

KG_LAYOUT_VERSION = "1"
NOT_IN_GRAPH = "not in the knowledge graph"


class KGConfig(KGSettings):
    """Knowledge-graph embedding settings (the ``embeddings.kg`` section, see :class:`m6rec.config.KGSettings`)
    plus where they run. RotatE's embeddings are complex, so its files hold ``2 * dimension`` values: real
    parts, then imaginary parts."""

    force_cpu: bool = False

    def training_settings(self) -> dict:
        """The settings that fix the trained embeddings (not where they run nor how triples were built)."""
        return self.model_dump(exclude={"force_cpu", "attribute_columns"})


def build_kg_triples(
    kg: pd.DataFrame | None,
    items: pd.DataFrame | None,
    attribute_columns: Sequence[str] | None = None,
    item_columns: ResolvedColumns | None = None,
) -> pd.DataFrame:
    """The training graph: ``kg`` triples plus ``(item_id, has_<column>, <column>:<value>)`` per attribute.

    ``attribute_columns`` ``None`` picks :func:`categorical_item_columns` of ``item_columns`` (the items'
    resolved column roles; inferred when ``None``); named columns are used as given.
    Multi-valued fields (``"A|B"``, or ``"A, B"`` in list-like columns such as ``genres``) give one triple
    per value. Returns string columns ``head``, ``relation``, ``tail`` without duplicates.
    """
    frames = []
    if kg is not None and len(kg):
        frames.append(kg[[KG_HEAD, KG_RELATION, KG_TAIL]].dropna().astype(str))
    if items is not None and len(items):
        if attribute_columns is None:
            attribute_columns = categorical_item_columns(items, item_columns)
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


def categorical_item_columns(items: pd.DataFrame, columns: ResolvedColumns | None = None) -> list[str]:
    """The item columns whose role is ``categorical`` (in ``columns``, or inferred when ``None``; see
    ``m6rec/data/columns.py``) and that take at least two distinct values (multi-valued fields split)."""
    roles = columns if columns is not None else resolve_columns(items, ITEM_ID)
    return [
        column
        for column in roles.categorical
        if column in items.columns and distinct_values(items[column], column) >= 2
    ]


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

    quiet_third_party_loggers()  # importing pykeen set its logger to INFO
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
    started = time.perf_counter()
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
            callbacks=_epoch_lines(config.model, config.epochs),
        )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        embeddings = model.entity_representations[0](indices=None).detach().cpu()
    if embeddings.is_complex():
        embeddings = torch.cat([embeddings.real, embeddings.imag], dim=-1)
    final_loss = float(losses[-1]) if losses else None
    logger.info(
        "kg: %s, %d epochs in %.1f s on %s, final loss %s (%d triples, %d entities)",
        config.model,
        config.epochs,
        seconds,
        device.name,
        "n/a" if final_loss is None else f"{final_loss:.4f}",
        len(graph),
        factory.num_entities,
    )
    return embeddings.to(torch.float32).numpy(), dict(factory.entity_to_id), final_loss, device.name


def _epoch_lines(model_name: str, epochs: int):
    """A pykeen training callback that logs each epoch's loss at :func:`step_log_level` (INFO on a
    terminal, DEBUG otherwise)."""
    from pykeen.training.callbacks import TrainingCallback

    level = step_log_level()

    class EpochLines(TrainingCallback):
        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs) -> None:
            logger.log(level, "kg epoch %d/%d: %s loss %.4f", epoch, epochs, model_name, epoch_loss)

    return EpochLines()


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
    separator = value_separator(column, values)
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
