"""Synthetic dataset directories of any size, for scale benchmarks and tests, with planted structure.

``generate_synthetic_dataset(Path("/tmp/synth"), SyntheticSpec(users=1_000_000, items=100_000,
interactions=20_000_000))`` writes a dataset directory that follows the contract (``interactions``,
``items``, ``users`` and optionally ``test`` Parquet tables, a ``columns.yaml`` and a ``synth.json``).

The structure is known: every item and every user has one latent topic. Item popularity follows a Zipf law
over a random ranking of the items; user activity is lognormal. A user's interactions are drawn, without
repeating an item, mostly (``topic_affinity``) from its topic's items weighted by popularity and otherwise
from the whole catalogue weighted by popularity. Item titles and descriptions are built from a vocabulary
of made-up words per topic, so a content model can learn the topics from text; users' age groups lean
towards their topic. Users are generated in chunks written as Parquet row groups, so memory stays bounded
by the chunk size, and the same spec gives byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from m6rec.data import contract
from m6rec.data.columns import COLUMNS_FILE
from m6rec.demo_catalogue import AGE_GROUPS, COUNTRIES, WINDOW_START
from m6rec.errors import ConfigError
from m6rec.io import atomic_path
from m6rec.progress import progress

log = logging.getLogger("m6rec")

GENERATOR = "m6rec.data.synth"
GENERATOR_VERSION = "1.0"
SYNTH_JSON = "synth.json"

MAX_ITEMS_SHARE_PER_USER = 0.5
"""No user interacts with more than this share of the catalogue (at least one item)."""

_POPULAR_ROUNDS = 6  # draw rounds weighted by popularity before the top-up rounds
_UNIFORM_TOPIC_ROUNDS = 6  # then rounds uniform within the topic (or catalogue) until pure uniform
_OVERSAMPLE = 1.25
_AGE_TOPIC_SHARE = 0.5  # share of users whose age group follows their topic
_OWN_TOPIC_WORD_SHARE = 0.8  # share of description words from the item's own topic
_OWN_TOPIC_BRAND_SHARE = 0.9
_WORDS_PER_TOPIC = 24  # adjectives, nouns and features, eight of each
_BRANDS_PER_TOPIC = 4
_BRAND_SUFFIXES = ("Co", "Works", "Labs", "Studio", "Supply", "House")
_SYLLABLE_CONSONANTS = "bdfgklmnprstvz"
_SYLLABLE_VOWELS = "aeiou"
_VOCABULARY_SEED = 20240101  # the words of topic t do not depend on the spec's seed

_INTERACTION_SCHEMA = pa.schema(
    [
        pa.field(contract.USER_ID, pa.string()),
        pa.field(contract.ITEM_ID, pa.string()),
        pa.field("rating", pa.int64()),
        pa.field(contract.TIMESTAMP, pa.int64()),
    ]
)
_USER_SCHEMA = pa.schema(
    [
        pa.field(contract.USER_ID, pa.string()),
        pa.field("age_group", pa.string()),
        pa.field("country", pa.string()),
    ]
)
_COLUMN_ROLES = {
    "items": {"title": "text", "description": "text", "category": "categorical", "brand": "categorical"},
    "users": {"age_group": "categorical", "country": "categorical"},
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Size, seed and shape of a synthetic dataset.

    ``users``, ``items``: exact counts. ``interactions``: the exact number of distinct (user, item) pairs
    over ``interactions`` and ``test`` together; every user gets at least one and at most
    :data:`MAX_ITEMS_SHARE_PER_USER` of the catalogue. ``test_share``: each user's latest share of
    interactions (rounded half up, at least one left for training) goes to ``test.parquet``; 0 writes no
    test table. ``topics``: latent topics (at most ``items``; each has items and its own vocabulary).
    ``popularity_exponent``: Zipf exponent s of item popularity, p(rank r) ∝ r^-s (0: uniform).
    ``activity_sigma``: sigma of the lognormal user activity (0: every user about equally active).
    ``topic_affinity``: share of a user's draws taken from its own topic's items. ``window_start``,
    ``window_days``: unix seconds and length of the time window; each user is active in a random part of
    it. ``rows_per_chunk``: about how many interactions are generated and written at a time (memory).
    """

    users: int
    items: int
    interactions: int
    seed: int = 0
    test_share: float = 0.1
    topics: int = 20
    popularity_exponent: float = 1.0
    activity_sigma: float = 1.0
    topic_affinity: float = 0.7
    window_start: int = WINDOW_START
    window_days: int = 365
    rows_per_chunk: int = 1_000_000

    @property
    def max_items_per_user(self) -> int:
        """The most interactions one user may have."""
        return max(1, int(self.items * MAX_ITEMS_SHARE_PER_USER))

    @property
    def n_topics(self) -> int:
        """Topics actually used: ``topics``, or ``items`` when there are fewer items."""
        return min(self.topics, self.items)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot give a valid dataset."""
        checks = (
            (self.users >= 1, f"users must be at least 1 (got {self.users})"),
            (self.items >= 2, f"items must be at least 2 (got {self.items})"),
            (
                self.interactions >= self.users,
                f"interactions ({self.interactions}) must be at least users ({self.users}): "
                "every user gets at least one",
            ),
            (
                self.interactions <= self.users * self.max_items_per_user,
                f"interactions ({self.interactions}) must be at most users × "
                f"{MAX_ITEMS_SHARE_PER_USER:g} × items ({self.users * self.max_items_per_user}): "
                "a user sees at most that share of the catalogue",
            ),
            (0 <= self.test_share < 1, f"test_share must be in [0, 1) (got {self.test_share})"),
            (self.topics >= 1, f"topics must be at least 1 (got {self.topics})"),
            (
                self.popularity_exponent >= 0,
                f"popularity_exponent must be >= 0 (got {self.popularity_exponent})",
            ),
            (self.activity_sigma >= 0, f"activity_sigma must be >= 0 (got {self.activity_sigma})"),
            (0 <= self.topic_affinity <= 1, f"topic_affinity must be in [0, 1] (got {self.topic_affinity})"),
            (self.window_days >= 1, f"window_days must be at least 1 (got {self.window_days})"),
            (self.rows_per_chunk >= 1, f"rows_per_chunk must be at least 1 (got {self.rows_per_chunk})"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"synthetic dataset: {message}")


@dataclass(frozen=True)
class _Seeds:
    """Independent random streams of one spec, so that each part can be recomputed alone."""

    catalogue: np.random.SeedSequence
    text: np.random.SeedSequence
    user_topics: np.random.SeedSequence
    activity: np.random.SeedSequence
    chunks: np.random.SeedSequence

    @classmethod
    def of(cls, spec: SyntheticSpec) -> _Seeds:
        return cls(*np.random.SeedSequence(spec.seed).spawn(5))


@dataclass(frozen=True)
class _Catalogue:
    """Items' topics and popularity, laid out for inverse-CDF draws per topic and over all items."""

    topic: np.ndarray  # (items,) topic of each item
    cumulative: np.ndarray  # (items,) cumulative popularity in item order
    by_topic: np.ndarray  # (items,) item indices grouped by topic
    topic_start: np.ndarray  # (topics + 1,) offsets of each topic's group in ``by_topic``
    topic_cumulative: np.ndarray  # (items + 1,) cumulative popularity along ``by_topic``, from 0


