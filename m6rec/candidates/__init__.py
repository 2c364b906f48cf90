"""Candidate sources: models that propose scored items for a batch of users, behind one interface."""

from m6rec.candidates.base import Candidates, CandidateSource
from m6rec.candidates.registry import create_source, load_source, registered_sources, source_class

__all__ = [
    "CandidateSource",
    "Candidates",
    "create_source",
    "load_source",
    "registered_sources",
    "source_class",
]
