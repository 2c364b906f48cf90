"""Shared test fixtures. Keep each fixture's name specific to what it holds."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from log_state import restored_logging

from m6rec import cli
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.interactions import IdIndex, InteractionMatrix

if TYPE_CHECKING:
    from m6rec.config import RunConfig
    from pipelines.run import RunResult


@dataclass(frozen=True)
class CheckerboardInteractions:
    """Two user groups × two item groups; each user saw every item of its own group but one (``held_out``).

    ``held_out``, ``user_group`` and ``item_group`` are indexed by matrix row / column; ``frame`` holds the
    training pairs as raw string IDs.
    """

    frame: pd.DataFrame
    train: InteractionMatrix
    held_out: np.ndarray
    user_group: np.ndarray
    item_group: np.ndarray


@pytest.fixture(scope="session")
def checkerboard_interactions() -> CheckerboardInteractions:
    """A 40-user × 22-item checkerboard (groups of 24 + 16 users, 12 + 10 items) with shuffled IDs.

    The right answer for every user is the one in-group item it has not seen. The first group is larger,
    so its items are the most popular ones, and popularity gets exactly the first group's users right.
    """
    users_per_group, items_per_group = (24, 16), (12, 10)
    pairs, held_out_ids, user_group, user_ids = [], {}, {}, []
    first_item = 0
    for group, (n_users, n_items) in enumerate(zip(users_per_group, items_per_group, strict=True)):
        group_items = [f"item-{first_item + offset}" for offset in range(n_items)]
        for offset in range(n_users):
            user = f"user-{len(user_ids)}"
            user_ids.append(user)
            user_group[user] = group
            held_out_ids[user] = group_items[offset % n_items]
            pairs.extend((user, item) for item in group_items if item != held_out_ids[user])
        first_item += n_items
    item_group = {f"item-{item}": int(item >= items_per_group[0]) for item in range(first_item)}

    frame = pd.DataFrame(pairs, columns=[USER_ID, ITEM_ID])
    frame = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    train = InteractionMatrix.from_frame(
        frame, IdIndex.from_values(frame[USER_ID]), IdIndex.from_values(frame[ITEM_ID])
    )
    held_out = train.items.positions(np.array([held_out_ids[user] for user in train.users.ids], dtype=object))
    return CheckerboardInteractions(
        frame=frame,
        train=train,
        held_out=held_out,
        user_group=np.array([user_group[user] for user in train.users.ids]),
        item_group=np.array([item_group[item] for item in train.items.ids]),
    )


@pytest.fixture(scope="session")
def prefect_test_api(tmp_path_factory):
    """Flows in this session run against a temporary local Prefect API and database
    (``prefect_test_harness``); task results, the embedding cache among them, go to a temporary folder
    instead of ``~/.prefect``. The API's first start migrates a fresh database: slow on a busy machine."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}),
        prefect_test_harness(server_startup_timeout=300),
    ):
        yield


TINY_FLOW_RUN_CONFIG = """\
baselines:
  models: [popularity, ease]
  search_spaces: {popularity: {}, ease: {l2: [100.0]}}
embeddings:
  modalities: [kg]
  kg: {epochs: 5, dimension: 8}
ranker:
  training_folds: 1
  params: {n_estimators: 30, num_leaves: 7, min_child_samples: 20, learning_rate: 0.1, early_stopping_rounds: 10}
"""


def tiny_catalogue_spec(seed: int = 3):
    """The 60-user, 48-item demo catalogue (6 cold items, small pictures and clips) the flows' tests use."""
    from m6rec.demo_catalogue import DemoCatalogueSpec

    return DemoCatalogueSpec(
        n_users=60,
        n_items=48,
        n_cold_items=6,
        interactions_per_user=(8, 20),
        seed=seed,
        image_size=16,
        audio_seconds=0.25,
    )


