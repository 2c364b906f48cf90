"""m6rec: an offline two-stage multimodal recommender pipeline."""

__version__ = "0.1.0"
