"""Dataset directory contract: reading, validating, indexing and splitting interaction data."""
