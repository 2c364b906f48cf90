"""One door to publish through: every writer keeps ``keep_generations``, one night is one generation (so
``m6rec rollback`` means yesterday), and one fingerprint says whether the data changed: a changed image
alone re-embeds its item and changes the lists, while a night with nothing changed reads no media file."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from conftest import TINY_FLOW_RUN_CONFIG  # noqa: E402
from test_image_encoder import TINY_VIT  # noqa: E402

from m6rec.config import RunConfig  # noqa: E402
from m6rec.data import contained  # noqa: E402
from m6rec.data.dataset import load_dataset  # noqa: E402
from m6rec.generations import Generations  # noqa: E402
from pipelines.batch import batch_recommend  # noqa: E402
from pipelines.embeddings import compute_embeddings  # noqa: E402
from pipelines.report import publish_report  # noqa: E402
from pipelines.run import run_pipeline  # noqa: E402
from pipelines.run_folder import STAGE_POLICIES  # noqa: E402


def _generations(out: Path) -> list[str]:
    return [generation.name for generation in Generations(out).complete()]


def _tiny_config(**changes) -> RunConfig:
    return RunConfig.model_validate({**yaml.safe_load(TINY_FLOW_RUN_CONFIG), **changes})


def test_every_writer_keeps_the_configured_number_of_generations(tiny_flow_inputs, tmp_path):
    source, _ = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    out = tmp_path / "run"
    config = _tiny_config(keep_generations=5)
    writers = [
        ("training", lambda: run_pipeline(catalogue, out, config)),
        ("training", lambda: run_pipeline(catalogue, out, config.replace(seed=7))),
        ("report", lambda: publish_report(out, keep=config.keep_generations)),
        ("report", lambda: publish_report(out, keep=config.keep_generations)),
        (
            "embeddings",
            lambda: compute_embeddings(
                load_dataset(catalogue),
                out,
                config.embeddings.replace(kg={"epochs": 3, "dimension": 8}),
                keep=5,
            ),
        ),
    ]
    for count, (kind, write) in enumerate(writers, start=1):
        write()
        assert len(_generations(out)) == count, kind
    interactions = catalogue / "interactions.parquet"
    pd.read_parquet(interactions).iloc[:-3].to_parquet(interactions, index=False)
    batch_recommend(catalogue, out, config=config)  # new data: a batch generation of the model's folder
    report_again = publish_report(out, keep=config.keep_generations)
    kinds = [generation.info["kind"] for generation in Generations(out).complete()]
    assert len(kinds) == 5, "the batch and the report prune to keep_generations, not to the default 3"
    assert kinds[-2:] == ["batch", "report"] and report_again.is_file()
    assert set(STAGE_POLICIES) >= {"training", "embeddings", "batch", "lists", "report", "night"}


def _image_vectors(generation: Path) -> dict[str, np.ndarray]:
    from m6rec.embeddings.store import read_embeddings

    table = read_embeddings(generation / "features" / "image.parquet")
    return dict(zip(map(str, table.keys), table.vectors, strict=True))


def _write_picture(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def image_night_inputs(tiny_flow_inputs, tmp_path):
    """A copy of the tiny catalogue and a configuration whose only content modality is images, from a
    seeded two-layer CLIP checkpoint saved here (no hub): the content source and the ranker (over it and
    popularity) read them."""
    import open_clip
    import torch

    source, _ = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    architecture = tmp_path / "m6rec-publishing-tiny-vit.json"
    architecture.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = open_clip.create_model("m6rec-publishing-tiny-vit")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    settings = yaml.safe_load(TINY_FLOW_RUN_CONFIG)
    settings["embeddings"] = {
        "modalities": ["image"],
        "image": {"model": str(architecture), "checkpoint": str(checkpoint), "num_workers": 0},
        "force_cpu": True,
    }
    settings["baselines"] = {"models": ["popularity"], "search_spaces": {"popularity": {}}}
    settings["ranker"]["extra_sources"] = ["content"]
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    return catalogue, config_path


@pytest.fixture
def media_reads(monkeypatch) -> Counter:
    """How many times each media file was read to hash it (by resolved path)."""
    reads: Counter = Counter()
    streamed = contained.streamed_fingerprint

    def counted(path, limits):
        reads[str(path)] += 1
        return streamed(path, limits)

    monkeypatch.setattr(contained, "streamed_fingerprint", counted)
    return reads


def test_one_night_is_one_generation_and_a_changed_image_alone_changes_the_lists(
    prefect_test_api, image_night_inputs, tmp_path, media_reads, m6rec_main
):
    from flows.nightly import nightly

    catalogue, config_path = image_night_inputs
    out = tmp_path / "run"
    arguments = (str(catalogue), str(out), str(config_path))
    tables = {"interactions.parquet", "items.parquet", "users.parquet", "kg.parquet", "test.parquet"}
    media = {
        str(path.resolve()) for path in catalogue.rglob("*") if path.is_file() and path.name not in tables
    }
    assert any("/images/" in path for path in media)

    first = nightly(*arguments)
    assert first["selected_model"] == "ranker", "the premise: the lists are ranked on image features"
    assert first["retrained"] and len(_generations(out)) == 1, "embeddings, training, lists, report: one"
    assert set(media_reads) <= media and max(media_reads.values()) == 1, "each media file read once at most"
    first_lists = (out / "lists" / "recommendations.parquet").read_bytes()

    media_reads.clear()
    quiet = nightly(*arguments)
    assert not quiet["retrained"] and sum(media_reads.values()) == 0, "nothing changed: no picture read"
    assert len(_generations(out)) == 1, "a night that changed nothing adds no generation"

    items = pd.read_parquet(catalogue / "items.parquet")
    changed = (catalogue / items["image_path"].dropna().iloc[0]).resolve()
    _write_picture(changed, seed=99)
    media_reads.clear()
    third = nightly(*arguments)
    assert not third["retrained"]
    assert media_reads == Counter({str(changed): 1}), "only the changed picture is read, once"
    assert len(_generations(out)) == 2, "one more night, one more generation"
    batch = json.loads((out / "lists" / "batch.json").read_text())
    assert "reused_lists" not in batch and "the item embeddings changed" in batch["plan"]
    before, after = (_image_vectors(out / "generations" / name) for name in _generations(out))
    moved = sorted(key for key in before if not np.allclose(before[key], after[key], atol=1e-6))
    assert moved == [
        str(items.loc[items["image_path"] == items["image_path"].dropna().iloc[0], "item_id"].iloc[0])
    ]
    assert (out / "lists" / "recommendations.parquet").read_bytes() != first_lists

    assert m6rec_main("rollback", out)[0] == 0
    assert (out / "lists" / "recommendations.parquet").read_bytes() == first_lists, "rollback is yesterday"
