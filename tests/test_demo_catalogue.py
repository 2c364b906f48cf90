"""The demo catalogue generator: determinism, the dataset contract, media, and the planted preferences."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image
from scipy.stats import chi2_contingency

from m6rec.data import contract
from m6rec.demo_catalogue import (
    THEMES,
    WINDOW_SECONDS,
    WINDOW_START,
    DemoCatalogueSpec,
    generate_demo_catalogue,
)

SMALL = DemoCatalogueSpec(
    n_users=150,
    n_items=48,
    n_topics=4,
    interactions_per_user=(8, 16),
    n_cold_items=8,
    seed=3,
    image_size=32,
    audio_seconds=0.25,
    sample_rate=8000,
)
TINY = replace(
    SMALL, n_users=20, n_items=16, n_cold_items=4, interactions_per_user=(4, 6), audio_seconds=0.05
)


def file_digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_rows(folder: Path, stem: str) -> list[dict]:
    return pq.read_table(folder / f"{stem}.parquet").to_pylist()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return generate_demo_catalogue(tmp_path_factory.mktemp("demo") / "catalogue", SMALL)


@pytest.fixture(scope="module")
def category_of(catalogue) -> dict[str, str]:
    return {row["item_id"]: row["category"] for row in read_rows(catalogue, "items")}


@pytest.fixture(scope="module")
def training_majority(catalogue, category_of) -> dict[str, str]:
    """Each user's most frequent category in training, ties broken by name."""
    counts: dict[str, dict[str, int]] = {}
    for row in read_rows(catalogue, "interactions"):
        per_user = counts.setdefault(row["user_id"], {})
        category = category_of[row["item_id"]]
        per_user[category] = per_user.get(category, 0) + 1
    return {user: min(c, key=lambda k: (-c[k], k)) for user, c in counts.items()}


def test_same_spec_gives_identical_bytes(tmp_path, catalogue):
    again = generate_demo_catalogue(tmp_path / "again", SMALL)
    first, second = file_digests(catalogue), file_digests(again)
    assert len(first) == 5 + 2 * SMALL.n_items + 2
    assert first == second


def test_different_seeds_give_different_catalogues(tmp_path):
    one = generate_demo_catalogue(tmp_path / "one", TINY)
    other = generate_demo_catalogue(tmp_path / "other", replace(TINY, seed=TINY.seed + 1))
    first, second = file_digests(one), file_digests(other)
    for name in ("items.parquet", "interactions.parquet", "test.parquet", "images/item-0001.png"):
        assert first[name] != second[name], name


def test_regenerating_into_an_existing_folder_replaces_it_cleanly(tmp_path):
    fresh = generate_demo_catalogue(tmp_path / "fresh", TINY)
    reused = tmp_path / "reused"
    generate_demo_catalogue(reused, replace(TINY, n_items=24, n_cold_items=6, seed=11))
    (reused / "my-notes.txt").write_text("kept")

    generate_demo_catalogue(reused, TINY)

    digests = file_digests(reused)
    assert digests.pop("my-notes.txt") == hashlib.sha256(b"kept").hexdigest()
    assert digests == file_digests(fresh)


def test_out_dir_is_created_with_parents(tmp_path):
    out_dir = tmp_path / "a" / "b"
    assert generate_demo_catalogue(out_dir, TINY) == out_dir
    assert (out_dir / "items.parquet").is_file()


def test_tables_follow_the_dataset_contract(catalogue):
    for table in contract.ALL_TABLES:
        schema = pq.read_schema(catalogue / f"{table.stem}.parquet")
        assert set(table.required_columns) <= set(schema.names), table.stem
        for column in table.id_columns:
            assert schema.field(column).type == pa.string(), (table.stem, column)

    items = pq.read_schema(catalogue / "items.parquet")
    assert items.names == [
        "item_id",
        "title",
        "description",
        "category",
        "brand",
        "price",
        contract.IMAGE_PATH,
        contract.AUDIO_PATH,
    ]
    assert items.field("price").type == pa.float64()
    assert pq.read_schema(catalogue / "users.parquet").names == ["user_id", "age_group", "country"]
    for stem in ("interactions", "test"):
        schema = pq.read_schema(catalogue / f"{stem}.parquet")
        assert schema.names == ["user_id", "item_id", "rating", contract.TIMESTAMP]
        assert schema.field("rating").type == pa.int64()
        assert schema.field(contract.TIMESTAMP).type == pa.int64()


