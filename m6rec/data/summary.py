"""What a loaded dataset holds, for ``m6rec validate``: rows read and kept, what was skipped or merged, how
the weight and the times are read, the role of every column, and who and what is cold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from m6rec.data import contract
from m6rec.data.columns import COLUMN_ROLES, ResolvedColumns
from m6rec.data.dataset import MAX_PROBLEMS_LISTED, Dataset

TABLE_ORDER = ("interactions", "test", "items", "users", "kg")
PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class DatasetSummary:
    """The summary of one dataset directory.

    ``report`` is :meth:`ValidationReport.to_dict`; ``time_range`` maps ``interactions`` / ``test`` to the
    first and last timestamp (unix seconds) where the table has them; ``cold_items_in_test`` counts distinct
    test items absent from the interactions; ``users_without_history`` counts distinct users of the users
    table or of the test set without any interaction.
    """

    directory: Path
    report: dict
    weight_column: str | None
    time_range: dict[str, tuple[int, int]]
    item_columns: ResolvedColumns
    user_columns: ResolvedColumns
    cold_items_in_test: int | None
    users_without_history: int
    kg_triples: int

    @property
    def has_timestamps(self) -> bool:
        return "interactions" in self.time_range

    def weight_reading(self) -> str:
        """How interactions are weighted, in words."""
        if self.weight_column is None:
            return "no weight column; every interaction weighs 1.0"
        reading = f"column {self.weight_column!r}, read as a number; an empty value weighs 1.0"
        minimum = self.report.get("min_rating")
        if minimum is None:
            return f"{reading}; every row is a positive (min_rating keeps only the values at or above it)"
        dropped = sum(self.report.get("below_min_rating", {}).values())
        return f"{reading}; rows below min_rating {minimum:g} are not positives ({dropped} dropped)"

    def to_dict(self) -> dict:
        """JSON-ready: the validation report's fields plus the weight, times, column roles and cold counts."""
        return {
            "directory": str(self.directory),
            **self.report,
            "weight_column": self.weight_column,
            "weight": self.weight_reading(),
            "has_timestamps": self.has_timestamps,
            "time_range": {
                table: {"first": first, "last": last, "first_utc": _utc(first), "last_utc": _utc(last)}
                for table, (first, last) in self.time_range.items()
            },
            "columns": {"items": self.item_columns.to_dict(), "users": self.user_columns.to_dict()},
            "cold_items_in_test": self.cold_items_in_test,
            "users_without_history": self.users_without_history,
            "kg_triples": self.kg_triples,
        }

    def render_text(self) -> str:
        """A report for a terminal, one fact per line."""
        report = self.report
        lines = [f"dataset {self.directory}", "rows read / kept:"]
        for table in (name for name in TABLE_ORDER if name in report["rows_read"]):
            lines.append(
                f"  {table:<13}{report['rows_read'][table]:>10} /{report['rows_kept'].get(table, 0):>10}"
            )
        lines.append(f"skipped rows: {report['skipped_total']}")
        lines += [f"  {reason}: {count}" for reason, count in sorted(report["skipped_rows"].items())]
        shown = report["problems"][:PROBLEMS_SHOWN]
        lines += [f"  {problem}" for problem in shown]
        more = len(report["problems"]) - len(shown) + report["problems_not_listed"]
        if more > 0:
            lines.append(
                f"  ... and {more} more rows with problems (--json lists the first {MAX_PROBLEMS_LISTED})"
            )
        lines.append(f"merged duplicate interactions: {report['merged_duplicate_interactions']}")
        lines.append(f"weight: {self.weight_reading()}")
        if not self.time_range:
            lines.append("timestamps: none")
        for table, (first, last) in self.time_range.items():
            lines.append(f"timestamps ({table}): {_utc(first)} .. {_utc(last)}")
        for table, columns in (("items", self.item_columns), ("users", self.user_columns)):
            if table in report["rows_read"]:
                lines.append(f"{table} columns (role, declared or inferred):")
                lines += _role_lines(columns)
        if self.cold_items_in_test is not None:
            lines.append(f"cold items in test (absent from interactions): {self.cold_items_in_test}")
        lines.append(f"users without history: {self.users_without_history}")
        lines.append(f"kg triples: {self.kg_triples}")
        return "\n".join(lines) + "\n"


def describe_dataset(dataset: Dataset) -> DatasetSummary:
    """The :class:`DatasetSummary` of a loaded dataset."""
    seen_items = set(dataset.interactions[contract.ITEM_ID])
    seen_users = set(dataset.interactions[contract.USER_ID])
    time_range = {}
    for table, frame in (("interactions", dataset.interactions), ("test", dataset.test)):
        if (
            frame is not None
            and contract.TIMESTAMP in frame.columns
            and frame[contract.TIMESTAMP].notna().any()
        ):
            times = frame[contract.TIMESTAMP].dropna()
            time_range[table] = (int(times.min()), int(times.max()))
    known_users = set()
    for frame in (dataset.users, dataset.test):
        if frame is not None:
            known_users |= set(frame[contract.USER_ID])
    cold_items = None
    if dataset.test is not None:
        cold_items = len(set(dataset.test[contract.ITEM_ID]) - seen_items)
    return DatasetSummary(
        directory=dataset.directory,
        report=dataset.report.to_dict(),
        weight_column=dataset.weight_column,
        time_range=time_range,
        item_columns=dataset.item_columns,
        user_columns=dataset.user_columns,
        cold_items_in_test=cold_items,
        users_without_history=len(known_users - seen_users),
        kg_triples=0 if dataset.kg is None else len(dataset.kg),
    )


def _role_lines(columns: ResolvedColumns) -> list[str]:
    if not columns.roles:
        return ["  (no attribute columns)"]
    lines = []
    for role in COLUMN_ROLES:
        named = [
            f"{column} (declared)" if column in columns.declared else column
            for column in columns.with_role(role)
        ]
        if named:
            lines.append(f"  {role:<12} {', '.join(named)}")
    return lines


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