@dataclass(frozen=True)
class _Vocabulary:
    """Made-up words: per topic a category name, adjectives, nouns, features and brands."""

    names: list[str]  # (topics,)
    words: pa.Array  # (topics * _WORDS_PER_TOPIC,) topic t's words at t * _WORDS_PER_TOPIC ...
    brands: pa.Array  # (topics * _BRANDS_PER_TOPIC,)


def generate_synthetic_dataset(out_dir: Path, spec: SyntheticSpec) -> Path:
    """Write the synthetic dataset of ``spec`` into ``out_dir`` (created if needed) and return ``out_dir``.

    Files: ``interactions.parquet`` (user_id, item_id, rating 1-5, timestamp in unix seconds, sorted by
    user then time), ``test.parquet`` (same columns; absent when ``spec.test_share`` is 0), ``items.parquet``
    (item_id, title, description, category, brand), ``users.parquet`` (user_id, age_group, country),
    ``columns.yaml`` (the column roles) and ``synth.json`` (spec, counts, topics; :func:`read_synth_manifest`).
    Other-format twins of these tables and a stale ``test`` table are removed. Each file is written
    atomically; the same spec gives byte-identical files. Raises :class:`ConfigError` for a bad spec.
    """
    spec.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = _Seeds.of(spec)
    catalogue = _draw_catalogue(spec, np.random.default_rng(seeds.catalogue))
    vocabulary = _vocabulary(spec.n_topics)
    user_topic = planted_user_topics(spec)
    counts = _user_activity(spec, np.random.default_rng(seeds.activity))
    bounds = _chunk_bounds(counts, spec.rows_per_chunk)
    metadata = {
        "m6rec.generator": GENERATOR,
        "m6rec.generator_version": GENERATOR_VERSION,
        "m6rec.seed": str(spec.seed),
    }
    written = {"interactions": 0, "test": 0}
    stems = ["interactions", "test"] if spec.test_share > 0 else ["interactions"]
    with ExitStack() as stack:
        writers = {
            stem: pq.ParquetWriter(
                stack.enter_context(atomic_path(out_dir / f"{stem}.parquet")),
                schema.with_metadata(metadata),
                compression="snappy",
            )
            for stem, schema in [*((stem, _INTERACTION_SCHEMA) for stem in stems), ("users", _USER_SCHEMA)]
        }
        for writer in writers.values():
            stack.callback(writer.close)  # runs before each atomic_path moves its file into place
        items_path = stack.enter_context(atomic_path(out_dir / "items.parquet"))
        pq.write_table(
            _item_table(
                spec, catalogue, vocabulary, np.random.default_rng(seeds.text)
            ).replace_schema_metadata(metadata),
            items_path,
            compression="snappy",
        )
        item_ids = pa.array(_ids("item", spec.items), pa.string())
        chunk_seeds = seeds.chunks.spawn(len(bounds) - 1)
        for index in progress(range(len(bounds) - 1), desc="synthetic interactions", unit="chunk"):
            first, stop = int(bounds[index]), int(bounds[index + 1])
            user_ids = pa.array(_ids("user", spec.users, first, stop), pa.string())
            rng = np.random.default_rng(chunk_seeds[index])
            tables = _chunk_tables(spec, catalogue, user_topic[first:stop], counts[first:stop], rng)
            for stem, (users, items, ratings, times) in tables.items():
                writers[stem].write_table(
                    pa.table(
                        [user_ids.take(users), item_ids.take(items), ratings, times],
                        schema=_INTERACTION_SCHEMA,
                    )
                )
                written[stem] += len(users)
            writers["users"].write_table(_user_table(user_ids, user_topic[first:stop], rng))
    _remove_stale_tables(out_dir, keep={f"{stem}.parquet" for stem in (*stems, "items", "users")})
    counts_by_table = {
        "users": spec.users,
        "items": spec.items,
        "interactions": written["interactions"],
        "test_interactions": written["test"],
    }
    _write_text(out_dir / COLUMNS_FILE, _columns_yaml())
    _write_text(out_dir / SYNTH_JSON, _manifest(spec, vocabulary, counts_by_table))
    log.info(
        "synthetic dataset: %d users, %d items, %d interactions (+%d test) in %s",
        spec.users,
        spec.items,
        written["interactions"],
        written["test"],
        out_dir,
    )
    return out_dir