def test_ids_counts_and_values(catalogue):
    items, users = read_rows(catalogue, "items"), read_rows(catalogue, "users")
    assert [row["item_id"] for row in items] == [f"item-{i:04d}" for i in range(1, SMALL.n_items + 1)]
    assert [row["user_id"] for row in users] == [f"user-{u:04d}" for u in range(1, SMALL.n_users + 1)]
    assert {row["category"] for row in items} == {theme.name for theme in THEMES[: SMALL.n_topics]}
    assert all(row["price"] > 0 and row["title"] and row["description"] for row in items)

    interactions = read_rows(catalogue, "interactions") + read_rows(catalogue, "test")
    assert {row["rating"] for row in interactions} <= {1, 2, 3, 4, 5}
    assert all(WINDOW_START <= row["timestamp"] < WINDOW_START + WINDOW_SECONDS for row in interactions)
    low, high = SMALL.interactions_per_user
    per_user: dict[str, list[tuple[str, str]]] = {}
    for row in interactions:
        per_user.setdefault(row["user_id"], []).append((row["item_id"], row["timestamp"]))
    assert len(per_user) == SMALL.n_users
    for events in per_user.values():
        assert low <= len(events) <= high
        assert len({item for item, _ in events}) == len(events), "an item is repeated for one user"

    document = json.loads((catalogue / "catalogue.json").read_text())
    assert document["spec"]["seed"] == SMALL.seed
    assert document["counts"]["interactions"] == len(read_rows(catalogue, "interactions"))
    assert document["counts"]["test_interactions"] == len(read_rows(catalogue, "test"))
    readme = (catalogue / "README.md").read_text()
    assert "synthetic" in readme and f"seed {SMALL.seed}" in readme


def test_every_interaction_refers_to_a_known_user_and_item(catalogue):
    item_ids = {row["item_id"] for row in read_rows(catalogue, "items")}
    user_ids = {row["user_id"] for row in read_rows(catalogue, "users")}
    for stem in ("interactions", "test"):
        rows = read_rows(catalogue, stem)
        assert {row["item_id"] for row in rows} <= item_ids
        assert {row["user_id"] for row in rows} <= user_ids


def test_held_out_interactions_are_each_users_latest(catalogue):
    last_training: dict[str, int] = {}
    for row in read_rows(catalogue, "interactions"):
        last_training[row["user_id"]] = max(last_training.get(row["user_id"], 0), row["timestamp"])
    test = read_rows(catalogue, "test")
    assert {row["user_id"] for row in test} == set(last_training)
    assert all(row["timestamp"] > last_training[row["user_id"]] for row in test)
    total = len(test) + len(read_rows(catalogue, "interactions"))
    assert 0.15 < len(test) / total < 0.3


def test_cold_items_appear_only_in_test(catalogue):
    cold = set(json.loads((catalogue / "catalogue.json").read_text())["cold_item_ids"])
    assert len(cold) == SMALL.n_cold_items
    training_items = {row["item_id"] for row in read_rows(catalogue, "interactions")}
    test_items = {row["item_id"] for row in read_rows(catalogue, "test")}
    assert not cold & training_items
    assert len(cold & test_items) >= SMALL.n_cold_items // 2


def test_images_open_at_the_spec_size(catalogue):
    for row in read_rows(catalogue, "items"):
        assert not Path(row["image_path"]).is_absolute()
        with Image.open(catalogue / row["image_path"]) as image:
            assert image.format == "PNG"
            assert image.size == (SMALL.image_size, SMALL.image_size)
            assert image.mode == "RGB"


def test_audio_reads_back_at_the_spec_rate_and_length(catalogue):
    for row in read_rows(catalogue, "items"):
        assert not Path(row["audio_path"]).is_absolute()
        info = soundfile.info(catalogue / row["audio_path"])
        assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
        assert info.samplerate == SMALL.sample_rate
        assert info.frames == round(SMALL.audio_seconds * SMALL.sample_rate)


def test_images_differ_within_a_topic(catalogue):
    digests = {
        hashlib.sha256((catalogue / r["image_path"]).read_bytes()).digest()
        for r in read_rows(catalogue, "items")
    }
    assert len(digests) == SMALL.n_items


