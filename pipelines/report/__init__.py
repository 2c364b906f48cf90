"""The per-run report: one self-contained HTML page of charts drawn from a finished run folder.

``write_report`` reads what a run wrote (``run.json``, ``metrics.json``, ``ranker/``,
``recommendations.parquet``, ``features/``) and the run's items table for item categories. Every chart is
inline SVG from :mod:`pipelines.report.charts`, so the page needs no network and no JavaScript to show them;
its only script lists page errors in ``#report-errors`` and records each chart's rendered size. A piece the
run did not produce (no test set, no ranker, no embeddings) or cannot be read becomes a note on the page.

Modules, each importing only those above it: ``charts`` (SVG drawing primitives), ``folder`` (what the
report reads from the run folder), ``figures`` (one function per chart or table), ``projection`` (the item
embeddings' PCA chart), ``page`` (``write_report``: the page's sections, header, CSS, scripts and skeleton).
"""

from pipelines.report.figures import TOP_FEATURES
from pipelines.report.page import publish_report, write_report
from pipelines.report.projection import MAX_PROJECTED_ITEMS, pca_2d

__all__ = ["MAX_PROJECTED_ITEMS", "TOP_FEATURES", "pca_2d", "publish_report", "write_report"]
