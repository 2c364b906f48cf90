"""Look inside any Parquet file: schema, decoded metadata, null counts, vector statistics, rows with problems,
a sample of rows, the rows of one ID and an item's nearest neighbours by cosine.

Built for m6rec's outputs (``features/*.parquet``, ``recommendations.parquet``, ``ranker_features.parquet``,
``index/*.parquet``) but works on any Parquet file. A *vector column* is any list or fixed-size list of
floats. The file is streamed in record batches, so memory holds one batch of vectors plus the ID column,
never the whole matrix.

Modules, each importing only those above it: ``reading`` (open the file, its batches, schema metadata, ID
and vector columns), ``vectors`` (vector matrices and their statistics), ``scan`` (the one streaming pass),
``neighbours`` (cosine nearest neighbours), ``result`` (``ParquetInspection`` as JSON and as text),
``summary`` (``inspect_parquet``).
"""

from pipelines.inspect.neighbours import Neighbour, NeighbourList
from pipelines.inspect.result import ColumnSummary, IdMatches, ParquetInspection
from pipelines.inspect.scan import FileRow, ProblemRow
from pipelines.inspect.summary import inspect_parquet
from pipelines.inspect.vectors import VectorSummary

__all__ = [
    "ColumnSummary",
    "FileRow",
    "IdMatches",
    "Neighbour",
    "NeighbourList",
    "ParquetInspection",
    "ProblemRow",
    "VectorSummary",
    "inspect_parquet",
]
