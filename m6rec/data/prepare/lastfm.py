"""Last.FM HetRec 2011: play counts, artists with their top tags, users' friend counts, a tag graph
optionally joined with KGCN's Freebase graph of the artists.

Raw files (https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip), tab-separated with a
header line: ``user_artists.dat`` (userID, artistID, weight = play count), ``artists.dat`` (id, name, url,
pictureURL), ``tags.dat`` (tagID, tagValue), ``user_taggedartists.dat`` (userID, artistID, tagID, day, month,
year) and ``user_friends.dat`` (userID, friendID). KGCN files (hwwang55/KGCN ``data/music``): ``kg.txt``
(head entity, relation, tail entity) and ``item_index2entity_id.txt`` (artistID, entity).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from m6rec.data.prepare.sources import RawFiles, int_column

NAME = "lastfm-hetrec"
URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
ANCHOR = "user_artists.dat"
KGCN_ANCHOR = "kg.txt"
LICENCE = (
    "Last.FM HetRec 2011 (hetrec2011-lastfm-2k), GroupLens / Last.fm: non-commercial research use, cite "
    "Cantador, Brusilovsky and Kuflik (2011), no redistribution. Obtain it yourself from "
    "https://grouplens.org/datasets/hetrec-2011/. KGCN's graph (hwwang55/KGCN) is MIT-licensed."
)

TAGGED_WITH = "tagged_with"
TOP_TAGS = 10


def read_tables(raw: RawFiles, kgcn: RawFiles | None = None) -> dict[str, pa.Table]:
    """Parse the raw files into ``interactions``, ``items``, ``kg`` and, when ``user_friends.dat`` is
    present, ``users``. ``kgcn``, when given, adds KGCN's triples to ``kg``.

    Items are every artist that was listened to or tagged, in artist-ID order; tagged artists missing
    from ``artists.dat`` get an empty name.
    """
    interactions = read_interactions(raw)
    top_tags = read_top_tags(raw)
    item_ids = _in_id_order(pl.concat([interactions["item_id"], top_tags["item_id"]]).unique())
    items = (
        item_ids.to_frame()
        .join(read_artist_names(raw), on="item_id", how="left", maintain_order="left")
        .join(
            top_tags.group_by("item_id", maintain_order=True).agg(tags=pl.col("tag").str.join(", ")),
            on="item_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(pl.col("name", "tags").fill_null(""))
    )
    tables = {"interactions": interactions.to_arrow(), "items": items.to_arrow()}
    if raw.has("user_friends.dat"):
        tables["users"] = read_users(raw, interactions["user_id"].unique(maintain_order=True)).to_arrow()
    triples = [tag_triples(top_tags, item_ids)]
    if kgcn is not None:
        triples.append(kgcn_triples(kgcn))
    tables["kg"] = pl.concat(triples).unique(maintain_order=True).to_arrow()
    return tables


def read_interactions(raw: RawFiles) -> pl.DataFrame:
    """``user_artists.dat`` as ``user_id``, ``item_id`` (artist ID) and ``play_count``."""
    plays = raw.read_frame("user_artists.dat", ["user_id", "item_id", "weight"], header=True)
    return pl.DataFrame(
        {
            "user_id": plays["user_id"].str.strip_chars(),
            "item_id": plays["item_id"].str.strip_chars(),
            "play_count": int_column(plays, "weight", file="user_artists.dat"),
        }
    )


def read_artist_names(raw: RawFiles) -> pl.DataFrame:
    """``item_id`` and ``name`` of every artist in ``artists.dat``."""
    artists = raw.read_frame("artists.dat", ["item_id", "name", "url", "picture_url"], header=True)
    return artists.select(pl.col("item_id", "name").str.strip_chars()).unique("item_id", keep="first")


def read_top_tags(raw: RawFiles, top: int = TOP_TAGS) -> pl.DataFrame:
    """Each artist's ``top`` tags from ``user_taggedartists.dat``: rows of ``item_id``, ``tag`` (lowercased)
    and ``assignments``, by artist, most assigned first, ties in alphabetical order."""
    tags = raw.read_frame("tags.dat", ["tag_id", "tag"], header=True).select(
        pl.col("tag_id").str.strip_chars(), pl.col("tag").str.strip_chars().str.to_lowercase()
    )
    assignments = raw.read_frame(
        "user_taggedartists.dat", ["user_id", "item_id", "tag_id", "day", "month", "year"], header=True
    ).select(pl.col("item_id", "tag_id").str.strip_chars())
    return (
        assignments.join(tags.filter(pl.col("tag") != ""), on="tag_id")
        .group_by("item_id", "tag")
        .agg(assignments=pl.len().cast(pl.Int64))
        .sort(["item_id", "assignments", "tag"], descending=[False, True, False])
        .group_by("item_id", maintain_order=True)
        .head(top)
    )


def read_users(raw: RawFiles, user_ids: pl.Series) -> pl.DataFrame:
    """``user_ids`` with ``n_friends``, their number of distinct friends in ``user_friends.dat``."""
    friends = raw.read_frame("user_friends.dat", ["user_id", "friend_id"], header=True)
    friend_counts = (
        friends.select(pl.col("user_id", "friend_id").str.strip_chars())
        .group_by("user_id")
        .agg(n_friends=pl.col("friend_id").n_unique().cast(pl.Int64))
    )
    return (
        user_ids.to_frame("user_id")
        .join(friend_counts, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("n_friends").fill_null(0))
    )


def tag_triples(top_tags: pl.DataFrame, item_ids: pl.Series) -> pl.DataFrame:
    """(artist, tagged_with, tag:<value>) for each of an artist's top tags, artists in ``item_ids`` order."""
    return (
        item_ids.to_frame()
        .join(top_tags, on="item_id", maintain_order="left_right")
        .select(
            head=pl.col("item_id"),
            relation=pl.lit(TAGGED_WITH),
            tail=pl.lit("tag:") + pl.col("tag"),
        )
    )


def kgcn_triples(kgcn: RawFiles) -> pl.DataFrame:
    """KGCN's ``kg.txt`` with each entity that ``item_index2entity_id.txt`` maps to an artist written as
    that artist's ID and every other entity as ``entity:<id>``; relations are kept as written.

    Should an entity map to several artists, the first mapping in the file wins.
    """
    artist_of_entity = (
        kgcn.read_frame("item_index2entity_id.txt", ["item_id", "entity"])
        .select(pl.col("entity", "item_id").str.strip_chars())
        .unique("entity", keep="first", maintain_order=True)
    )
    graph = kgcn.read_frame("kg.txt", ["head", "relation", "tail"]).select(pl.all().str.strip_chars())
    for end in ("head", "tail"):
        graph = (
            graph.join(artist_of_entity.rename({"entity": end}), on=end, how="left", maintain_order="left")
            .with_columns(pl.coalesce("item_id", pl.lit("entity:") + pl.col(end)).alias(end))
            .drop("item_id")
        )
    return graph.select("head", "relation", "tail")


def _in_id_order(ids: pl.Series) -> pl.Series:
    """Numeric IDs in numeric order, then any others in string order."""
    return ids.to_frame("item_id").sort(
        pl.col("item_id").cast(pl.Int64, strict=False), "item_id", nulls_last=True
    )["item_id"]
