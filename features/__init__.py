"""Frozen item and user representations: text, image, audio, knowledge-graph, collaborative and fused."""
