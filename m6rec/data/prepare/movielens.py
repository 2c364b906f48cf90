"""MovieLens 100K: ratings, movies with their genres and year, users' demographics, a genre/decade graph.

Raw files (https://files.grouplens.org/datasets/movielens/ml-100k.zip): ``u.data`` (user, item, rating,
unix time; tab-separated), ``u.item`` (pipe-separated Latin-1: id, title, release date, video release date,
IMDb URL, one 0/1 flag per genre of ``u.genre``), ``u.user`` (id, age, gender, occupation, zip code).
"""

from __future__ import annotations

import re

import polars as pl
import pyarrow as pa

from m6rec.data.prepare.sources import RawFiles, int_column

NAME = "movielens-100k"
URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ANCHOR = "u.data"
LICENCE = (
    "MovieLens 100K, GroupLens Research (University of Minnesota): research use only, cite F. M. Harper and "
    "J. A. Konstan (2015), no redistribution without permission. Obtain it yourself from "
    "https://grouplens.org/datasets/movielens/100k/."
)

HAS_GENRE = "has_genre"
RELEASED_IN_DECADE = "released_in_decade"

# Upper age bound (exclusive) of each group; the MovieLens 1M age groups.
AGE_GROUPS = ((18, "under-18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55"))
OLDEST_AGE_GROUP = "56+"
OTHER_ZIP_REGION = "other"

_ITEM_LEADING_FIELDS = 5
_TITLE_YEAR = re.compile(r"\((\d{4})\)")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}


def read_tables(raw: RawFiles) -> dict[str, pa.Table]:
    """Parse the raw files into the contract tables ``interactions``, ``items``, ``users`` and ``kg``."""
    genres = read_genres(raw)
    items = read_items(raw, genres)
    return {
        "interactions": read_interactions(raw),
        "items": items,
        "users": read_users(raw),
        "kg": genre_decade_triples(items),
    }


def read_interactions(raw: RawFiles) -> pa.Table:
    """``u.data`` as ``user_id``, ``item_id``, ``rating`` (1-5) and ``timestamp`` (unix seconds)."""
    ratings = raw.read_frame("u.data", ["user_id", "item_id", "rating", "timestamp"])
    return pl.DataFrame(
        {
            "user_id": ratings["user_id"].str.strip_chars(),
            "item_id": ratings["item_id"].str.strip_chars(),
            "rating": int_column(ratings, "rating", file="u.data"),
            "timestamp": int_column(ratings, "timestamp", file="u.data"),
        }
    ).to_arrow()


def read_genres(raw: RawFiles) -> list[str]:
    """The genre names of ``u.genre`` in the order of ``u.item``'s genre flags."""
    genres = raw.read_frame("u.genre", ["genre", "position"], delimiter="|")
    return (
        genres.with_columns(int_column(genres, "position", file="u.genre"))
        .sort("position")["genre"]
        .to_list()
    )


def read_items(raw: RawFiles, genres: list[str]) -> pa.Table:
    """``u.item`` as ``item_id``, ``title`` (year removed), ``year``, ``genres`` and ``release_date``.

    ``year`` comes from the title's "(1995)", else from the release date; null when neither has one.
    ``genres`` joins the flagged genre names with "|"; ``release_date`` is ISO (``1995-01-01``) or null.
    """
    rows = raw.read_rows("u.item", n_fields=_ITEM_LEADING_FIELDS + len(genres), delimiter="|")
    titles, years, release_dates = [], [], []
    for row in rows:
        title, title_year = split_title_year(row[1])
        release_date = iso_release_date(row[2])
        titles.append(title)
        release_dates.append(release_date)
        years.append(title_year if title_year is not None else _year_of(release_date))
    return pa.table(
        {
            "item_id": pa.array([row[0].strip() for row in rows], pa.string()),
            "title": pa.array(titles, pa.string()),
            "year": pa.array(years, pa.int64()),
            "genres": pa.array(
                ["|".join(flagged(genres, row[_ITEM_LEADING_FIELDS:])) for row in rows], pa.string()
            ),
            "release_date": pa.array(release_dates, pa.string()),
        }
    )


def read_users(raw: RawFiles) -> pa.Table:
    """``u.user`` as ``user_id``, ``age``, ``age_group``, ``gender``, ``occupation`` and ``zip_region``.

    ``zip_region`` is the first digit of a US zip code (its postal region) and "other" for the rest.
    """
    users = raw.read_frame("u.user", ["user_id", "age", "gender", "occupation", "zip"], delimiter="|")
    ages = int_column(users, "age", file="u.user")
    return pa.table(
        {
            "user_id": pa.array(users["user_id"].str.strip_chars().to_list(), pa.string()),
            "age": pa.array(ages.to_list(), pa.int64()),
            "age_group": pa.array([age_group(age) for age in ages], pa.string()),
            "gender": pa.array(users["gender"].to_list(), pa.string()),
            "occupation": pa.array(users["occupation"].to_list(), pa.string()),
            "zip_region": pa.array([zip_region(code) for code in users["zip"]], pa.string()),
        }
    )


def genre_decade_triples(items: pa.Table) -> pa.Table:
    """Knowledge graph of ``items``: (item, has_genre, genre:<name>) and (item, released_in_decade,
    decade:<1990s>) triples, the latter only for items with a year."""
    heads, relations, tails = [], [], []
    for item in items.select(["item_id", "year", "genres"]).to_pylist():
        for genre in filter(None, item["genres"].split("|")):
            heads.append(item["item_id"])
            relations.append(HAS_GENRE)
            tails.append(f"genre:{genre}")
        if item["year"] is not None:
            heads.append(item["item_id"])
            relations.append(RELEASED_IN_DECADE)
            tails.append(f"decade:{item['year'] // 10 * 10}s")
    return pa.table(
        {
            "head": pa.array(heads, pa.string()),
            "relation": pa.array(relations, pa.string()),
            "tail": pa.array(tails, pa.string()),
        }
    )


def flagged(genres: list[str], flags: tuple[str, ...]) -> list[str]:
    """The genres whose 0/1 flag is "1"."""
    return [genre for genre, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]


def split_title_year(raw_title: str) -> tuple[str, int | None]:
    """ "Toy Story (1995)" → ("Toy Story", 1995); the last "(yyyy)" is the year, other text is kept."""
    matches = list(_TITLE_YEAR.finditer(raw_title))
    if not matches:
        return raw_title.strip(), None
    year = matches[-1]
    title = f"{raw_title[: year.start()].strip()} {raw_title[year.end() :].strip()}".strip()
    return title, int(year.group(1))


def iso_release_date(raw_date: str) -> str | None:
    """ "01-Jan-1995" → "1995-01-01"; None for an empty or unreadable date."""
    parts = raw_date.strip().split("-")
    if len(parts) != 3 or parts[1] not in _MONTHS or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    return f"{int(parts[2]):04d}-{_MONTHS[parts[1]]:02d}-{int(parts[0]):02d}"


def age_group(age: int) -> str:
    """The MovieLens 1M age group of ``age``: "under-18", "18-24", "25-34", ..., "56+"."""
    for upper, group in AGE_GROUPS:
        if age < upper:
            return group
    return OLDEST_AGE_GROUP


def zip_region(zip_code: str) -> str:
    """First digit of a five-digit US zip code; "other" for foreign or malformed codes."""
    zip_code = zip_code.strip()
    if len(zip_code) == 5 and zip_code.isdigit():
        return zip_code[0]
    return OTHER_ZIP_REGION


def _year_of(iso_date: str | None) -> int | None:
    return int(iso_date[:4]) if iso_date else None