def planted_user_topics(spec: SyntheticSpec) -> np.ndarray:
    """Each user's latent topic (``users`` integers in [0, n_topics)), the planted right answer: topic t
    is the items' ``category`` ``synth.json["topics"][t]``. Not written to the files, so that no model
    sees it; recomputed from the spec's seed."""
    return np.random.default_rng(_Seeds.of(spec).user_topics).integers(spec.n_topics, size=spec.users)


def read_synth_manifest(out_dir: Path) -> dict:
    """The ``synth.json`` of a synthetic dataset directory: generator, spec, counts and topic names."""
    return json.loads((Path(out_dir) / SYNTH_JSON).read_text(encoding="utf-8"))


def _draw_catalogue(spec: SyntheticSpec, rng: np.random.Generator) -> _Catalogue:
    """Balanced random topics; Zipf popularity over a random ranking, so neither follows the item ID."""
    topic = rng.permutation(np.arange(spec.items) % spec.n_topics)
    rank = rng.permutation(spec.items) + 1
    popularity = rank.astype(np.float64) ** -spec.popularity_exponent
    popularity /= popularity.sum()
    by_topic = np.argsort(topic, kind="stable")
    topic_start = np.searchsorted(topic[by_topic], np.arange(spec.n_topics + 1))
    topic_cumulative = np.concatenate([[0.0], np.cumsum(popularity[by_topic])])
    return _Catalogue(topic, np.cumsum(popularity), by_topic, topic_start, topic_cumulative)


