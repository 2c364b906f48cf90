"""Prefect flows that orchestrate pipeline stages (nightly embeddings, ranker training, batch lists)."""
