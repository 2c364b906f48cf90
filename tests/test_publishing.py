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

from conftest import TINY_FLOW_RUN_CONFIG, save_tiny_clip, tiny_catalogue_spec  # noqa: E402

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
    source, _ = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    architecture, checkpoint = save_tiny_clip(tmp_path, "m6rec-publishing-tiny-vit", seed=5)
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


def test_a_failed_run_on_one_dataset_is_not_resumed_by_a_run_on_another(tmp_path, monkeypatch, caplog):
    import logging

    import pipelines.run
    from m6rec.demo_catalogue import generate_demo_catalogue
    from m6rec.embeddings.store import read_embeddings

    first = generate_demo_catalogue(tmp_path / "a", tiny_catalogue_spec(1))
    second = generate_demo_catalogue(tmp_path / "b", tiny_catalogue_spec(2))
    for catalogue, prefix in ((first, "a-"), (second, "b-")):
        items = pd.read_parquet(catalogue / "items.parquet")
        for table in ("interactions", "items", "test", "kg"):
            frame = pd.read_parquet(catalogue / f"{table}.parquet")
            for column in ("item_id", "head", "tail"):
                if column in frame:
                    frame[column] = frame[column].map(lambda item, prefix=prefix: f"{prefix}{item}")
            frame.to_parquet(catalogue / f"{table}.parquet", index=False)
        assert len(items)
    out = tmp_path / "run"
    config = _tiny_config()

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(pipelines.run, "write_lists", full_disk)
        with pytest.raises(OSError, match="No space"):
            run_pipeline(first, out, config)
    unfinished = [path for path in (out / "generations").iterdir() if path.is_dir()]
    assert len(unfinished) == 1 and (unfinished[0] / "features" / "kg.parquet").is_file(), (
        "A's files are there"
    )

    with caplog.at_level(logging.WARNING, logger="m6rec"):
        run_pipeline(second, out, config)
    assert any("had another dataset or configuration" in record.getMessage() for record in caplog.records)
    keys = {str(key) for key in read_embeddings(out / "features" / "kg.parquet").keys}
    assert keys and all(key.startswith("b-") for key in keys), "nothing of A is published"
    lists = pd.read_parquet(out / "recommendations.parquet")
    assert lists["item_id"].str.startswith("b-").all()

    with monkeypatch.context() as patched:  # the same dataset again: what the killed run did is resumed
        patched.setattr(pipelines.run, "write_lists", full_disk)
        with pytest.raises(OSError):
            run_pipeline(second, out, config.replace(seed=3))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="m6rec"):
        run_pipeline(second, out, config.replace(seed=3))
    assert any("resuming the run that did not finish" in record.getMessage() for record in caplog.records)


def test_m6rec_batch_and_the_batch_flow_write_byte_identical_lists(
    prefect_test_api, tiny_flow_inputs, tmp_path, m6rec_main
):
    from flows.batch_recommend import batch_recommend as batch_flow

    source, config_path = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    by_command, by_flow = tmp_path / "command", tmp_path / "flow"
    run_pipeline(catalogue, by_command, RunConfig.from_yaml(config_path))
    shutil.copytree(by_command, by_flow, symlinks=True)
    interactions = catalogue / "interactions.parquet"
    pd.read_parquet(interactions).iloc[:-40].to_parquet(interactions, index=False)  # tonight's data

    code, printed, _ = m6rec_main("batch", catalogue, "--model", by_command, "--config", config_path)
    assert code == 0 and "users (" in printed
    batch_flow(str(catalogue), str(by_flow), str(config_path))

    made = [(folder / "lists" / "recommendations.parquet").read_bytes() for folder in (by_command, by_flow)]
    assert made[0] == made[1]
    summary = json.loads((by_command / "lists" / "batch.json").read_text())
    assert summary["counts"]["users_scored"] > 0 and "reused_lists" not in summary


def test_recommend_after_a_batch_serves_the_batch_lists(tiny_flow_inputs, tmp_path, m6rec_main):
    source, config_path = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    out = tmp_path / "run"
    run_pipeline(catalogue, out, RunConfig.from_yaml(config_path))
    trained = pd.read_parquet(out / "recommendations.parquet")
    user = str(trained["user_id"].iloc[0])
    bought = str(trained[(trained["user_id"] == user) & (trained["rank"] == 1)]["item_id"].iloc[0])
    interactions = pd.read_parquet(catalogue / "interactions.parquet")
    tonight = interactions.iloc[[0]].assign(user_id=user, item_id=bought)
    new_user = interactions.iloc[:3].assign(user_id="user-tonight")
    pd.concat([interactions, tonight, new_user], ignore_index=True).to_parquet(
        catalogue / "interactions.parquet", index=False
    )
    m6rec_main("batch", catalogue, "--model", out, "--config", config_path)

    code, printed, _ = m6rec_main("recommend", out, "--user", user)
    assert code == 0
    header = printed.splitlines()[0]
    assert "/lists/recommendations.parquet (generation 000002" in header, header
    listed = [line.split()[1] for line in printed.splitlines()[1:] if line.strip()[:1].isdigit()]
    assert listed and bought not in listed, "an item bought tonight is not recommended"
    code, printed, _ = m6rec_main("recommend", out, "--user", "user-tonight")
    assert code == 0 and "because:" in printed, "a user of tonight's data is known"


def test_held_out_test_rows_are_not_new_interactions_for_the_batch(tiny_flow_inputs, tmp_path, caplog):
    import logging

    source, config_path = tiny_flow_inputs
    catalogue = shutil.copytree(source, tmp_path / "catalogue")
    (catalogue / "test.parquet").unlink()
    out = tmp_path / "run"
    run_pipeline(catalogue, out, RunConfig.from_yaml(config_path).replace(split="random:0.25"))
    interactions = catalogue / "interactions.parquet"
    frame = pd.read_parquet(interactions)
    pd.concat([frame, frame.iloc[:3].assign(user_id="user-tonight")]).to_parquet(interactions, index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m6rec"):
        batch_recommend(catalogue, out, config=RunConfig.from_yaml(config_path))
    summary = json.loads((out / "lists" / "batch.json").read_text())
    assert summary["sources_mode"] == "fold-in", summary["plan"]
    assert not [record for record in caplog.records if "new since training" in record.getMessage()]
    assert not [record for record in caplog.records if "steps aside" in record.getMessage()]


def test_every_user_gets_top_k_items_and_the_provenance_columns_when_one_source_serves(
    tiny_flow_inputs, tmp_path
):
    source, _ = tiny_flow_inputs
    config = RunConfig(
        top_k=10,
        baselines={"models": ["itemknn"], "search_spaces": {"itemknn": {"neighbours": [2]}}},
        embeddings={"modalities": []},
        ranker={"enabled": False},
    )
    result = run_pipeline(source, tmp_path / "run", config)
    lists = pd.read_parquet(result.recommendations_path)
    assert result.selected_model == "itemknn"
    assert lists.groupby("user_id").size().eq(10).all(), "topped up from the fallback"
    assert {"sources", "itemknn_rank", "popularity_rank"} <= set(lists.columns)
    topped = lists[lists["source"] == "popularity"]
    assert len(topped) and topped["itemknn_rank"].isna().all() and topped["popularity_rank"].notna().all()
    assert (
        lists.loc[lists["source"] == "itemknn", "itemknn_rank"]
        == lists.loc[lists["source"] == "itemknn", "rank"]
    ).all()
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["counts"]
    assert counts["users_topped_up"] > 0 and counts["lists_shorter_than_top_k"] == 0
    assert not lists.duplicated(["user_id", "item_id"]).any()
