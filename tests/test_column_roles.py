"""Column roles: one inference rule, declarations in ``columns.yaml`` and the run configuration, the consumers
that follow them, and ``m6rec validate``.

The catalogue below has one column of every kind, so the right role of each is known by construction; it is
written both as Parquet and as CSV (where every column is read as text) and must resolve the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from m6rec.data.columns import COLUMN_ROLES, ColumnRoles, resolve_columns
from m6rec.data.contract import ITEM_ID, USER_ID
from m6rec.data.dataset import load_dataset
from m6rec.data.interactions import IdIndex, InteractionMatrix
from m6rec.errors import ConfigError

DAY = 86_400
JAN_1_2024 = 1_704_067_200
ROLES_LINE = "roles: " + ", ".join(COLUMN_ROLES)

ITEMS = pd.DataFrame(
    {
        ITEM_ID: [f"i{n}" for n in range(1, 9)],
        "title": [f"T{n}" for n in range(1, 9)],
        "description": [f"A long free-text description of catalogue item number {n}." for n in range(1, 9)],
        "genres": ["rock|pop", "pop", "jazz", "rock", "pop|jazz", "jazz", "rock", "pop"],
        "brand": ["acme", "acme", "zen", "zen", "acme", "zen", "acme", "zen"],
        "sku": [f"A{n}" for n in range(1, 9)],
        "price": [1.5, 2.0, 3.25, 1.5, 2.0, 9.99, 4.0, 5.0],
        "year": [1999, 2001, 1999, 2001, 2010, 2010, 1999, 2001],
        "in_stock": [True, False, True, True, False, True, False, True],
        "notes": pd.Series([None] * 8, dtype=object),
        "image_path": [f"img/{n}.png" for n in range(1, 9)],
        "audio_path": [f"audio/{n}.wav" for n in range(1, 9)],
    }
)
USERS = pd.DataFrame(
    {
        USER_ID: [f"u{n}" for n in range(1, 7)],
        "gender": ["f", "m", "f", "m", "f", "m"],
        "age": [20, 30, 20, 30, 40, 40],
        "country": ["fr", "de", "fr", "de", "fr", "de"],
    }
)
INTERACTIONS = pd.DataFrame(
    [
        ("u1", "i1", 5, JAN_1_2024),
        ("u1", "i2", 4, JAN_1_2024 + DAY),
        ("u2", "i2", 3, JAN_1_2024 + 2 * DAY),
        ("u2", "i3", 5, JAN_1_2024 + 3 * DAY),
        ("u3", "i4", 2, JAN_1_2024 + 4 * DAY),
        ("u3", "i5", 4, JAN_1_2024 + 5 * DAY),
        ("u4", "i6", 5, JAN_1_2024 + 6 * DAY),
        ("u4", "i6", 4, JAN_1_2024 + 7 * DAY),
    ],
    columns=[USER_ID, ITEM_ID, "rating", "timestamp"],
)
# i7 and i8 are cold (never in the interactions); u5 has a test row but no history, u6 only a users row.
TEST = pd.DataFrame(
    [
        ("u5", "i7", 5, JAN_1_2024 + 9 * DAY),
        ("u1", "i8", 4, JAN_1_2024 + 10 * DAY),
        ("u2", "i1", 3, JAN_1_2024 + 11 * DAY),
    ],
    columns=[USER_ID, ITEM_ID, "rating", "timestamp"],
)
KG = pd.DataFrame({"head": ["i1", "i2", "i7"], "relation": ["similar_to"] * 3, "tail": ["i2", "i3", "i1"]})

INFERRED_ITEMS = {
    "text": ["title", "description"],
    "categorical": ["genres", "brand", "in_stock"],
    "numeric": ["price", "year"],
    "image_path": ["image_path"],
    "audio_path": ["audio_path"],
    "ignored": ["sku", "notes"],  # a code per row (A1 ... A8): no words, no shared category
    "declared": [],
}
INFERRED_USERS = {
    "text": [],
    "categorical": ["gender", "country"],
    "numeric": ["age"],
    "image_path": [],
    "audio_path": [],
    "ignored": [],
    "declared": [],
}


def write_catalogue(directory: Path, suffix: str = ".parquet", columns_yaml: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"items": ITEMS, "users": USERS, "interactions": INTERACTIONS, "test": TEST, "kg": KG}
    for stem, frame in tables.items():
        path = directory / f"{stem}{suffix}"
        frame.to_parquet(path, index=False) if suffix == ".parquet" else frame.to_csv(path, index=False)
    if columns_yaml is not None:
        (directory / "columns.yaml").write_text(columns_yaml, encoding="utf-8")
    return directory


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_every_role_is_inferred_the_same_from_parquet_and_csv(tmp_path, suffix):
    dataset = load_dataset(write_catalogue(tmp_path, suffix))
    assert dataset.item_columns.to_dict() == INFERRED_ITEMS
    assert dataset.user_columns.to_dict() == INFERRED_USERS
    assert dataset.item_columns.role(ITEM_ID) is None


def test_inference_rule_edges():
    table = pd.DataFrame(
        {
            ITEM_ID: ["1", "2", "3", "4"],
            "name": ["Same", "Same", "Same", "Same"],
            "tags": ["calm, piano", "calm", "loud, piano", "loud"],
            "code": ["x1", "x2", "x3", "x3"],
            "kind": ["a", "b", "a", None],
            "lists": [["a"], ["b"], [], None],
            "empty": ["", " ", None, ""],
            "numbers_as_text": ["1", "2.5", None, "-3"],
            "category": pd.Categorical(["a", "b", "a", "b"]),
        }
    )
    roles = resolve_columns(table, ITEM_ID).roles
    assert roles == {
        "name": "text",  # free text by name, whatever its values
        "tags": "categorical",  # 6 values once split on ", ", 3 distinct
        "code": "text",  # 3 distinct of 4: more than half
        "kind": "categorical",
        "lists": "text",
        "empty": "ignored",
        "numbers_as_text": "numeric",
        "category": "categorical",
    }


def test_declared_roles_override_inference(tmp_path):
    columns_yaml = "items:\n  sku: ignored\n  brand: text\n  year: categorical\nusers:\n  age: categorical\n"
    dataset = load_dataset(write_catalogue(tmp_path, columns_yaml=columns_yaml))
    assert dataset.item_columns.to_dict() == {
        **INFERRED_ITEMS,
        "text": ["title", "description", "brand"],
        "categorical": ["genres", "year", "in_stock"],
        "numeric": ["price"],
        "ignored": ["sku", "notes"],
        "declared": ["brand", "sku", "year"],
    }
    assert dataset.user_columns.categorical == ["gender", "age", "country"]
    assert dataset.user_columns.declared == ("age",)


def test_the_configuration_overrides_the_dataset_file_column_by_column(tmp_path):
    directory = write_catalogue(tmp_path, columns_yaml="items:\n  brand: text\n  sku: ignored\n")
    configured = ColumnRoles(items={"brand": "categorical"}, users={"country": "ignored"})
    dataset = load_dataset(directory, columns=configured)
    assert dataset.item_columns.role("brand") == "categorical"
    assert dataset.item_columns.role("sku") == "ignored"
    assert dataset.item_columns.declared == ("brand", "sku")
    assert dataset.user_columns.ignored == ["country"]
    with pytest.raises(ConfigError, match=r"^columns\.items\.colour: no such column in items\.parquet"):
        load_dataset(directory, columns=ColumnRoles(items={"colour": "text"}))


def test_column_roles_is_a_strict_configuration_section():
    with pytest.raises(ValueError, match="colums"):
        ColumnRoles.model_validate({"colums": {}})
    with pytest.raises(ValueError, match="items.title"):
        ColumnRoles.model_validate({"items": {"title": "free text"}})


ITEM_COLUMNS = "title, description, genres, brand, sku, price, year, in_stock, notes, image_path, audio_path"


@pytest.mark.parametrize(
    ("columns_yaml", "problem"),
    [
        ("items:\n  genres: categoric\n", f"items.genres: unknown role 'categoric'; {ROLES_LINE}"),
        (
            "items:\n  colour: text\n",
            f"items.colour: no such column in items.parquet (columns: {ITEM_COLUMNS})",
        ),
        ("item:\n  title: text\n", "unknown key 'item'; keys: items, users"),
        ("items:\n  item_id: text\n", "items.item_id: item_id is the ID column and takes no role"),
        ("items: [title]\n", "items: expected a mapping of column names to roles"),
        ("- items\n", "expected a mapping with keys items and/or users"),
        (
            "items:\n  sku: image_path\n",
            "items: columns sku, image_path all have role image_path; keep it on one of them and declare the "
            "others (for instance ignored)",
        ),
    ],
)
def test_a_bad_declaration_is_one_line_naming_the_file_and_key(
    tmp_path, monkeypatch, capsys, columns_yaml, problem, m6rec_main
):
    directory = write_catalogue(tmp_path, columns_yaml=columns_yaml)
    code, out, err = m6rec_main("validate", directory)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: {directory / 'columns.yaml'}: {problem}"]


def test_roles_for_a_missing_table_and_broken_yaml_are_reported(tmp_path, monkeypatch, capsys, m6rec_main):
    directory = write_catalogue(tmp_path, columns_yaml="users:\n  age: numeric\n")
    (directory / "users.parquet").unlink()
    code, _, err = m6rec_main("validate", directory)
    assert code == 2
    assert err.splitlines() == [
        f"error: {directory / 'columns.yaml'}: users.age: declared, but the dataset has no users table"
    ]
    (directory / "columns.yaml").write_text("items: {title: text\n", encoding="utf-8")
    code, _, err = m6rec_main("validate", directory)
    assert code == 2
    assert (
        err.startswith(f"error: {directory / 'columns.yaml'}: not valid YAML: ")
        and len(err.splitlines()) == 1
    )


def test_the_default_text_follows_the_roles(tmp_path):
    from features.text import render_item_texts

    plain = load_dataset(write_catalogue(tmp_path / "plain"))
    assert render_item_texts(plain.items, None, plain.item_columns)[0] == (
        f"title: T1\ndescription: {ITEMS.description[0]}\ngenres: rock|pop\nbrand: acme"
    )
    declared = load_dataset(
        write_catalogue(tmp_path / "declared", columns_yaml="items:\n  description: ignored\n  sku: text\n")
    )
    assert render_item_texts(declared.items, None, declared.item_columns)[0] == (
        "title: T1\ngenres: rock|pop\nbrand: acme\nsku: A1"
    )
    assert render_item_texts(declared.items, "{title} {description}", declared.item_columns)[0] == (
        f"T1 {ITEMS.description[0]}"
    ), "a template names its columns itself, whatever their role"


def test_kg_ranker_and_two_tower_attributes_follow_the_roles(tmp_path):
    from features.kg import build_kg_triples
    from features.two_tower.data import _attribute_vocabularies
    from ranker.features import RankerContext

    def attributes(dataset):
        train = InteractionMatrix.from_frame(
            dataset.interactions,
            IdIndex.from_values(dataset.users[USER_ID]),
            IdIndex.from_values(dataset.items[ITEM_ID]),
        )
        context = RankerContext(
            train,
            items=dataset.items,
            users=dataset.users,
            item_columns=dataset.item_columns,
            user_columns=dataset.user_columns,
        )
        return (
            set(build_kg_triples(None, dataset.items, item_columns=dataset.item_columns)["relation"]),
            [name for name, *_ in context.categorical_attributes],
            sorted(_attribute_vocabularies(dataset.users, dataset.user_columns)),
        )

    kg, ranker, two_tower = attributes(load_dataset(write_catalogue(tmp_path / "plain")))
    assert kg == {"has_genres", "has_brand", "has_in_stock"}
    assert ranker == ["user_gender", "user_country", "item_genres", "item_brand", "item_in_stock"]
    assert two_tower == ["age", "country", "gender"]  # age: whole numbers with few values

    columns_yaml = "items:\n  brand: ignored\n  year: categorical\nusers:\n  country: ignored\n"
    kg, ranker, two_tower = attributes(
        load_dataset(write_catalogue(tmp_path / "declared", columns_yaml=columns_yaml))
    )
    assert kg == {"has_genres", "has_year", "has_in_stock"}
    assert ranker == ["user_gender", "item_genres", "item_year", "item_in_stock"]
    assert two_tower == ["age", "gender"]


def test_media_encoders_read_the_column_declared_for_their_role(tmp_path):
    from pipelines.item_embeddings import _encoder_items, _has_modality

    directory = write_catalogue(tmp_path, columns_yaml="items:\n  sku: image_path\n  image_path: ignored\n")
    dataset = load_dataset(directory)
    assert dataset.item_columns.image_path == ["sku"]
    assert _encoder_items(dataset, "image")["image_path"].tolist() == ITEMS.sku.tolist()
    (directory / "columns.yaml").write_text("items:\n  audio_path: ignored\n", encoding="utf-8")
    dataset = load_dataset(directory)
    assert _has_modality(dataset, "image") and not _has_modality(dataset, "audio")
    assert "audio_path" not in _encoder_items(dataset, "audio").columns


def test_validate_prints_a_readable_summary(tmp_path, monkeypatch, capsys, m6rec_main):
    directory = write_catalogue(tmp_path, ".csv", columns_yaml="items:\n  sku: ignored\n")
    with (directory / "interactions.csv").open("a", encoding="utf-8") as file:
        file.write(f"u4,i1,five,{JAN_1_2024}\n")
    code, out, err = m6rec_main("validate", directory, "--skip-invalid-rows")
    assert code == 0, err
    assert out.splitlines() == [
        f"dataset {directory}",
        "rows read / kept:",
        "  interactions          9 /         7",
        "  test                  3 /         3",
        "  items                 8 /         8",
        "  users                 6 /         6",
        "  kg                    3 /         3",
        "skipped rows: 1",
        "  interactions: invalid row: 1",
        f"  {directory / 'interactions.csv'}: line 10: rating 'five' is not a number",
        "merged duplicate interactions: 1",
        "weight: column 'rating', read as a number; an empty value weighs 1.0; every row is a positive "
        "(min_rating keeps only the values at or above it)",
        "timestamps (interactions): 2024-01-01 00:00:00 UTC .. 2024-01-08 00:00:00 UTC",
        "timestamps (test): 2024-01-10 00:00:00 UTC .. 2024-01-12 00:00:00 UTC",
        "items columns (role, declared or inferred):",
        "  text         title, description",
        "  categorical  genres, brand, in_stock",
        "  numeric      price, year",
        "  image_path   image_path",
        "  audio_path   audio_path",
        "  ignored      sku (declared), notes",
        "users columns (role, declared or inferred):",
        "  categorical  gender, country",
        "  numeric      age",
        "cold items in test (absent from interactions): 2",
        "users without history: 2",
        "kg triples: 3",
    ]


def test_validate_json_holds_the_report_and_the_new_fields(tmp_path, monkeypatch, capsys, m6rec_main):
    directory = write_catalogue(tmp_path, columns_yaml="items:\n  sku: ignored\n")
    code, out, err = m6rec_main("validate", directory, "--json")
    assert code == 0, err
    summary = json.loads(out)
    report = load_dataset(directory).report.to_dict()
    assert {key: summary[key] for key in report} == report
    assert summary["rows_kept"]["interactions"] == 7 and summary["merged_duplicate_interactions"] == 1
    assert summary["weight_column"] == "rating"
    assert summary["has_timestamps"] is True
    assert summary["time_range"]["interactions"]["first"] == JAN_1_2024
    assert summary["time_range"]["test"]["last_utc"] == "2024-01-12 00:00:00 UTC"
    assert summary["columns"]["items"] == {
        **INFERRED_ITEMS,
        "text": ["title", "description"],
        "ignored": ["sku", "notes"],
        "declared": ["sku"],
    }
    assert summary["columns"]["users"] == INFERRED_USERS
    assert (summary["cold_items_in_test"], summary["users_without_history"], summary["kg_triples"]) == (
        2,
        2,
        3,
    )
