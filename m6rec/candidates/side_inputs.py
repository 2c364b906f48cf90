"""What candidate sources use besides the interaction matrix, loaded once by the pipeline and passed in.

A pipeline reads each embedding file once and computes each user profile once per training history
(:class:`m6rec.embeddings.profiles.ProfileCache`), then hands the same objects to every source that
declares a side input (``CandidateSource.side_inputs``) and to the ranker's features. Sources built
standalone read the same things from the file paths in their parameters instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from m6rec.embeddings.profiles import ProfileCache
from m6rec.embeddings.store import EmbeddingTable

# The content space the content source queries: the fused vectors, else the text vectors.
CONTENT_SPACES = ("fused", "text")


@dataclass(frozen=True)
class SideInputs:
    """Loaded side inputs of one training history.

    ``item_vectors``: item embedding tables by space (``text``, ``image``, ``audio``, ``kg``, ``fused``)
    plus the two-tower item vectors as ``cf_items``; ``user_vectors``: the two-tower user vectors as
    ``cf_users``; ``kg``: the knowledge-graph triples; ``profiles``: the users' profiles over this history.
    """

    item_vectors: Mapping[str, EmbeddingTable] = field(default_factory=dict)
    user_vectors: Mapping[str, EmbeddingTable] = field(default_factory=dict)
    kg: pd.DataFrame | None = None
    profiles: ProfileCache | None = None

    @property
    def content_space(self) -> str | None:
        """The name of the space the content source retrieves in: the first of :data:`CONTENT_SPACES`
        with a vector for some item; None without one (a modality that embedded no item is no space)."""
        return next(
            (
                space
                for space in CONTENT_SPACES
                if space in self.item_vectors and self.item_vectors[space].valid.any()
            ),
            None,
        )

    def available(self) -> set[str]:
        """The side-input names (as sources declare them) these inputs provide."""
        names = set()
        if "cf_items" in self.item_vectors and "cf_users" in self.user_vectors:
            names |= {"cf_items", "cf_users"}
        if self.content_space is not None:
            names.add("content")
        if self.kg is not None and len(self.kg):
            names.add("kg")
        return names

    def provides(self, needed: tuple[str, ...]) -> bool:
        return set(needed) <= self.available()