def save_tiny_clip(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A seeded two-layer ViT CLIP (``test_image_encoder.TINY_VIT``) saved as an open_clip config file and a
    state-dict checkpoint in ``folder``: real open_clip loading, no hub. Returns (config, checkpoint)."""
    import json

    import open_clip
    import torch
    from test_image_encoder import TINY_VIT

    architecture = folder / f"{name}.json"
    architecture.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
    checkpoint = folder / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    return architecture, checkpoint


@pytest.fixture(scope="session")
def tiny_flow_inputs(tmp_path_factory):
    """(catalogue directory, run configuration YAML) on which every flow runs in seconds: the
    :func:`tiny_catalogue_spec` catalogue; KG embeddings only, two candidate sources and a small ranker.
    Read-only."""
    from m6rec.demo_catalogue import generate_demo_catalogue

    root = tmp_path_factory.mktemp("tiny-flow-inputs")
    catalogue = generate_demo_catalogue(root / "catalogue", tiny_catalogue_spec())
    config_path = root / "run.yaml"
    config_path.write_text(TINY_FLOW_RUN_CONFIG)
    return catalogue, config_path


def _trained_demo_run_config() -> RunConfig:
    from m6rec.config import EmbeddingConfig, RunConfig

    return RunConfig(
        embeddings=EmbeddingConfig(
            modalities=["text", "audio", "kg", "cf"],
            audio={"max_seconds": 1.0},
            kg={"epochs": 10, "dimension": 16},
            two_tower={"epochs": 3, "dimension": 32},
        )
    )


@dataclass(frozen=True)
class TrainedDemoRun:
    """A demo catalogue and one run of the main job on it: ``root/catalogue``, ``root/run`` and the
    run's :class:`~pipelines.run.RunResult` (whose ``out_dir`` is ``run_dir``)."""

    catalogue: Path
    run_dir: Path
    result: RunResult

    def config(self) -> RunConfig:
        """A fresh copy of the configuration the run was trained with; the caller may change it."""
        return _trained_demo_run_config()


@pytest.fixture(scope="session")
def trained_demo_run(tmp_path_factory) -> TrainedDemoRun:
    """The main job run once for the session, with the default baselines and ranker, on a 120-user,
    96-item demo catalogue (12 cold items) with text, audio, KG and collaborative embeddings. Read-only:
    a test that writes into the run folder (a report, a batch, which brings the item embeddings in
    ``features/`` up to date, another run) works on :func:`copy_trained_demo_run`."""
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue
    from pipelines.run import run_pipeline

    root = tmp_path_factory.mktemp("trained-demo-run")
    spec = DemoCatalogueSpec(n_users=120, n_items=96, n_cold_items=12, interactions_per_user=(12, 30), seed=3)
    catalogue = generate_demo_catalogue(root / "catalogue", spec)
    result = run_pipeline(catalogue, root / "run", _trained_demo_run_config())
    return TrainedDemoRun(catalogue, result.out_dir, result)


@pytest.fixture(scope="session")
def copy_trained_demo_run(trained_demo_run) -> Callable[[Path], TrainedDemoRun]:
    """``copy_trained_demo_run(root)`` copies the shared run's catalogue and run folder to
    ``root/catalogue`` and ``root/run`` and returns the copy, to change at will. The copied ``run.json``
    and ``result.summary`` still name the shared catalogue as the run's data."""

    def copy(root: Path) -> TrainedDemoRun:
        catalogue = shutil.copytree(trained_demo_run.catalogue, root / "catalogue")
        run_dir = shutil.copytree(trained_demo_run.run_dir, root / "run", symlinks=True)
        return TrainedDemoRun(
            catalogue, run_dir, dataclasses.replace(trained_demo_run.result, out_dir=run_dir)
        )

    return copy


@pytest.fixture
def m6rec_main(capsys):
    """Run the ``m6rec`` command line in-process (``m6rec.cli.main``, the console script's code path minus
    interpreter start-up): ``m6rec_main("validate", path)`` returns (exit code, stdout, stderr)."""

    def run(*args) -> tuple[int, str, str]:
        code = 0
        try:
            cli.main([str(arg) for arg in args])
        except SystemExit as exited:
            code = exited.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def restore_logging():
    """No test sees another test's log set-up, nor a handler bound to a capture that has been closed
    (:func:`log_state.restored_logging`)."""
    with restored_logging():
        yield


@pytest.fixture(scope="module")
def planted_graph() -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Two clusters of eight items; each item is tagged with its own cluster's four tags and genre:
    26 entities (16 items, 8 tags, 2 genres), 2 relations. Returns the triples, the items and each
    item's cluster (a or b)."""
    rows, items = [], []
    for cluster in ("a", "b"):
        for index in range(8):
            item = f"{cluster}-item-{index}"
            items.append(item)
            rows.extend((item, "tagged", f"tag:{cluster}{tag}") for tag in range(4))
            rows.append((item, "in_genre", f"genre:{cluster}"))
    cluster_of_item = np.array([item[0] for item in items])
    return pd.DataFrame(rows, columns=["head", "relation", "tail"]), items, cluster_of_item
