"""Knowledge-graph embeddings of items, trained with pykeen on the ``kg`` table plus item attributes.

The graph is the dataset's ``kg`` triples (head, relation, tail; items appear by their ``item_id``) and,
for every categorical item column, ``(item_id, "has_<column>", "<column>:<value>")``. A model chosen by
name (TransE, TransH, RotatE, DistMult) is trained on all triples with pykeen's sLCWA training loop, and
the entity embeddings of the catalogue's items are written to one Parquet file (``features/store.py``).

The file is recomputed as a whole or not at all: its ``weights`` (``trained:<sha256>``) hash the
canonical triples (deduplicated, sorted) and the training settings, and a file whose weights and item
list match the current ones is reused untouched.

Every entity and relation vector of the model, with its label, is kept beside it in ``kg.safetensors``
(:class:`GraphRepresentations`). With it a run whose catalogue changed but whose triples did not
trains nothing (new items outside the graph get no vector), and a run whose triples changed, under the
same settings but ``epochs``, warm-starts: entities and relations seen before start from their previous
vectors, new ones from pykeen's initialisation, for ``warm_start_epochs`` epochs instead of ``epochs``.

We drive pykeen's model and training loop ourselves rather than through ``pykeen.pipeline.pipeline``:
``pipeline`` requires a testing set and always runs a rank-based evaluation on it, which we do not need
and which on the KGCN music graph (15,518 triples) takes minutes on a CPU against seconds of training.
The components and their defaults (margin ranking loss, Adam, sLCWA with uniform negative sampling)
are those ``pipeline`` would use.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from m6rec.io import atomic_path
from m6rec.log import quiet_third_party_loggers
from m6rec.progress import progress_enabled, step_log_level

logger = logging.getLogger("m6rec")

KG_LAYOUT_VERSION = "1"
NOT_IN_GRAPH = "not in the knowledge graph"
REPRESENTATIONS_METADATA_KEY = "m6rec_kg"
# With fewer of today's entities known from the previous run, a short warm schedule would leave most of
# the graph barely trained.
MIN_CARRIED_SHARE = 0.5


class KGConfig(KGSettings):
    """Knowledge-graph embedding settings (the ``embeddings.kg`` section, see :class:`m6rec.config.KGSettings`)
    plus where they run. RotatE's embeddings are complex, so its files hold ``2 * dimension`` values: real
    parts, then imaginary parts."""

    force_cpu: bool = False

    def training_settings(self) -> dict:
        """The settings that fix embeddings trained from scratch (not where they run, how triples were
        built, nor how long a warm start trains)."""
        return self.model_dump(exclude={"force_cpu", "attribute_columns", "warm_start_epochs"})

    def warm_start_identity(self) -> dict:
        """What previous representations must have been trained with to warm-start this model: the
        training settings but ``epochs``, the file layout and the pykeen version."""
        settings = {name: value for name, value in self.training_settings().items() if name != "epochs"}
        return {**settings, "layout": KG_LAYOUT_VERSION, "pykeen": version("pykeen")}


@dataclasses.dataclass(frozen=True)
class GraphRepresentations:
    """Every entity and relation vector of a trained model with its label, kept beside ``kg.parquet``
    (:func:`representations_path`) so that a later run can export or warm-start from them.

    ``entity_vectors`` and ``relation_vectors`` hold one float32 array per pykeen representation of the
    model (TransH has two per relation: translation and hyperplane normal), rows in label order, in
    pykeen's storage layout: ``[n, dimension]``, or ``[n, dimension, 2]`` (real, imaginary) for RotatE.
    ``metadata`` says what they were trained for (``identity``, ``weights``, ``triples_hash``) and how
    (``start``, ``epochs_trained``, ``final_loss``...).
    """

    entities: list[str]
    relations: list[str]
    entity_vectors: list[np.ndarray]
    relation_vectors: list[np.ndarray]
    metadata: dict

    def item_vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``[len(item_ids), width]`` vectors of the first entity representation (complex ones as real
        parts then imaginary parts; zeros for items that are no entity) and the mask of entities."""
        stored = self.entity_vectors[0]
        flat = np.concatenate([stored[..., 0], stored[..., 1]], axis=-1) if stored.ndim == 3 else stored
        row_of = {label: row for row, label in enumerate(self.entities)}
        positions = np.array([row_of.get(item_id, -1) for item_id in item_ids], dtype=np.int64)
        valid = positions >= 0
        vectors = np.zeros((len(positions), flat.shape[1]), dtype=np.float32)
        vectors[valid] = flat[positions[valid]]
        return vectors, valid

    def save(self, path: Path) -> None:
        """Write a safetensors file atomically: tensors ``entity.<i>`` and ``relation.<i>``, labels and
        metadata as JSON in its header (no pickle)."""
        from safetensors.numpy import save_file

        tensors = {
            **{f"entity.{i}": np.ascontiguousarray(v) for i, v in enumerate(self.entity_vectors)},
            **{f"relation.{i}": np.ascontiguousarray(v) for i, v in enumerate(self.relation_vectors)},
        }
        header = {
            REPRESENTATIONS_METADATA_KEY: json.dumps(self.metadata, sort_keys=True),
            "entities": json.dumps(self.entities),
            "relations": json.dumps(self.relations),
        }
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=header)

    @classmethod
    def load(cls, path: Path) -> GraphRepresentations:
        """Read a file written by :meth:`save`; ``ValueError`` when it is not one or its shapes do not
        match its labels."""
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            header = handle.metadata() or {}
            if REPRESENTATIONS_METADATA_KEY not in header:
                raise ValueError(f"{path}: not an m6rec KG representations file")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        entities, relations = json.loads(header["entities"]), json.loads(header["relations"])
        return cls(
            entities=entities,
            relations=relations,
            entity_vectors=_numbered(tensors, "entity", len(entities), path),
            relation_vectors=_numbered(tensors, "relation", len(relations), path),
            metadata=json.loads(header[REPRESENTATIONS_METADATA_KEY]),
        )


