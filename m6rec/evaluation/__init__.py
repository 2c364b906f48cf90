"""Offline evaluation: top-K ranking metrics, catalogue coverage, popularity bias, AUC and F1."""

from m6rec.evaluation.metrics import (
    auc,
    evaluate_recommendations,
    f1_at_threshold,
    ranking_metrics,
)

__all__ = ["auc", "evaluate_recommendations", "f1_at_threshold", "ranking_metrics"]