def test_image_hue_reveals_the_category(catalogue):
    hue_of = {theme.name: theme.hue for theme in THEMES[: SMALL.n_topics]}
    correct = 0
    items = read_rows(catalogue, "items")
    for row in items:
        with Image.open(catalogue / row["image_path"]) as image:
            hsv = np.asarray(image.convert("HSV")).reshape(-1, 3)
        vivid_hues = hsv[hsv[:, 1] > 128, 0]
        dominant = (np.argmax(np.bincount(vivid_hues // 8, minlength=32)) * 8 + 4) / 256
        distance = {name: min(abs(dominant - hue), 1 - abs(dominant - hue)) for name, hue in hue_of.items()}
        correct += min(distance, key=distance.get) == row["category"]
    assert correct / len(items) > 0.9


def test_audio_pitch_reveals_the_category(catalogue):
    pitch_of = {theme.name: theme.base_hz for theme in THEMES[: SMALL.n_topics]}
    correct = 0
    items = read_rows(catalogue, "items")
    for row in items:
        samples, rate = soundfile.read(catalogue / row["audio_path"])
        peak_hz = np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(np.abs(np.fft.rfft(samples)))]
        distance = {name: abs(math.log(peak_hz / hz)) for name, hz in pitch_of.items()}
        correct += min(distance, key=distance.get) == row["category"]
    assert correct / len(items) > 0.9


def test_titles_use_their_category_vocabulary(catalogue):
    nouns_of = {theme.name: {noun.title() for noun in theme.nouns} for theme in THEMES}
    for row in read_rows(catalogue, "items"):
        assert any(row["title"].endswith(noun) for noun in nouns_of[row["category"]]), row


def test_knowledge_graph_agrees_with_items(catalogue):
    items = {row["item_id"]: row for row in read_rows(catalogue, "items")}
    triples = {(r["head"], r["relation"], r["tail"]) for r in read_rows(catalogue, "kg")}
    for item_id, row in items.items():
        assert (item_id, "in_category", f"category:{row['category']}") in triples
        assert (item_id, "made_by", f"brand:{row['brand']}") in triples
        assert (f"brand:{row['brand']}", "specialises_in", f"category:{row['category']}") in triples
    similar = [(head, tail) for head, relation, tail in triples if relation == "similar_to"]
    assert similar
    assert all(items[head]["category"] == items[tail]["category"] and head != tail for head, tail in similar)


def test_held_out_items_follow_the_training_majority_category(catalogue, category_of, training_majority):
    """The planted signal: held-out items share the user's training-majority category far beyond chance.

    Chance is the catalogue share of that category; the margin is five binomial standard errors.
    """
    share = {c: list(category_of.values()).count(c) / len(category_of) for c in set(category_of.values())}
    test = read_rows(catalogue, "test")
    hits = [category_of[row["item_id"]] == training_majority[row["user_id"]] for row in test]
    observed = float(np.mean(hits))
    chance = float(np.mean([share[training_majority[row["user_id"]]] for row in test]))
    standard_error = math.sqrt(chance * (1 - chance) / len(test))
    assert observed > chance + 5 * standard_error
    assert observed > 1.5 * chance


def test_ratings_are_higher_inside_the_users_favourite_category(catalogue, category_of, training_majority):
    inside, outside = [], []
    for row in read_rows(catalogue, "interactions"):
        favourite = category_of[row["item_id"]] == training_majority[row["user_id"]]
        (inside if favourite else outside).append(row["rating"])
    assert np.mean(inside) > np.mean(outside) + 0.5


def test_user_age_group_is_associated_with_taste(catalogue, training_majority):
    users = read_rows(catalogue, "users")
    age_groups = sorted({u["age_group"] for u in users})
    categories = sorted(set(training_majority.values()))
    table = np.zeros((len(age_groups), len(categories)))
    for user in users:
        table[age_groups.index(user["age_group"]), categories.index(training_majority[user["user_id"]])] += 1
    assert chi2_contingency(table).pvalue < 1e-4


@pytest.mark.parametrize(
    "changes",
    [
        {"n_topics": len(THEMES) + 1},
        {"n_cold_items": 48},
        {"interactions_per_user": (1, 5)},
        {"interactions_per_user": (10, 45)},
        {"image_size": 8},
    ],
)
def test_impossible_specs_are_rejected(tmp_path, changes):
    with pytest.raises(ValueError, match="DemoCatalogueSpec"):
        generate_demo_catalogue(tmp_path / "never", replace(SMALL, **changes))
    assert not (tmp_path / "never").exists()