def representations_path(embeddings_path: Path) -> Path:
    """Where the entity and relation vectors behind ``embeddings_path`` (``kg.parquet``) are kept."""
    return Path(embeddings_path).with_suffix(".safetensors")


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
    the same settings, it is reused (``computed == 0``); when only the items changed, they are exported
    from the representations beside it (:func:`representations_path`) without training. When the triples
    changed, the model warm-starts from those representations if they were trained with the same settings
    but ``epochs``, else trains from scratch. The same seed (and the same previous representations) gives
    the same vectors on the CPU.
    """
    graph = _canonical_triples(triples)
    item_ids = [str(item_id) for item_id in item_ids]
    weights = f"trained:{_graph_hash(graph, config)}"
    reused = _reusable(out_path, weights, item_ids)
    if reused is not None:
        logger.info("kg: reused %s: same triples, items and settings, nothing trained", Path(out_path).name)
        return reused

    path = representations_path(out_path)
    previous, missing = _read_previous(path)
    if previous is not None and previous.metadata.get("weights") == weights:
        logger.info(
            "kg: same triples and settings, %d items exported from %s, nothing trained",
            len(item_ids),
            path.name,
        )
        return _write_item_embeddings(previous, item_ids, out_path, config, computed=0)

    triples_hash = _triples_hash(graph)
    start_from, cold_reason = _warm_start_source(previous, missing, graph, triples_hash, config)
    trained = _train(graph, config, start_from)
    trained = dataclasses.replace(
        trained,
        metadata={
            **trained.metadata,
            "identity": config.warm_start_identity(),
            "weights": weights,
            "triples_hash": triples_hash,
            "warm_started_from": None if start_from is None else start_from.metadata["weights"],
        },
    )
    _log_training(
        trained, config, start_from=path.name if start_from is not None else None, cold_reason=cold_reason
    )
    trained.save(path)
    return _write_item_embeddings(trained, item_ids, out_path, config, computed=len(item_ids))


def _write_item_embeddings(
    representations: GraphRepresentations,
    item_ids: list[str],
    out_path: Path,
    config: KGConfig,
    computed: int,
) -> IncrementalReport:
    """Write the item rows of ``representations`` to ``out_path``; ``computed`` items count as new."""
    vectors, valid = representations.item_vectors(item_ids)
    training = representations.metadata
    identity = {"encoder": f"pykeen:{config.model}", "weights": training["weights"]}
    write_embeddings(
        out_path,
        ITEM_ID,
        item_ids,
        vectors,
        valid=valid,
        content_hashes=[content_hash(identity, item_id) for item_id in item_ids],
        problems=[None if ok else NOT_IN_GRAPH for ok in valid],
        metadata={
            **identity,
            "modality": "kg",
            "pretrained": False,
            **config.training_settings(),
            "n_triples": training["n_triples"],
            "n_entities": len(representations.entities),
            "n_relations": len(representations.relations),
            "start": training["start"],
            "epochs_trained": training["epochs_trained"],
            "carried_entities": training["carried_entities"],
            "warm_started_from": training["warm_started_from"],
            "final_loss": training["final_loss"],
            "device": training["device"],
            "pykeen_version": version("pykeen"),
        },
    )
    failed = [item_id for item_id, ok in zip(item_ids, valid, strict=True) if not ok]
    return IncrementalReport(
        "kg",
        total=len(item_ids),
        computed=computed,
        reused=len(item_ids) - computed,
        failed=len(failed),
        problems=[{"modality": "kg", ITEM_ID: item_id, "problem": NOT_IN_GRAPH} for item_id in failed],
    )


def _read_previous(path: Path) -> tuple[GraphRepresentations | None, str]:
    """The representations saved at ``path``, or ``None`` and why there are none to use."""
    if not path.exists():
        return None, "no previous representations"
    try:
        return GraphRepresentations.load(path), ""
    except Exception as error:  # an unreadable previous file is ignored, never trusted
        return None, f"previous {path.name} unreadable ({error})"


def _warm_start_source(
    previous: GraphRepresentations | None,
    missing: str,
    graph: np.ndarray,
    triples_hash: str,
    config: KGConfig,
) -> tuple[GraphRepresentations | None, str]:
    """``previous`` when the model can warm-start from it, else ``None`` and why it trains from scratch."""
    if config.warm_start_epoch_count() == 0:
        return None, "warm start off (warm_start_epochs: 0)"
    if previous is None:
        return None, missing
    before, now = previous.metadata.get("identity", {}), config.warm_start_identity()
    changed = [f"{key} {before.get(key)!r} -> {now[key]!r}" for key in now if before.get(key) != now[key]]
    if changed:
        return None, f"previous representations ignored, trained with other settings: {', '.join(changed)}"
    if previous.metadata.get("triples_hash") == triples_hash:
        return None, "same triples, other epochs"
    entities = np.unique(graph[:, [0, 2]])
    carried = int(np.isin(entities, np.asarray(previous.entities, dtype=str)).sum())
    if carried < MIN_CARRIED_SHARE * len(entities):
        return None, f"only {carried} of {len(entities)} entities known from the previous run"
    return previous, ""


def _log_training(
    trained: GraphRepresentations, config: KGConfig, start_from: str | None, cold_reason: str
) -> None:
    training = trained.metadata
    if start_from is not None:
        start = (
            f"warm start from {start_from}: {training['carried_entities']} of {len(trained.entities)} "
            f"entities and {training['carried_relations']} of {len(trained.relations)} relations carried over"
        )
    else:
        start = f"from scratch: {cold_reason}"
    final_loss = training["final_loss"]
    logger.info(
        "kg: %s, %d epochs in %.1f s on %s, final loss %s (%d triples, %d entities), %s",
        config.model,
        training["epochs_trained"],
        training["seconds"],
        training["device"],
        "n/a" if final_loss is None else f"{final_loss:.4f}",
        training["n_triples"],
        len(trained.entities),
        start,
    )


def _train(
    graph: np.ndarray, config: KGConfig, start_from: GraphRepresentations | None = None
) -> GraphRepresentations:
    """Train ``config.model`` on ``graph``: ``config.epochs`` epochs from pykeen's initialisation, or,
    given ``start_from``, ``config.warm_start_epoch_count()`` epochs with the entities and relations it
    knows starting from its vectors. The metadata says how (no identity, weights nor triples hash)."""
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
    carried_entities, carried_relations = (
        (0, 0) if start_from is None else _carry_over(model, factory, start_from)
    )
    epochs = config.epochs if start_from is None else config.warm_start_epoch_count()
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
            num_epochs=epochs,
            batch_size=config.batch_size,
            drop_last=False,
            use_tqdm=progress_enabled(),
            use_tqdm_batch=False,
            tqdm_kwargs={"desc": f"training KG embeddings ({config.model})", "leave": False},
            pin_memory=device.is_cuda,
            callbacks=_epoch_lines(config.model, epochs),
        )
    seconds = time.perf_counter() - started
    return GraphRepresentations(
        entities=_labels_in_id_order(factory.entity_to_id),
        relations=_labels_in_id_order(factory.relation_to_id),
        entity_vectors=[_stored_vectors(r) for r in model.entity_representations],
        relation_vectors=[_stored_vectors(r) for r in model.relation_representations],
        metadata={
            "start": "cold" if start_from is None else "warm",
            "epochs_trained": epochs,
            "carried_entities": carried_entities,
            "carried_relations": carried_relations,
            "final_loss": float(losses[-1]) if losses else None,
            "seconds": round(seconds, 3),
            "device": device.name,
            "n_triples": len(graph),
        },
    )


def _carry_over(model, factory, previous: GraphRepresentations) -> tuple[int, int]:
    """Re-initialise ``model``'s representations so that the entities and relations ``previous`` knows
    start from its vectors and the others keep the initialisation pykeen just gave them; returns how
    many entities and relations were carried over."""
    import torch

    carried = []
    for representations, label_to_id, labels, vectors in (
        (model.entity_representations, factory.entity_to_id, previous.entities, previous.entity_vectors),
        (
            model.relation_representations,
            factory.relation_to_id,
            previous.relations,
            previous.relation_vectors,
        ),
    ):
        row_before = {label: row for row, label in enumerate(labels)}
        shared = [(index, row_before[label]) for label, index in label_to_id.items() if label in row_before]
        now = torch.as_tensor([index for index, _ in shared], dtype=torch.long)
        before = np.array([row for _, row in shared], dtype=np.int64)
        for representation, previous_vectors in zip(representations, vectors, strict=True):
            with torch.no_grad():
                start = _storage_tensor(representation).clone()
                start[now.to(start.device)] = torch.from_numpy(previous_vectors[before]).to(start)
            representation.initializer = _pretrained_initializer(start)
            representation.reset_parameters()
        carried.append(len(shared))
    return carried[0], carried[1]


def _pretrained_initializer(tensor):
    """pykeen's ``PretrainedInitializer`` of ``tensor``, handing out a copy on every call.

    pykeen's own returns ``tensor`` itself, which then becomes the weight's storage; the training loop's
    reset runs torch's ``Embedding.reset_parameters`` first, which overwrites that storage (and so the
    pretrained values) in place with random ones (pykeen issue #640).
    """
    from pykeen.nn.init import PretrainedInitializer

    class CopyingPretrainedInitializer(PretrainedInitializer):
        def __call__(self, x):
            return super().__call__(x).clone()

    return CopyingPretrainedInitializer(tensor)


def _storage_tensor(representation):
    """A pykeen embedding's ``[n, dimension]`` tensor, complex ones as ``[n, dimension, 2]`` reals (the
    layout its initialisers see)."""
    import torch

    with torch.no_grad():
        values = representation(indices=None).detach()
    return torch.view_as_real(values) if values.is_complex() else values


def _stored_vectors(representation) -> np.ndarray:
    return _storage_tensor(representation).cpu().numpy().astype(np.float32, copy=False)


def _labels_in_id_order(label_to_id: dict[str, int]) -> list[str]:
    return [label for label, _ in sorted(label_to_id.items(), key=lambda pair: pair[1])]


def _numbered(tensors: dict[str, np.ndarray], kind: str, rows: int, path: Path) -> list[np.ndarray]:
    """The arrays ``<kind>.0``, ``<kind>.1``... of a representations file, each with ``rows`` rows."""
    arrays = []
    while f"{kind}.{len(arrays)}" in tensors:
        array = tensors[f"{kind}.{len(arrays)}"]
        if array.shape[0] != rows:
            raise ValueError(f"{path}: {kind}.{len(arrays)} has {array.shape[0]} rows for {rows} labels")
        arrays.append(array)
    if not arrays:
        raise ValueError(f"{path}: no {kind} vectors")
    return arrays


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
    _hash_triples(digest, graph)
    return digest.hexdigest()


def _triples_hash(graph: np.ndarray) -> str:
    digest = hashlib.sha256()
    _hash_triples(digest, graph)
    return digest.hexdigest()


def _hash_triples(digest, graph: np.ndarray) -> None:
    for head, relation, tail in graph:
        digest.update(f"{head}\t{relation}\t{tail}\n".encode())


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