def _user_activity(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: one each, plus the rest shared in proportion to lognormal weights, capped at
    ``max_items_per_user`` (water-filling) and rounded by largest remainder, so the total is exact."""
    weight = rng.lognormal(0.0, spec.activity_sigma, size=spec.users)
    extra, room = spec.interactions - spec.users, spec.max_items_per_user - 1
    share = np.zeros(spec.users)
    open_ = np.full(spec.users, room > 0)
    remaining = float(extra)
    while remaining > 0.5 and open_.any():
        share[open_] += remaining * weight[open_] / weight[open_].sum()
        overflow = np.maximum(share - room, 0.0)
        share -= overflow
        remaining = float(overflow.sum())
        open_ &= share < room
    base = np.floor(share).astype(np.int64)
    leftover = extra - int(base.sum())
    while leftover > 0:  # one pass gives out all of it unless float drift left fewer open users
        fraction = np.where(base < room, share - base, -1.0)
        receivers = np.argsort(-fraction, kind="stable")[: min(leftover, int((base < room).sum()))]
        base[receivers] += 1
        leftover -= len(receivers)
    return base + 1


def _chunk_bounds(counts: np.ndarray, rows_per_chunk: int) -> np.ndarray:
    """User offsets [0, ..., users] cutting the users into runs of about ``rows_per_chunk`` interactions."""
    cumulative = np.cumsum(counts)
    targets = np.arange(rows_per_chunk, cumulative[-1], rows_per_chunk)
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    return np.unique(np.concatenate([[0], cuts, [len(counts)]]))


def _chunk_tables(
    spec: SyntheticSpec,
    catalogue: _Catalogue,
    user_topic: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The chunk's rows as (user offset in chunk, item index, rating, timestamp) per table, each sorted
    by user then time; a user's latest ``test_share`` goes to ``test``."""
    users, items = _draw_pairs(spec, catalogue, user_topic, counts, rng)
    n_users = len(counts)
    span = rng.uniform(0.05, 1.0, size=n_users) * spec.window_days * 86_400
    start = spec.window_start + rng.random(n_users) * (spec.window_days * 86_400 - span)
    times = np.floor(start[users] + rng.random(len(users)) * span[users]).astype(np.int64)
    on_topic = catalogue.topic[items] == user_topic[users]
    ratings = np.clip(np.rint(3.0 + on_topic + rng.normal(0.0, 1.0, size=len(users))), 1, 5).astype(np.int64)
    order = np.lexsort((times, users))
    users, items, ratings, times = users[order], items[order], ratings[order], times[order]
    if spec.test_share == 0:
        return {"interactions": (users, items, ratings, times)}
    n_test = np.minimum(np.floor(spec.test_share * counts + 0.5).astype(np.int64), counts - 1)
    from_end = np.cumsum(counts)[users] - np.arange(len(users))  # 1 for each user's latest row
    is_test = from_end <= n_test[users]
    return {
        "interactions": tuple(column[~is_test] for column in (users, items, ratings, times)),
        "test": tuple(column[is_test] for column in (users, items, ratings, times)),
    }


def _draw_pairs(
    spec: SyntheticSpec,
    catalogue: _Catalogue,
    user_topic: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``counts[u]`` distinct items for each user u of the chunk, in rounds of draws with replacement.

    Each user has two quotas ("slots"): ``topic_affinity`` of its count (rounded at random) from its own
    topic, the rest from the whole catalogue, so that a heavy user's share stays near the knob even though
    its own-topic draws collide more often. Each round draws a little more than every slot still lacks and
    keeps each slot's first items that the user does not hold yet. The first rounds follow popularity;
    later ones (for heavy users who already hold the popular items) are uniform within the slot's source;
    the last ones, for whatever is still lacking, are uniform over the catalogue, oversampled by how full
    the user is, which always progresses since a user holds at most half the catalogue.
    """
    n_items, n_users = spec.items, len(counts)
    from_topic = np.floor(spec.topic_affinity * counts + rng.random(n_users)).astype(np.int64)
    quota = np.stack(
        [np.minimum(from_topic, counts), counts - np.minimum(from_topic, counts)], axis=1
    ).ravel()
    held_keys = np.empty(0, dtype=np.int64)  # sorted user * n_items + item of the pairs kept so far
    held_slots, held_items = [], []
    held = np.zeros(2 * n_users, dtype=np.int64)  # per slot 2u (own topic) and 2u + 1 (catalogue)
    for draw_round in itertools.count():
        lacking = quota - held
        needy = np.flatnonzero(lacking)
        if len(needy) == 0:
            break
        if draw_round < _POPULAR_ROUNDS + _UNIFORM_TOPIC_ROUNDS:
            slots = np.repeat(needy, np.ceil(lacking[needy] * _OVERSAMPLE).astype(np.int64) + 1)
            items = _draw_items(
                catalogue, user_topic[slots // 2], slots % 2 == 0, draw_round < _POPULAR_ROUNDS, rng
            )
        else:
            user_held = held[needy - needy % 2] + held[needy - needy % 2 + 1]
            fullness = n_items / (n_items - user_held)
            slots = np.repeat(needy, np.ceil(lacking[needy] * fullness * _OVERSAMPLE).astype(np.int64) + 1)
            items = rng.integers(n_items, size=len(slots))
        keys = (slots // 2) * n_items + items
        position = np.minimum(np.searchsorted(held_keys, keys), max(len(held_keys) - 1, 0))
        new = held_keys[position] != keys if len(held_keys) else np.ones(len(keys), dtype=bool)
        first = np.zeros(len(keys), dtype=bool)
        first[np.unique(keys, return_index=True)[1]] = True
        kept = np.flatnonzero(new & first)  # ascending, so grouped by slot in draw order
        kept_slots = slots[kept]
        rank_in_slot = np.arange(len(kept)) - np.searchsorted(kept_slots, kept_slots, side="left")
        kept = kept[rank_in_slot < lacking[kept_slots]]
        held_slots.append(slots[kept])
        held_items.append(items[kept])
        held += np.bincount(slots[kept], minlength=2 * n_users)
        held_keys = np.sort(np.concatenate([held_keys, np.sort(keys[kept])]), kind="stable")
    return np.concatenate(held_slots) // 2, np.concatenate(held_items)


def _draw_items(
    catalogue: _Catalogue,
    user_topic: np.ndarray,
    from_topic: np.ndarray,
    by_popularity: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One item per draw: from the user's topic where ``from_topic``, else from the whole catalogue; by
    popularity (inverse CDF) or uniformly within that source."""
    n_items = len(catalogue.topic)
    u = rng.random(len(user_topic))
    lo = catalogue.topic_start[user_topic]
    hi = catalogue.topic_start[user_topic + 1]
    if by_popularity:
        low_mass, high_mass = catalogue.topic_cumulative[lo], catalogue.topic_cumulative[hi]
        target = low_mass + u * (high_mass - low_mass)
        in_topic = np.searchsorted(catalogue.topic_cumulative, target, side="right") - 1
        in_catalogue = np.searchsorted(catalogue.cumulative, u * catalogue.cumulative[-1], side="right")
    else:
        in_topic = lo + np.floor(u * (hi - lo)).astype(np.int64)
        in_catalogue = np.floor(u * n_items).astype(np.int64)
    topic_item = catalogue.by_topic[np.clip(in_topic, lo, hi - 1)]
    return np.where(from_topic, topic_item, np.minimum(in_catalogue, n_items - 1))


def _vocabulary(n_topics: int) -> _Vocabulary:
    """Distinct pronounceable made-up words: a name, eight adjectives, nouns and features per topic."""
    rng = np.random.default_rng(_VOCABULARY_SEED)
    syllables = [c + v for c in _SYLLABLE_CONSONANTS for v in _SYLLABLE_VOWELS]
    needed = n_topics * (1 + _WORDS_PER_TOPIC + _BRANDS_PER_TOPIC)
    words: dict[str, None] = {}
    while len(words) < needed:
        length = 2 + int(rng.integers(2))
        words.setdefault("".join(syllables[i] for i in rng.integers(len(syllables), size=length)))
    pool = list(words)
    names = [word.title() for word in pool[:n_topics]]
    topic_words = pool[n_topics : n_topics * (1 + _WORDS_PER_TOPIC)]
    brand_words = pool[n_topics * (1 + _WORDS_PER_TOPIC) :]
    brands = [
        f"{word.title()} {_BRAND_SUFFIXES[int(rng.integers(len(_BRAND_SUFFIXES)))]}" for word in brand_words
    ]
    return _Vocabulary(names, pa.array(topic_words, pa.string()), pa.array(brands, pa.string()))


def _item_table(
    spec: SyntheticSpec, catalogue: _Catalogue, vocabulary: _Vocabulary, rng: np.random.Generator
) -> pa.Table:
    """Titles from the item's own topic; each description word from it with probability 0.8, else from
    a random topic; brands mostly from the item's topic."""
    topic, n_topics = catalogue.topic, spec.n_topics
    third = _WORDS_PER_TOPIC // 3

    def words(kind: int, noisy: bool) -> pa.Array:
        source = topic
        if noisy:
            source = np.where(
                rng.random(spec.items) < _OWN_TOPIC_WORD_SHARE, topic, rng.integers(n_topics, size=spec.items)
            )
        index = source * _WORDS_PER_TOPIC + kind * third + rng.integers(third, size=spec.items)
        return vocabulary.words.take(pa.array(index))

    adjective, noun = pc.utf8_capitalize(words(0, False)), pc.utf8_capitalize(words(1, False))
    title = pc.binary_join_element_wise(
        adjective, noun, pa.array(np.arange(1, spec.items + 1)).cast(pa.string()), " "
    )
    description = pc.binary_join_element_wise(
        pc.utf8_capitalize(words(0, True)),
        words(1, True),
        "with",
        words(2, True),
        "and",
        pc.binary_join_element_wise(words(2, True), ", for", "", ""),
        words(0, True),
        pc.binary_join_element_wise(words(1, True), " fans.", ""),
        " ",
    )
    brand_topic = np.where(
        rng.random(spec.items) < _OWN_TOPIC_BRAND_SHARE, topic, rng.integers(n_topics, size=spec.items)
    )
    brand = brand_topic * _BRANDS_PER_TOPIC + rng.integers(_BRANDS_PER_TOPIC, size=spec.items)
    return pa.table(
        {
            contract.ITEM_ID: pa.array(_ids("item", spec.items), pa.string()),
            "title": title,
            "description": description,
            "category": pa.array(vocabulary.names, pa.string()).take(pa.array(topic)),
            "brand": vocabulary.brands.take(pa.array(brand)),
        }
    )


def _user_table(user_ids: pa.Array, user_topic: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Age group following the topic for half the users, uniform otherwise; countries Zipf-distributed."""
    n_users = len(user_topic)
    age = np.where(
        rng.random(n_users) < _AGE_TOPIC_SHARE,
        user_topic % len(AGE_GROUPS),
        rng.integers(len(AGE_GROUPS), size=n_users),
    )
    country_weight = 1.0 / np.arange(1, len(COUNTRIES) + 1)
    country = rng.choice(len(COUNTRIES), size=n_users, p=country_weight / country_weight.sum())
    return pa.table(
        [user_ids, pa.array(AGE_GROUPS).take(pa.array(age)), pa.array(COUNTRIES).take(pa.array(country))],
        schema=_USER_SCHEMA,
    )


def _ids(prefix: str, total: int, first: int = 0, stop: int | None = None) -> list[str]:
    """``prefix-000001``-style IDs for positions [first, stop) of ``total``, zero-padded to one width."""
    width = max(4, len(str(total)))
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(first, total if stop is None else stop)]


def _remove_stale_tables(out_dir: Path, keep: set[str]) -> None:
    """Remove contract tables (either format) left from an earlier dataset in ``out_dir``."""
    stale = {f"{spec.stem}{suffix}" for spec in contract.ALL_TABLES for suffix in contract.TABLE_SUFFIXES}
    for name in sorted(stale - keep):
        (out_dir / name).unlink(missing_ok=True)


def _columns_yaml() -> str:
    lines = [f"# column roles of a synthetic dataset ({GENERATOR} {GENERATOR_VERSION})"]
    for table, roles in _COLUMN_ROLES.items():
        lines.append(f"{table}:")
        lines.extend(f"  {column}: {role}" for column, role in roles.items())
    return "\n".join(lines) + "\n"


def _manifest(spec: SyntheticSpec, vocabulary: _Vocabulary, counts: dict[str, int]) -> str:
    document = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "spec": asdict(spec),
        "max_items_per_user": spec.max_items_per_user,
        "topics": vocabulary.names,
        "counts": counts,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")
