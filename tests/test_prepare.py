"""Preparing MovieLens-100K and Last.FM HetRec from their raw distributions into dataset directories.

Real-data tests read ``../shared/data`` (skipped when absent); a small synthetic Last.FM distribution
checks the tag ranking, the KGCN entity mapping and the file quirks (CRLF, Latin-1, bare quotes) exactly.
"""

from __future__ import annotations

import json
import urllib.error
import zipfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m6rec.data.prepare import PREPARERS, DatasetSourceError, prepare_dataset
from m6rec.data.prepare.lastfm import URL as LASTFM_URL
from m6rec.data.prepare.movielens import URL as MOVIELENS_URL

SHARED_DATA = Path("../shared/data")
ML_100K_FILES = ("u.data", "u.item", "u.user", "u.genre")


@pytest.fixture(scope="module")
def shared_data() -> Path:
    if not (SHARED_DATA / "ml-100k").is_dir() or not (SHARED_DATA / "hetrec2011-lastfm-2k").is_dir():
        pytest.skip("real datasets not found in ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="module")
def movielens_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("movielens") / "dataset"
    prepare_dataset("movielens-100k", out_dir, source=shared_data / "ml-100k")
    return out_dir


@pytest.fixture(scope="module")
def lastfm_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("lastfm") / "dataset"
    prepare_dataset(
        "lastfm-hetrec", out_dir, source=shared_data / "hetrec2011-lastfm-2k", kgcn=shared_data / "kgcn-music"
    )
    return out_dir


@pytest.fixture(scope="module")
def movielens_zip(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared files zipped like the official ``ml-100k.zip``: inside an ``ml-100k/`` folder."""
    archive_path = tmp_path_factory.mktemp("zip") / "ml-100k.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for name in ML_100K_FILES:
            archive.write(shared_data / "ml-100k" / name, f"ml-100k/{name}")
    return archive_path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr("urllib.request.urlopen", refuse)


def _rows(dataset_dir: Path, stem: str) -> pl.DataFrame:
    return pl.read_parquet(dataset_dir / f"{stem}.parquet")


def _kg_relation(dataset_dir: Path, relation: str) -> pl.DataFrame:
    return _rows(dataset_dir, "kg").filter(pl.col("relation") == relation)


def test_movielens_has_the_published_counts(movielens_dir: Path) -> None:
    interactions = _rows(movielens_dir, "interactions")
    assert interactions.height == 100_000
    assert interactions["user_id"].n_unique() == 943
    assert interactions["item_id"].n_unique() == 1682
    assert _rows(movielens_dir, "items").height == 1682
    assert _rows(movielens_dir, "users").height == 943
    assert sorted(interactions["rating"].unique().to_list()) == [1, 2, 3, 4, 5]
    assert _kg_relation(movielens_dir, "has_genre")["tail"].n_unique() == 19


def test_movielens_graph_has_one_triple_per_genre_flag_and_one_decade_per_dated_movie(
    shared_data: Path, movielens_dir: Path
) -> None:
    flag_rows = [line.split(b"|")[5:] for line in (shared_data / "ml-100k/u.item").read_bytes().splitlines()]
    genre_flags = sum(flag.strip() == b"1" for flags in flag_rows for flag in flags)
    items = _rows(movielens_dir, "items")
    assert _kg_relation(movielens_dir, "has_genre").height == genre_flags
    assert _kg_relation(movielens_dir, "released_in_decade").height == items["year"].count()
    assert set(_rows(movielens_dir, "kg")["relation"]) == {"has_genre", "released_in_decade"}
    # Only the placeholder movie "unknown" has neither a year in its title nor a release date.
    assert items.filter(pl.col("year").is_null())["item_id"].to_list() == ["267"]


def test_movielens_known_rows(movielens_dir: Path) -> None:
    items = {row["item_id"]: row for row in _rows(movielens_dir, "items").to_dicts()}
    toy_story = items["1"]
    assert (toy_story["title"], toy_story["year"], toy_story["release_date"]) == (
        "Toy Story",
        1995,
        "1995-01-01",
    )
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert items["543"]["title"] == "Misérables, Les"  # Latin-1 in u.item
    assert items["1633"]["title"] == "Á köldum klaka (Cold Fever)"

    users = {row["user_id"]: row for row in _rows(movielens_dir, "users").to_dicts()}
    assert users["1"] == {
        "user_id": "1",
        "age": 24,
        "age_group": "18-24",
        "gender": "M",
        "occupation": "technician",
        "zip_region": "8",
    }
    assert users["2"]["age_group"] == "50-55"
    canadian = _rows(movielens_dir, "users").filter(pl.col("user_id") == "167")  # zip code L9G2B
    assert canadian["zip_region"].to_list() == ["other"]

    first_rating = _rows(movielens_dir, "interactions").row(0, named=True)
    assert first_rating == {"user_id": "196", "item_id": "242", "rating": 3, "timestamp": 881250949}
    toy_story_triples = _rows(movielens_dir, "kg").filter(pl.col("head") == "1")
    assert set(toy_story_triples["tail"]) == {
        "genre:Animation",
        "genre:Children's",
        "genre:Comedy",
        "decade:1990s",
    }


def test_movielens_from_the_official_zip_equals_the_folder(
    movielens_zip: Path, movielens_dir: Path, tmp_path: Path
) -> None:
    prepared = prepare_dataset("movielens-100k", tmp_path / "from-zip", source=movielens_zip)
    assert prepared.row_counts == {"interactions": 100_000, "items": 1682, "users": 943, "kg": 4574}
    for stem in ("interactions", "items", "users", "kg"):
        assert pq.read_table(tmp_path / "from-zip" / f"{stem}.parquet").equals(
            pq.read_table(movielens_dir / f"{stem}.parquet")
        )


def test_a_download_already_in_the_cache_is_used_offline(
    movielens_zip: Path, tmp_path: Path, offline: None
) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "ml-100k.zip").write_bytes(movielens_zip.read_bytes())
    prepared = prepare_dataset("movielens-100k", tmp_path / "out", cache_dir=cache_dir)
    assert prepared.row_counts["interactions"] == 100_000
    description = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert description["source"] == MOVIELENS_URL
    assert description["downloaded_to"].startswith(str(cache_dir / "ml-100k.zip"))


def test_a_failed_download_says_which_url_and_to_pass_source(tmp_path: Path, offline: None) -> None:
    with pytest.raises(DatasetSourceError) as raised:
        prepare_dataset("lastfm-hetrec", tmp_path / "out", cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert LASTFM_URL in message and "--source DIR_OR_ZIP" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


def test_a_missing_raw_file_is_named_with_the_folder_searched(shared_data: Path, tmp_path: Path) -> None:
    partial = tmp_path / "ml-100k"
    partial.mkdir()
    for name in ("u.data", "u.user", "u.genre"):
        (partial / name).symlink_to((shared_data / "ml-100k" / name).resolve())
    with pytest.raises(DatasetSourceError, match=r"'u\.item'.*ml-100k"):
        prepare_dataset("movielens-100k", tmp_path / "out", source=tmp_path)
    with pytest.raises(DatasetSourceError, match=f"'u.data' not found in {tmp_path / 'empty'}"):
        (tmp_path / "empty").mkdir()
        prepare_dataset("movielens-100k", tmp_path / "out", source=tmp_path / "empty")


def test_unknown_dataset_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="movielens-100k") as raised:
        prepare_dataset("movielens-1m", tmp_path)
    assert all(name in str(raised.value) for name in PREPARERS)
    with pytest.raises(ValueError, match="lastfm-hetrec only"):
        prepare_dataset("movielens-100k", tmp_path, kgcn=tmp_path)


def test_lastfm_has_the_published_counts(shared_data: Path, lastfm_dir: Path) -> None:
    interactions = _rows(lastfm_dir, "interactions")
    assert interactions.height == 92_834
    assert interactions["user_id"].n_unique() == 1892
    assert interactions["item_id"].n_unique() == 17_632
    assert "timestamp" not in interactions.columns
    users = _rows(lastfm_dir, "users")
    assert users.height == 1892
    assert users["n_friends"].sum() == 25_434  # user_friends.dat lists each friendship from both sides
    # 390 artists were tagged but are in neither artists.dat nor user_artists.dat: items with no name.
    items = _rows(lastfm_dir, "items")
    assert items.height == 17_632 + 390
    assert items.filter(pl.col("name") == "").height == 390
    assert items["tags"].str.split(", ").list.len().max() == 10


def test_lastfm_kgcn_triples_are_all_kept_with_artists_by_their_item_id(
    shared_data: Path, lastfm_dir: Path
) -> None:
    kg_lines = (shared_data / "kgcn-music/kg.txt").read_bytes().splitlines()
    kgcn = _rows(lastfm_dir, "kg").filter(pl.col("relation") != "tagged_with")
    # kg.txt has no blank or duplicate lines, so no triple is dropped.
    assert len(set(kg_lines)) == len(kg_lines) == 15_518
    assert kgcn.height == 15_518
    assert kgcn["relation"].n_unique() == 60
    artist_ids = set(_rows(lastfm_dir, "items")["item_id"])
    # Every head is a mapped artist; 56 tails are artists too (e.g. a band member who is an artist).
    assert set(kgcn["head"]) <= artist_ids
    assert kgcn["tail"].is_in(list(artist_ids)).sum() == 56
    assert kgcn.filter(~pl.col("tail").is_in(list(artist_ids)))["tail"].str.starts_with("entity:").all()
    assert kgcn.row(0) == ("8773", "music.artist.origin", "entity:3846")  # kg.txt line 1: 2086 → artist 8773


def test_lastfm_known_rows(lastfm_dir: Path) -> None:
    items = {row["item_id"]: row for row in _rows(lastfm_dir, "items").to_dicts()}
    assert items["51"]["name"] == "Duran Duran"
    assert items["89"]["name"] == "Lady Gaga"
    assert "new wave" in items["51"]["tags"].split(", ")
    tag_triples = _kg_relation(lastfm_dir, "tagged_with")
    assert tag_triples.filter((pl.col("head") == "51") & (pl.col("tail") == "tag:new wave")).height == 1
    assert "tag:tropicália" in set(tag_triples["tail"])  # Latin-1 in tags.dat
    assert _rows(lastfm_dir, "interactions").row(0) == ("2", "51", 13883)


@pytest.mark.parametrize("dataset", ["movielens_dir", "lastfm_dir"])
def test_outputs_have_string_ids_and_64_bit_numbers(dataset: str, request: pytest.FixtureRequest) -> None:
    dataset_dir = request.getfixturevalue(dataset)
    id_columns = {"user_id", "item_id", "head", "relation", "tail"}
    description = json.loads((dataset_dir / "dataset.json").read_text())
    assert "redistribution" in description["licence"]
    for stem, rows in description["rows"].items():
        table = pq.read_table(dataset_dir / f"{stem}.parquet")
        assert table.num_rows == rows
        for field in table.schema:
            assert field.type in (pa.string(), pa.int64(), pa.float64()), (stem, field)
            if field.name in id_columns:
                assert field.type == pa.string()
                assert pl.read_parquet(dataset_dir / f"{stem}.parquet").schema[field.name] == pl.String
    assert not list(dataset_dir.glob("*.tmp"))


def test_the_dataset_loader_accepts_the_output(lastfm_dir: Path) -> None:
    from m6rec.data.dataset import load_dataset

    loaded = load_dataset(lastfm_dir)
    assert loaded.report.to_dict()["skipped_total"] == 0
    assert loaded.weight_column == "play_count"


def _write_synthetic_lastfm(folder: Path) -> None:
    """Artist 1 has 12 tags: "Rock" 3 times, "tropicália" (Latin-1) twice, ten others once; artist 4 is
    tagged but absent from artists.dat; artist 3 is neither listened to nor tagged."""
    folder.mkdir(parents=True)
    (folder / "artists.dat").write_text(
        'id\tname\turl\tpictureURL\n1\tAlpha\tu1\tp1\n2\tBeta "The Band"\tu2\tp2\n3\tGamma\tu3\tp3\n'
    )
    (folder / "user_artists.dat").write_bytes(
        b"userID\tartistID\tweight\r\n10\t1\t500\r\n10\t2\t7\r\n11\t1\t3\r\n"
    )
    singles = ["jazz", "indie", "house", "grunge", "funk", "electro", "disco", "country", "blues", "ambient"]
    tag_values = ["Rock", "tropicália", "pop", *singles]
    tags = "".join(f"{tag_id}\t{value}\r\n" for tag_id, value in enumerate(tag_values, start=1))
    (folder / "tags.dat").write_bytes(("tagID\ttagValue\r\n" + tags).encode("latin-1"))
    assignments = [(10, 1, 1), (11, 1, 1), (12, 1, 1), (10, 1, 2), (11, 1, 2), (10, 4, 3)]
    assignments += [(10, 1, tag_id) for tag_id in range(4, 4 + len(singles))]
    (folder / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        + "".join(f"{user}\t{artist}\t{tag}\t1\t4\t2009\n" for user, artist, tag in assignments)
    )
    (folder / "user_friends.dat").write_bytes(b"userID\tfriendID\r\n10\t11\r\n11\t10\r\n10\t12\r\n12\t10\r\n")


def _write_synthetic_kgcn(folder: Path) -> None:
    """Entity 0 is artist 1 and entity 1 is artist 2; entity 5 is not an artist; one line is repeated."""
    folder.mkdir(parents=True)
    (folder / "item_index2entity_id.txt").write_bytes(b"1\t0\r\n2\t1\r\n")
    (folder / "kg.txt").write_bytes(
        b"0\tmusic.artist.genre\t5\r\n1\tmusic.group_member.member\t0\r\n0\tmusic.artist.genre\t5\r\n"
    )


def test_synthetic_lastfm_gives_the_exact_tables(tmp_path: Path) -> None:
    _write_synthetic_lastfm(tmp_path / "raw" / "hetrec2011-lastfm-2k")
    _write_synthetic_kgcn(tmp_path / "kgcn")
    out_dir = tmp_path / "out"
    prepared = prepare_dataset("lastfm-hetrec", out_dir, source=tmp_path / "raw", kgcn=tmp_path / "kgcn")

    top_tags_of_1 = ["rock", "tropicália", "ambient", "blues", "country", "disco", "electro", "funk"]
    top_tags_of_1 += ["grunge", "house"]
    assert _rows(out_dir, "items").to_dicts() == [
        {"item_id": "1", "name": "Alpha", "tags": ", ".join(top_tags_of_1)},
        {"item_id": "2", "name": 'Beta "The Band"', "tags": ""},
        {"item_id": "4", "name": "", "tags": "pop"},
    ]
    assert _rows(out_dir, "interactions").rows() == [("10", "1", 500), ("10", "2", 7), ("11", "1", 3)]
    assert _rows(out_dir, "users").rows() == [("10", 2), ("11", 1)]
    assert _rows(out_dir, "kg").rows() == [
        *(("1", "tagged_with", f"tag:{tag}") for tag in top_tags_of_1),
        ("4", "tagged_with", "tag:pop"),
        ("1", "music.artist.genre", "entity:5"),
        ("2", "music.group_member.member", "1"),
    ]
    assert prepared.row_counts == {"interactions": 3, "items": 3, "users": 2, "kg": 13}


def test_preparing_removes_contract_tables_of_an_earlier_dataset(tmp_path: Path) -> None:
    _write_synthetic_lastfm(tmp_path / "raw")
    (tmp_path / "raw" / "user_friends.dat").unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for stale in ("test.csv", "users.parquet", "interactions.csv"):
        (out_dir / stale).write_text("user_id,item_id\n1,2\n")
    prepared = prepare_dataset("lastfm-hetrec", out_dir, source=tmp_path / "raw")
    assert set(prepared.row_counts) == {"interactions", "items", "kg"}
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "dataset.json",
        "interactions.parquet",
        "items.parquet",
        "kg.parquet",
    ]


def test_a_malformed_line_is_reported_with_its_file(tmp_path: Path) -> None:
    _write_synthetic_lastfm(tmp_path / "raw")
    with (tmp_path / "raw" / "user_artists.dat").open("ab") as plays:
        plays.write(b"12\t3\r\n")
    with pytest.raises(DatasetSourceError, match=r"user_artists\.dat: .*Expected 3 columns, got 2"):
        prepare_dataset("lastfm-hetrec", tmp_path / "out", source=tmp_path / "raw")
    with (tmp_path / "raw" / "user_artists.dat").open("wb") as plays:
        plays.write(b"userID\tartistID\tweight\n12\t3\tmany\n")
    with pytest.raises(DatasetSourceError, match=r"user_artists\.dat: data row 1: weight 'many'"):
        prepare_dataset("lastfm-hetrec", tmp_path / "out", source=tmp_path / "raw")
