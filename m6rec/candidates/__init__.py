"""Candidate sources: models that propose scored items for a batch of users, behind one interface."""

from m6rec.candidates.base import Candidates, CandidateSource, create_source, registered_sources

__all__ = ["CandidateSource", "Candidates", "create_source", "registered_sources"]
