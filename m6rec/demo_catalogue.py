"""The embedded demo catalogue: a small, synthetic, multimodal dataset with planted preferences.

Every item has a latent topic mixture (mostly its own category). Its title and description, its picture
(hue and shape) and its audio clip (pitch, timbre and pulse tempo) are all generated from that mixture, and
users pick items through a softmax over affinity(user taste, item mixture) plus item popularity, where user
taste depends partly on age group and country. Content therefore carries real signal about preferences,
and the right answer is known. The same spec always gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from m6rec.data import contract

GENERATOR = "m6rec.demo_catalogue"
GENERATOR_VERSION = "1.0"

HELD_OUT_FRACTION = 0.2
WINDOW_START = 1_704_067_200  # 2024-01-01T00:00:00Z, fixed so that no wall-clock time enters the files
WINDOW_SECONDS = 90 * 24 * 3600

AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
COUNTRIES = ("US", "GB", "DE", "FR", "JP", "BR", "IN", "AU")


@dataclass(frozen=True)
class Theme:
    """One topic of the catalogue: its words, brands, picture and sound."""

    name: str
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    features: tuple[str, ...]
    audiences: tuple[str, ...]
    brands: tuple[str, ...]
    hue: float
    shape: str
    base_hz: float
    harmonics: tuple[float, ...]
    pulse_hz: float
    pulse_sharpness: int
    median_price: float


THEMES: tuple[Theme, ...] = (
    Theme(
        name="jazz",
        adjectives=("smoky", "swinging", "mellow", "bluesy", "late-night"),
        nouns=("saxophone record", "trio session", "vinyl album", "big band set", "piano ballad"),
        features=("brushed drums", "walking bass lines", "muted trumpet", "improvised solos", "warm reeds"),
        audiences=("night owls", "record collectors", "club regulars"),
        brands=("Velvet Reed", "Blue Cellar", "Brass Alley"),
        hue=4 / 6,
        shape="ring",
        base_hz=110.0,
        harmonics=(1.0, 0.5, 0.33, 0.25, 0.2),
        pulse_hz=2.2,
        pulse_sharpness=2,
        median_price=18.0,
    ),
    Theme(
        name="hiking",
        adjectives=("rugged", "lightweight", "alpine", "waterproof", "trail-ready"),
        nouns=("daypack", "trekking pole", "trail boot", "rain shell", "map case"),
        features=("ridge walks", "mountain passes", "switchback climbs", "forest trails", "summit views"),
        audiences=("backpackers", "weekend walkers", "trail runners"),
        brands=("Ridgeline", "Cairn & Co", "Switchback Gear"),
        hue=2 / 6,
        shape="triangle",
        base_hz=330.0,
        harmonics=(1.0, 0.3),
        pulse_hz=1.2,
        pulse_sharpness=1,
        median_price=65.0,
    ),
    Theme(
        name="cooking",
        adjectives=("cast-iron", "rustic", "simmering", "crispy", "homestyle"),
        nouns=("skillet", "stock pot", "spice set", "recipe book", "chef knife"),
        features=("slow braises", "fresh pasta", "roasted vegetables", "sourdough bread", "bold spices"),
        audiences=("home cooks", "weekend bakers", "dinner hosts"),
        brands=("Copper Hearth", "Saltbox Kitchen", "Ember Pan"),
        hue=0.0,
        shape="circle",
        base_hz=196.0,
        harmonics=(1.0, 0.0, 0.4, 0.0, 0.2),
        pulse_hz=4.0,
        pulse_sharpness=3,
        median_price=35.0,
    ),
    Theme(
        name="gaming",
        adjectives=("pixelated", "turbo", "co-op", "retro", "high-score"),
        nouns=("arcade cartridge", "controller", "headset", "strategy game", "platformer"),
        features=("boss battles", "speed runs", "split-screen play", "power-ups", "level editors"),
        audiences=("speedrunners", "couch co-op fans", "retro collectors"),
        brands=("Bitforge", "Neon Joystick", "Level Nine"),
        hue=5 / 6,
        shape="square",
        base_hz=440.0,
        harmonics=(1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14),
        pulse_hz=8.0,
        pulse_sharpness=4,
        median_price=45.0,
    ),
    Theme(
        name="gardening",
        adjectives=("blooming", "organic", "heirloom", "sun-loving", "hardy"),
        nouns=("seed kit", "pruning shears", "planter", "watering can", "compost bin"),
        features=("spring bulbs", "raised beds", "climbing roses", "herb borders", "tomato vines"),
        audiences=("allotment keepers", "balcony growers", "flower lovers"),
        brands=("Greenthumb", "Willow & Root", "Petal Works"),
        hue=1 / 6,
        shape="flower",
        base_hz=262.0,
        harmonics=(1.0, 0.6, 0.2),
        pulse_hz=3.0,
        pulse_sharpness=2,
        median_price=22.0,
    ),
    Theme(
        name="astronomy",
        adjectives=("stargazing", "deep-sky", "celestial", "night-sky", "orbital"),
        nouns=("telescope", "star atlas", "eyepiece", "planisphere", "moon globe"),
        features=("lunar craters", "meteor showers", "distant galaxies", "planetary rings", "dark skies"),
        audiences=("amateur astronomers", "sky watchers", "science teachers"),
        brands=("Orbit Optics", "Nebula Labs", "Polaris Instruments"),
        hue=3 / 6,
        shape="star",
        base_hz=587.0,
        harmonics=(1.0,),
        pulse_hz=0.5,
        pulse_sharpness=1,
        median_price=120.0,
    ),
)

_TASTE_STRENGTH = 3.0
_ATTRIBUTE_TASTE_WEIGHT = 0.4
_POPULARITY_SCALE = 0.7
_INAUDIBLE_WEIGHT = 0.02


@dataclass(frozen=True)
class DemoCatalogueSpec:
    """Size, seed and media settings of a demo catalogue; defaults generate in a few seconds."""

    n_users: int = 300
    n_items: int = 240
    n_topics: int = 6
    interactions_per_user: tuple[int, int] = (15, 40)
    n_cold_items: int = 24
    seed: int = 7
    image_size: int = 64
    audio_seconds: float = 1.0
    sample_rate: int = 16000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot produce a valid catalogue."""
        low, high = self.interactions_per_user
        n_warm = self.n_items - self.n_cold_items
        checks = (
            (self.n_users >= 1, "n_users must be at least 1"),
            (1 <= self.n_topics <= len(THEMES), f"n_topics must be between 1 and {len(THEMES)}"),
            (self.n_items >= 2 * self.n_topics, "n_items must be at least twice n_topics"),
            (0 <= self.n_cold_items < self.n_items, "n_cold_items must be in [0, n_items)"),
            (2 <= low <= high, "interactions_per_user must be (low, high) with 2 <= low <= high"),
            (high <= n_warm, "interactions_per_user high must not exceed n_items - n_cold_items"),
            (self.image_size >= 16, "image_size must be at least 16 pixels"),
            (self.audio_seconds > 0, "audio_seconds must be positive"),
            (self.sample_rate >= 4000, "sample_rate must be at least 4000 Hz"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"DemoCatalogueSpec: {message} (got {self})")


@dataclass(frozen=True)
class _Items:
    ids: list[str]
    topic_mixture: np.ndarray  # (n_items, n_topics), rows sum to 1
    category: np.ndarray  # (n_items,) index of the main topic
    brand: list[str]
    popularity: np.ndarray  # (n_items,) log-popularity added to every user's logits
    is_cold: np.ndarray  # (n_items,) bool


@dataclass(frozen=True)
class _Users:
    ids: list[str]
    age_group: list[str]
    country: list[str]
    taste: np.ndarray  # (n_users, n_topics)


def generate_demo_catalogue(out_dir: Path, spec: DemoCatalogueSpec = DemoCatalogueSpec()) -> Path:
    """Write the synthetic demo catalogue for ``spec`` into ``out_dir`` and return ``out_dir``.

    The directory follows the dataset contract: ``items``, ``users``, ``kg``, ``interactions`` and
    ``test`` Parquet tables, ``images/<item>.png``, ``audio/<item>.wav``, a ``README.md`` and a
    ``catalogue.json`` with the spec and counts. The directory is created if needed; regenerating into it
    overwrites the catalogue files and removes media of items that no longer exist. Every file is written
    atomically, and the same spec gives byte-identical files.
    """
    spec.validate()
    out_dir = Path(out_dir)
    themes = THEMES[: spec.n_topics]
    seeds = np.random.SeedSequence(spec.seed).spawn(7)
    items = _draw_items(spec, themes, np.random.default_rng(seeds[0]))
    users = _draw_users(spec, np.random.default_rng(seeds[1]))
    train, test = _draw_interactions(spec, items, users, np.random.default_rng(seeds[2]))
    kg = _build_kg(items, themes, np.random.default_rng(seeds[3]))
    item_table = _item_table(items, themes, np.random.default_rng(seeds[4]), np.random.default_rng(seeds[5]))
    user_table = {
        contract.USER_ID: pa.array(users.ids, pa.string()),
        "age_group": pa.array(users.age_group, pa.string()),
        "country": pa.array(users.country, pa.string()),
    }

    _write_media(out_dir, items, themes, spec, seeds[6])
    metadata = {
        "m6rec.generator": GENERATOR,
        "m6rec.generator_version": GENERATOR_VERSION,
        "m6rec.seed": str(spec.seed),
    }
    for stem, table in (
        ("items", item_table),
        ("users", user_table),
        ("kg", kg),
        ("interactions", train),
        ("test", test),
    ):
        _write_parquet(out_dir / f"{stem}.parquet", table, metadata)

    cold_item_ids = [item_id for item_id, cold in zip(items.ids, items.is_cold, strict=True) if cold]
    counts = {
        "items": len(items.ids),
        "cold_items": len(cold_item_ids),
        "cold_items_in_test": len(set(test[contract.ITEM_ID].to_pylist()) & set(cold_item_ids)),
        "users": len(users.ids),
        "interactions": len(train[contract.USER_ID]),
        "test_interactions": len(test[contract.USER_ID]),
        "kg_triples": len(kg[contract.KG_HEAD]),
    }
    _write_text(out_dir / "README.md", _readme(spec, themes, counts))
    _write_text(out_dir / "catalogue.json", _catalogue_json(spec, themes, counts, cold_item_ids))
    return out_dir


def _media_paths(item_id: str) -> tuple[str, str]:
    """Image and audio paths of an item, relative to the dataset directory."""
    return f"images/{item_id}.png", f"audio/{item_id}.wav"


def _item_table(
    items: _Items, themes: tuple[Theme, ...], text_rng: np.random.Generator, price_rng: np.random.Generator
) -> dict[str, pa.Array]:
    titles, descriptions = zip(
        *(_describe(items, i, themes, text_rng) for i in range(len(items.ids))), strict=True
    )
    image_paths, audio_paths = zip(*(_media_paths(item_id) for item_id in items.ids), strict=True)
    return {
        contract.ITEM_ID: pa.array(items.ids, pa.string()),
        "title": pa.array(titles, pa.string()),
        "description": pa.array(descriptions, pa.string()),
        "category": pa.array([themes[c].name for c in items.category], pa.string()),
        "brand": pa.array(items.brand, pa.string()),
        "price": pa.array(_draw_prices(items, themes, price_rng), pa.float64()),
        contract.IMAGE_PATH: pa.array(image_paths, pa.string()),
        contract.AUDIO_PATH: pa.array(audio_paths, pa.string()),
    }


def _write_media(
    out_dir: Path,
    items: _Items,
    themes: tuple[Theme, ...],
    spec: DemoCatalogueSpec,
    media_seed: np.random.SeedSequence,
) -> None:
    """Render every item's picture and clip, each from its own seed, and drop media of vanished items."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    for item_id, mixture, item_seed in zip(
        items.ids, items.topic_mixture, media_seed.spawn(len(items.ids)), strict=True
    ):
        rng = np.random.default_rng(item_seed)
        image_path, audio_path = _media_paths(item_id)
        _write_image(out_dir / image_path, _render_image(mixture, themes, spec, rng))
        _write_audio(out_dir / audio_path, _render_audio(mixture, themes, spec, rng), spec)
    _remove_stale_media(out_dir / "images", ".png", set(items.ids))
    _remove_stale_media(out_dir / "audio", ".wav", set(items.ids))


def _draw_items(spec: DemoCatalogueSpec, themes: tuple[Theme, ...], rng: np.random.Generator) -> _Items:
    width = max(4, len(str(spec.n_items)))
    ids = [f"item-{i + 1:0{width}d}" for i in range(spec.n_items)]
    category = rng.permutation(np.arange(spec.n_items) % spec.n_topics)
    own_weight = rng.uniform(0.6, 0.9, size=spec.n_items)
    spread = rng.dirichlet(np.full(spec.n_topics, 0.3), size=spec.n_items)
    topic_mixture = (1.0 - own_weight)[:, None] * spread
    topic_mixture[np.arange(spec.n_items), category] += own_weight
    brand = [themes[c].brands[rng.integers(len(themes[c].brands))] for c in category]
    popularity = _POPULARITY_SCALE * rng.standard_normal(spec.n_items)

    # Cold items are spread evenly over the categories so that cold start can be measured for each one.
    rank_in_category = np.empty(spec.n_items, dtype=np.int64)
    for topic in range(spec.n_topics):
        members = np.flatnonzero(category == topic)
        rank_in_category[rng.permutation(members)] = np.arange(len(members))
    cold_order = np.lexsort((category, rank_in_category))
    is_cold = np.zeros(spec.n_items, dtype=bool)
    is_cold[cold_order[: spec.n_cold_items]] = True
    return _Items(ids, topic_mixture, category, brand, popularity, is_cold)


def _draw_users(spec: DemoCatalogueSpec, rng: np.random.Generator) -> _Users:
    width = max(4, len(str(spec.n_users)))
    ids = [f"user-{u + 1:0{width}d}" for u in range(spec.n_users)]
    age_effect = 1.2 * rng.standard_normal((len(AGE_GROUPS), spec.n_topics))
    country_effect = 0.8 * rng.standard_normal((len(COUNTRIES), spec.n_topics))
    age = rng.integers(len(AGE_GROUPS), size=spec.n_users)
    country = rng.integers(len(COUNTRIES), size=spec.n_users)
    attribute_logits = age_effect[age] + country_effect[country]
    favourite = np.array([rng.choice(spec.n_topics, p=_softmax(row)) for row in attribute_logits])
    taste = _ATTRIBUTE_TASTE_WEIGHT * attribute_logits + 0.5 * rng.standard_normal(
        (spec.n_users, spec.n_topics)
    )
    taste[np.arange(spec.n_users), favourite] += _TASTE_STRENGTH
    return _Users(ids, [AGE_GROUPS[a] for a in age], [COUNTRIES[c] for c in country], taste)


def _draw_interactions(
    spec: DemoCatalogueSpec, items: _Items, users: _Users, rng: np.random.Generator
) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Sample each user's items without replacement from softmax(affinity + popularity) (Gumbel top-k).

    Training items come from warm items only; the held-out items, later in time, come from everything the
    user has not seen yet, cold items included.
    """
    affinity = users.taste @ items.topic_mixture.T
    low, high = spec.interactions_per_user
    rows: dict[str, list[list]] = {"train": [], "test": []}
    for u, user_id in enumerate(users.ids):
        n_total = int(rng.integers(low, high + 1))
        n_test = max(1, round(HELD_OUT_FRACTION * n_total))
        n_train = n_total - n_test
        logits = affinity[u] + items.popularity
        keys = logits + rng.gumbel(size=len(logits))
        train_keys = np.where(items.is_cold, -np.inf, keys)
        train_items = np.argsort(-train_keys, kind="stable")[:n_train]
        test_keys = logits + rng.gumbel(size=len(logits))
        test_keys[train_items] = -np.inf
        test_items = np.argsort(-test_keys, kind="stable")[:n_test]

        times = WINDOW_START + np.sort(rng.choice(WINDOW_SECONDS, size=n_total, replace=False))
        train_items = rng.permutation(train_items)
        test_items = rng.permutation(test_items)
        standardised = (affinity[u] - affinity[u].mean()) / (affinity[u].std() + 1e-9)
        chosen = np.concatenate([train_items, test_items])
        noise = 0.5 * rng.standard_normal(n_total)
        ratings = np.clip(np.rint(1.0 + 4.0 * _sigmoid(standardised[chosen] - 1.0) + noise), 1, 5)
        for k, item in enumerate(chosen):
            part = "train" if k < n_train else "test"
            rows[part].append([int(times[k]), user_id, items.ids[item], int(ratings[k])])
    return _interaction_table(rows["train"]), _interaction_table(rows["test"])


def _interaction_table(rows: list[list]) -> dict[str, pa.Array]:
    rows = sorted(rows)
    return {
        contract.USER_ID: pa.array([r[1] for r in rows], pa.string()),
        contract.ITEM_ID: pa.array([r[2] for r in rows], pa.string()),
        "rating": pa.array([r[3] for r in rows], pa.int64()),
        contract.TIMESTAMP: pa.array([r[0] for r in rows], pa.int64()),
    }


def _build_kg(items: _Items, themes: tuple[Theme, ...], rng: np.random.Generator) -> dict[str, pa.Array]:
    triples = []
    for item_id, topic, brand in zip(items.ids, items.category, items.brand, strict=True):
        triples.append((item_id, "in_category", f"category:{themes[topic].name}"))
        triples.append((item_id, "made_by", f"brand:{brand}"))
    brand_topic = {
        brand: themes[topic].name for brand, topic in zip(items.brand, items.category, strict=True)
    }
    for brand in sorted(brand_topic):
        triples.append((f"brand:{brand}", "specialises_in", f"category:{brand_topic[brand]}"))

    unit = items.topic_mixture / np.linalg.norm(items.topic_mixture, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    similarity[items.category[:, None] != items.category[None, :]] = -np.inf
    linked: set[tuple[int, int]] = set()
    for i in np.flatnonzero(rng.random(len(items.ids)) < 0.25):
        j = int(np.argmax(similarity[i]))
        if np.isfinite(similarity[i, j]) and (j, i) not in linked:
            linked.add((int(i), j))
    for i, j in sorted(linked):
        triples.append((items.ids[i], "similar_to", items.ids[j]))
    heads, relations, tails = zip(*triples, strict=True)
    return {
        contract.KG_HEAD: pa.array(heads, pa.string()),
        contract.KG_RELATION: pa.array(relations, pa.string()),
        contract.KG_TAIL: pa.array(tails, pa.string()),
    }


def _describe(
    items: _Items, index: int, themes: tuple[Theme, ...], rng: np.random.Generator
) -> tuple[str, str]:
    """Title from the item's own category; each description slot from a topic drawn from its mixture."""
    own = themes[items.category[index]]
    title = f"{_pick(own.adjectives, rng).title()} {_pick(own.nouns, rng).title()}"
    slots = [themes[t] for t in rng.choice(len(themes), size=5, p=items.topic_mixture[index])]
    adjective, noun, feature = (
        _pick(w, rng) for w in (slots[0].adjectives, slots[1].nouns, slots[2].features)
    )
    audience, favourite = _pick(slots[3].audiences, rng), _pick(slots[4].features, rng)
    opening = f"{_article(adjective).title()} {adjective} {noun} with {feature}."
    description = f"{opening} Made for {audience} who enjoy {favourite}."
    return title, description


def _draw_prices(items: _Items, themes: tuple[Theme, ...], rng: np.random.Generator) -> list[float]:
    medians = np.array([themes[c].median_price for c in items.category])
    raw = medians * np.exp(0.35 * rng.standard_normal(len(medians)))
    return [float(np.floor(p)) + 0.99 for p in raw]


def _render_image(
    mixture: np.ndarray, themes: tuple[Theme, ...], spec: DemoCatalogueSpec, rng: np.random.Generator
):
    """Background tinted by the whole mixture, the main topic's shape in its hue, the runner-up's small."""
    from PIL import Image, ImageDraw

    size = spec.image_size
    background = sum(
        w * np.array(colorsys.hsv_to_rgb(t.hue, 0.3, 0.95)) for w, t in zip(mixture, themes, strict=True)
    )
    image = Image.new("RGB", (size, size), tuple(int(255 * c) for c in background))
    draw = ImageDraw.Draw(image)
    order = np.argsort(-mixture, kind="stable")
    main = themes[order[0]]
    colour = _shape_colour(main.hue, rng)
    centre = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    _draw_shape(draw, main.shape, centre, size * rng.uniform(0.26, 0.34), rng.uniform(0, 2 * math.pi), colour)
    if len(order) > 1:
        runner_up = themes[order[1]]
        corner = np.array([rng.choice([0.16, 0.84]), rng.choice([0.16, 0.84])]) * size
        radius = size * 0.3 * math.sqrt(mixture[order[1]])
        _draw_shape(
            draw,
            runner_up.shape,
            corner,
            radius,
            rng.uniform(0, 2 * math.pi),
            _shape_colour(runner_up.hue, rng),
        )
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, 6.0, size=(size, size, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _shape_colour(hue: float, rng: np.random.Generator) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(
        (hue + rng.normal(0.0, 0.015)) % 1.0, rng.uniform(0.75, 0.95), rng.uniform(0.6, 0.9)
    )
    return tuple(int(255 * c) for c in rgb)


def _draw_shape(draw, shape: str, centre: np.ndarray, radius: float, angle: float, colour) -> None:
    cx, cy = float(centre[0]), float(centre[1])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(radius / 2.5)))
    elif shape == "flower":
        petal = radius * 0.42
        for k in range(5):
            a = angle + 2 * math.pi * k / 5
            px, py = (cx + (radius - petal) * math.cos(a), cy + (radius - petal) * math.sin(a))
            draw.ellipse((px - petal, py - petal, px + petal, py + petal), fill=colour)
    elif shape in ("triangle", "square", "star"):
        corners = {"triangle": 3, "square": 4, "star": 10}[shape]
        points = []
        for k in range(corners):
            r = radius * (0.45 if shape == "star" and k % 2 else 1.0)
            a = angle + 2 * math.pi * k / corners
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        draw.polygon(points, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _render_audio(
    mixture: np.ndarray, themes: tuple[Theme, ...], spec: DemoCatalogueSpec, rng: np.random.Generator
) -> np.ndarray:
    """Sum of each topic's pulsing harmonic tone weighted by the mixture, with per-item detune and tempo."""
    n_samples = max(1, round(spec.audio_seconds * spec.sample_rate))
    t = np.arange(n_samples) / spec.sample_rate
    signal = np.zeros(n_samples)
    nyquist = spec.sample_rate / 2
    for weight, theme in zip(mixture, themes, strict=True):
        if weight < _INAUDIBLE_WEIGHT:
            continue
        fundamental = theme.base_hz * math.exp(rng.normal(0.0, 0.02))
        tempo = theme.pulse_hz * rng.uniform(0.9, 1.1)
        tone_phase, pulse_phase = rng.uniform(0, 2 * math.pi, size=2)
        signal += (
            weight
            * _pulse(t, tempo, pulse_phase, theme.pulse_sharpness)
            * _harmonic_tone(t, fundamental, tone_phase, theme.harmonics, nyquist)
        )
    signal += rng.normal(0.0, 0.01, size=n_samples)
    fade = min(n_samples // 2, int(0.01 * spec.sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        signal[:fade] *= ramp
        signal[-fade:] *= ramp[::-1]
    return 0.8 * signal / max(np.max(np.abs(signal)), 1e-9)


def _harmonic_tone(
    t: np.ndarray, fundamental: float, phase: float, amplitudes: tuple[float, ...], nyquist: float
) -> np.ndarray:
    """Phase-locked partials k * fundamental with the given amplitudes, scaled to unit RMS amplitude.

    sin(k x) follows the recurrence s_k = 2 cos(x) s_(k-1) - s_(k-2), much cheaper than one sin per partial.
    """
    x = 2 * math.pi * fundamental * t + phase
    twice_cos = 2.0 * np.cos(x)
    previous, current = np.zeros_like(x), np.sin(x)
    tone = np.zeros_like(x)
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * fundamental >= nyquist:
            break
        if amplitude:
            tone += amplitude * current
        previous, current = current, twice_cos * current - previous
    return tone / math.sqrt(sum(a * a for a in amplitudes))


def _pulse(t: np.ndarray, tempo: float, phase: float, sharpness: int) -> np.ndarray:
    """Amplitude envelope pulsing ``tempo`` times a second; higher sharpness gives shorter, punchier beats."""
    raised_cosine = 0.5 * (1.0 + np.cos(2 * math.pi * tempo * t + phase))
    return 0.3 + 0.7 * raised_cosine**sharpness


def _write_image(path: Path, image) -> None:
    tmp = _tmp_path(path)
    image.save(tmp, format="PNG", optimize=False, compress_level=6)
    os.replace(tmp, path)


def _write_audio(path: Path, samples: np.ndarray, spec: DemoCatalogueSpec) -> None:
    import soundfile

    # Encoding in memory avoids libsndfile's sync-to-disk on close, which dominates the generation time.
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, spec.sample_rate, subtype="PCM_16", format="WAV")
    tmp = _tmp_path(path)
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def _write_parquet(path: Path, columns: dict[str, pa.Array], metadata: dict[str, str]) -> None:
    table = pa.table(columns).replace_schema_metadata(metadata)
    tmp = _tmp_path(path)
    pq.write_table(table, tmp, compression="snappy")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = _tmp_path(path)
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _remove_stale_media(folder: Path, suffix: str, item_ids: set[str]) -> None:
    """Remove media of items from an earlier, larger catalogue; nothing else in the folder is touched."""
    for path in folder.glob(f"item-*{suffix}"):
        if path.stem not in item_ids:
            path.unlink()


def _catalogue_json(
    spec: DemoCatalogueSpec, themes: tuple[Theme, ...], counts: dict[str, int], cold_item_ids: list[str]
) -> str:
    document = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "spec": asdict(spec),
        "categories": [t.name for t in themes],
        "held_out_fraction": HELD_OUT_FRACTION,
        "window_start": WINDOW_START,
        "window_seconds": WINDOW_SECONDS,
        "counts": counts,
        "cold_item_ids": cold_item_ids,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _readme(spec: DemoCatalogueSpec, themes: tuple[Theme, ...], counts: dict[str, int]) -> str:
    spec_lines = "\n".join(f"- `{name}`: {value}" for name, value in asdict(spec).items())
    return f"""# m6rec demo catalogue (synthetic)

This catalogue is **synthetic**: every item, user and interaction was generated by `{GENERATOR}`
version {GENERATOR_VERSION} of m6rec from the spec below (seed {spec.seed}). No real people, products or
recordings are in it. The same spec always produces byte-identical files.

Each item has a hidden topic mixture (mostly its category: {", ".join(t.name for t in themes)}). Its text,
picture and sound are generated from that mixture, and users choose items through a softmax over
affinity(user taste, item mixture) plus item popularity, where taste depends partly on age group and country.

## Spec

{spec_lines}

## Files

- `items.parquet`: {counts["items"]} items: item_id, title, description, category, brand, price, image_path,
  audio_path (paths relative to this folder).
- `images/<item_id>.png`: {spec.image_size}x{spec.image_size} pictures; hue and shape follow the topic.
- `audio/<item_id>.wav`: {spec.audio_seconds} s mono 16-bit clips at {spec.sample_rate} Hz; pitch, timbre and
  pulse tempo follow the topic.
- `users.parquet`: {counts["users"]} users: user_id, age_group, country.
- `kg.parquet`: {counts["kg_triples"]} knowledge-graph triples (head, relation, tail): in_category, made_by,
  specialises_in, similar_to.
- `interactions.parquet`: {counts["interactions"]} training interactions: user_id, item_id, rating (1-5),
  timestamp (unix seconds).
- `test.parquet`: {counts["test_interactions"]} held-out interactions, each user's latest
  {HELD_OUT_FRACTION:.0%}; the {counts["cold_items"]} cold items appear only here.
- `catalogue.json`: the spec, the counts, the cold item ids and the generator version.
"""


def _pick(words: tuple[str, ...], rng: np.random.Generator) -> str:
    return words[int(rng.integers(len(words)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
