"""Loading a dataset directory into validated tables, with a report of what was skipped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pandas as pd

from m6rec.data import contract
from m6rec.data.columns import (
    COLUMN_ROLES,
    COLUMNS_FILE,
    TABLES,
    ColumnRoles,
    ResolvedColumns,
    resolve_columns,
)
from m6rec.data.tables import (
    TABLE_SUFFIXES,
    RowProblem,
    find_table,
    id_problems,
    numeric_column,
    read_table,
    row_location,
)
from m6rec.errors import ConfigError, DataError

MAX_PROBLEMS_LISTED = 200


if TYPE_CHECKING:
    from m6rec.data.contained import MediaHashes


@dataclass
class ValidationReport:
    """What loading found: rows read and kept per table, and every skipped row by reason."""

    rows_read: dict[str, int] = field(default_factory=dict)
    rows_kept: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    merged_duplicate_interactions: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    below_min_rating: dict[str, int] = field(default_factory=dict)
    min_rating: float | None = None

    def add(self, problems: list[RowProblem], reason: str) -> None:
        self.skipped[reason] += len(problems)
        self.problems.extend(problems)

    def to_dict(self) -> dict:
        """JSON-ready summary; lists at most ``MAX_PROBLEMS_LISTED`` problems."""
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "skipped_rows": dict(self.skipped),
            "skipped_total": sum(self.skipped.values()),
            "merged_duplicate_interactions": self.merged_duplicate_interactions,
            "min_rating": self.min_rating,
            "below_min_rating": self.below_min_rating,
            "problems": [str(problem) for problem in self.problems[:MAX_PROBLEMS_LISTED]],
            "problems_not_listed": max(0, len(self.problems) - MAX_PROBLEMS_LISTED),
        }


@dataclass
class Dataset:
    """A validated dataset directory.

    ``interactions`` and ``test`` have string ``user_id``/``item_id``, a float ``weight`` (1.0 when the
    file has no weight column) and, when the file has one, an integer ``timestamp``. ``item_columns`` and
    ``user_columns`` hold the role of every attribute column (declared in ``columns.yaml`` or the run
    configuration, else inferred); every consumer of attributes asks them.
    """

    directory: Path
    interactions: pd.DataFrame
    test: pd.DataFrame | None
    items: pd.DataFrame | None
    users: pd.DataFrame | None
    kg: pd.DataFrame | None
    weight_column: str | None
    report: ValidationReport
    item_columns: ResolvedColumns = field(default_factory=ResolvedColumns)
    user_columns: ResolvedColumns = field(default_factory=ResolvedColumns)
    allowed_roots: tuple[Path, ...] = ()
    # Where the content hashes of its media files are kept (m6rec.data.contained.MediaHashes); the
    # pipelines set it to their output folder's store, so no unchanged media file is read twice.
    media_hashes: MediaHashes | None = None

    @property
    def has_timestamps(self) -> bool:
        return contract.TIMESTAMP in self.interactions.columns


class _RowPolicy:
    """Fails on the first bad row, or skips bad rows and records them in the report."""

    def __init__(self, skip_invalid_rows: bool, report: ValidationReport):
        self.skip_invalid_rows = skip_invalid_rows
        self.report = report

    def apply(
        self, frame: pd.DataFrame, bad: np.ndarray, problems: list[RowProblem], reason: str
    ) -> pd.DataFrame:
        if not problems:
            return frame
        if not self.skip_invalid_rows:
            first = problems[0]
            more = f" ({len(problems) - 1} more rows with problems)" if len(problems) > 1 else ""
            raise DataError(
                first.file,
                first.problem + more,
                location=first.location,
                hint="fix the file, or pass --skip-invalid-rows to skip bad rows and count them in the "
                "report",
            )
        self.report.add(problems, reason)
        return frame.loc[~bad]


def load_dataset(
    directory: str | Path,
    *,
    skip_invalid_rows: bool = False,
    columns: ColumnRoles | None = None,
    allow_outside_paths: Sequence[str | Path] = (),
    min_rating: float | None = None,
) -> Dataset:
    """Read and validate every contract table in ``directory``, and resolve the roles of its columns.

    With ``skip_invalid_rows`` bad rows are dropped and counted in ``Dataset.report``; otherwise the first
    bad row raises :class:`DataError` naming file, row and problem. Column roles declared in the
    directory's ``columns.yaml`` are overridden, column by column, by those in ``columns`` (the run
    configuration's section); undeclared columns get the inferred role (:func:`resolve_columns`).

    With ``min_rating``, interactions (and test rows) whose weight is below it are not positives: they are
    dropped and counted (``ValidationReport.below_min_rating``); a negative weight is always a bad row.

    Every table is a regular file inside ``directory`` or one of ``allow_outside_paths`` (a symlinked
    table that lands elsewhere is refused); the media paths of the items are held to the same folders
    (``Dataset.allowed_roots``, :mod:`m6rec.data.contained`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(str(directory), "dataset directory does not exist")
    allowed_roots = tuple(Path(root).expanduser() for root in allow_outside_paths)
    check_tables_contained(directory, allowed_roots)
    declared = read_columns_file(directory)
    report = ValidationReport(min_rating=min_rating)
    policy = _RowPolicy(skip_invalid_rows, report)

    items = _load_entities(directory, contract.ITEMS, contract.ITEM_ID, policy)
    users = _load_entities(directory, contract.USERS, contract.USER_ID, policy)
    interactions, weight_column = _load_interactions(
        directory, contract.INTERACTIONS, items, policy, min_rating
    )
    test_path = find_table(directory, contract.TEST)
    test = _load_interactions(directory, contract.TEST, items, policy, min_rating)[0] if test_path else None
    kg = _load_kg(directory, policy)
    item_columns, user_columns = _column_roles(directory, items, users, declared, columns)
    for name, frame in (("interactions", interactions), ("test", test), ("items", items), ("users", users)):
        if frame is not None:
            report.rows_kept[name] = len(frame)
    if kg is not None:
        report.rows_kept["kg"] = len(kg)
    return Dataset(
        directory,
        interactions,
        test,
        items,
        users,
        kg,
        weight_column,
        report,
        item_columns,
        user_columns,
        allowed_roots,
    )


def check_tables_contained(directory: Path, allowed_roots: tuple[Path, ...] = ()) -> None:
    """Every table file present (and ``columns.yaml``) is a regular file that resolves inside
    ``directory`` or ``allowed_roots``; else a one-line :class:`DataError` naming it and why."""
    from m6rec.data.contained import RejectedPath, contained_path

    names = [f"{spec.stem}{suffix}" for spec in contract.ALL_TABLES for suffix in TABLE_SUFFIXES]
    for name in [*names, COLUMNS_FILE]:
        path = directory / name
        if path.exists() or path.is_symlink():
            try:
                contained_path(directory, name, allowed_roots)
            except RejectedPath as rejected:
                raise DataError(str(path), str(rejected).removeprefix(f"{name}: ")) from None


def read_columns_file(directory: str | Path) -> ColumnRoles:
    """The column roles declared in ``directory/columns.yaml`` (none when the file is absent).

    Raises :class:`DataError` naming the file and the bad key for anything but a mapping of ``items`` and
    ``users`` to mappings of column names to roles (:data:`COLUMN_ROLES`).
    """
    import yaml

    from m6rec.io import load_yaml

    path = Path(directory) / COLUMNS_FILE
    if not path.is_file():
        return ColumnRoles()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(str(path), "not valid UTF-8; re-encode the file as UTF-8") from None
    except yaml.YAMLError as error:
        problem = str(error).strip().splitlines()[0]
        raise DataError(str(path), f"not valid YAML: {problem}") from None
    if raw is None:
        return ColumnRoles()
    if not isinstance(raw, dict):
        raise DataError(str(path), f"expected a mapping with keys {' and/or '.join(TABLES)}")
    declared = {}
    for table, roles in raw.items():
        if table not in TABLES:
            raise DataError(str(path), f"unknown key {table!r}; keys: {', '.join(TABLES)}")
        if roles is None:
            roles = {}
        if not isinstance(roles, dict):
            raise DataError(str(path), f"{table}: expected a mapping of column names to roles")
        for column, role in roles.items():
            if role not in COLUMN_ROLES:
                raise DataError(
                    str(path), f"{table}.{column}: unknown role {role!r}; roles: {', '.join(COLUMN_ROLES)}"
                )
        declared[table] = {str(column): role for column, role in roles.items()}
    return ColumnRoles(**declared)


def _column_roles(
    directory: Path,
    items: pd.DataFrame | None,
    users: pd.DataFrame | None,
    from_file: ColumnRoles,
    configured: ColumnRoles | None,
) -> tuple[ResolvedColumns, ResolvedColumns]:
    """Roles of the items' and users' columns: ``configured`` over ``from_file`` over inference."""
    columns_file = str(directory / COLUMNS_FILE)
    resolved = []
    for spec, frame in ((contract.ITEMS, items), (contract.USERS, users)):
        file_roles = getattr(from_file, spec.stem)
        config_roles = getattr(configured, spec.stem) if configured is not None else {}
        _check_declared(columns_file, directory, spec, frame, file_roles)
        _check_declared("config", directory, spec, frame, config_roles)
        columns = resolve_columns(frame, spec.id_columns[0], {**file_roles, **config_roles})
        for media in ("image_path", "audio_path"):
            named = columns.with_role(media)
            if len(named) > 1:
                where = "config" if any(column in config_roles for column in named) else columns_file
                _declaration_error(
                    where,
                    f"{spec.stem}: columns {', '.join(named)} all have role {media}; keep it on one of "
                    "them and declare the others (for instance ignored)",
                )
        resolved.append(columns)
    return resolved[0], resolved[1]


def _check_declared(
    where: str, directory: Path, spec: contract.TableSpec, frame: pd.DataFrame | None, roles: dict
) -> None:
    """Every declared column exists in its table and is not the ID column."""
    for column in roles:
        key = f"{spec.stem}.{column}"
        if frame is None:
            _declaration_error(where, f"{key}: declared, but the dataset has no {spec.stem} table")
        if column == spec.id_columns[0]:
            _declaration_error(where, f"{key}: {column} is the ID column and takes no role")
        if column not in frame.columns:
            found = ", ".join(str(name) for name in frame.columns if name != spec.id_columns[0]) or "none"
            table_file = find_table(directory, spec).name
            _declaration_error(where, f"{key}: no such column in {table_file} (columns: {found})")


def _declaration_error(where: str, problem: str) -> NoReturn:
    """Raise ``problem`` against the file ``where``, or as a configuration error when ``where`` is config."""
    if where == "config":
        raise ConfigError(f"columns.{problem}")
    raise DataError(where, problem)


def _load_entities(directory: Path, spec: contract.TableSpec, id_column: str, policy: _RowPolicy):
    path = find_table(directory, spec)
    if path is None:
        return None
    frame = read_table(path, spec)
    policy.report.rows_read[spec.stem] = len(frame)
    bad, problems = id_problems(path, frame, spec.id_columns)
    frame = policy.apply(frame, bad, problems, f"{spec.stem}: empty id")
    duplicated = frame[id_column].duplicated(keep="first").to_numpy()
    # Rows skipped above are gone from ``frame``; its index still holds each row's position in the file.
    problems = [
        RowProblem(
            str(path),
            row_location(path, frame.index[position]),
            f"duplicate {id_column} {frame[id_column].iloc[position]!r}",
        )
        for position in np.flatnonzero(duplicated)
    ]
    frame = policy.apply(frame, duplicated, problems, f"{spec.stem}: duplicate id")
    return frame.reset_index(drop=True)


def _load_interactions(
    directory: Path,
    spec: contract.TableSpec,
    items: pd.DataFrame | None,
    policy: _RowPolicy,
    min_rating: float | None = None,
):
    path = find_table(directory, spec)
    frame = read_table(path, spec)
    policy.report.rows_read[spec.stem] = len(frame)
    frame.index = np.arange(len(frame))
    bad, problems = id_problems(path, frame, spec.id_columns)
    weight_column = next((name for name in contract.WEIGHT_ALIASES if name in frame.columns), None)
    columns = {contract.USER_ID: frame[contract.USER_ID], contract.ITEM_ID: frame[contract.ITEM_ID]}
    if weight_column:
        weight, bad_weight, weight_problems = numeric_column(path, frame, weight_column)
        negative = ~bad_weight & (weight.fillna(1.0).to_numpy() < 0)
        weight_problems += [
            RowProblem(
                str(path),
                row_location(path, position),
                f"{weight_column} {frame[weight_column].iloc[position]!r} is negative; weights are positive "
                "feedback (drop such rows, or keep only the ratings that count with min_rating)",
            )
            for position in np.flatnonzero(negative)
        ]
        bad_weight |= negative
        weight_problems.sort(key=lambda problem: _location_order(problem.location))
        columns[contract.WEIGHT] = weight.fillna(1.0)
        problems += [
            p
            for p, position in zip(weight_problems, np.flatnonzero(bad_weight), strict=True)
            if not bad[position]
        ]
        bad |= bad_weight
    else:
        columns[contract.WEIGHT] = pd.Series(1.0, index=frame.index)
    if contract.TIMESTAMP in frame.columns:
        timestamp, bad_time, time_problems = _timestamps(path, frame)
        columns[contract.TIMESTAMP] = timestamp
        problems += [
            p
            for p, position in zip(time_problems, np.flatnonzero(bad_time), strict=True)
            if not bad[position]
        ]
        bad |= bad_time
    if items is not None:
        known = frame[contract.ITEM_ID].isin(set(items[contract.ITEM_ID])).to_numpy()
        unknown = ~known & ~bad
        problems += [
            RowProblem(
                str(path),
                row_location(path, position),
                f"item_id {frame[contract.ITEM_ID].iloc[position]!r} is not in the items table",
            )
            for position in np.flatnonzero(unknown)
        ]
        bad |= unknown
    problems.sort(key=lambda problem: _location_order(problem.location))
    result = pd.DataFrame(columns)
    result = policy.apply(result, bad, problems, f"{spec.stem}: invalid row")
    if result.empty:
        raise DataError(str(path), f"no valid row left: all {len(frame)} rows were skipped as invalid")
    if min_rating is not None and weight_column:
        below = (result[contract.WEIGHT] < min_rating).to_numpy()
        policy.report.below_min_rating[spec.stem] = int(below.sum())
        result = result[~below].reset_index(drop=True)
    return _merge_duplicates(result, policy.report), weight_column


def _timestamps(path: Path, frame: pd.DataFrame) -> tuple[pd.Series, np.ndarray, list[RowProblem]]:
    raw = frame[contract.TIMESTAMP]
    numeric, bad, problems = numeric_column(path, frame, contract.TIMESTAMP)
    if bad.any() and bad.sum() == raw.notna().sum():
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        bad = raw.notna().to_numpy() & parsed.isna().to_numpy()
        numeric = _unix_seconds(parsed)
        problems = [
            RowProblem(
                str(path),
                row_location(path, position),
                f"timestamp {raw.iloc[position]!r} is neither a unix time nor an ISO 8601 date",
            )
            for position in np.flatnonzero(bad)
        ]
    elif pd.api.types.is_datetime64_any_dtype(raw):
        numeric = _unix_seconds(raw)
    numeric = numeric.astype("float64")
    beyond = ~bad & (numeric.abs().fillna(0).to_numpy() >= MAX_UNIX_SECONDS)
    if beyond.any():
        problems = sorted(
            problems
            + [
                RowProblem(str(path), row_location(path, position), _beyond_reason(raw.iloc[position]))
                for position in np.flatnonzero(beyond)
            ],
            key=lambda problem: _location_order(problem.location),
        )
        bad = bad | beyond
    numeric = numeric.where(~bad)  # a bad row's value (inf, out of range) never reaches the integer cast
    return np.floor(numeric).astype("Int64"), bad, problems


# Unix seconds past year 5138 (or before -1199): no interaction's time, and millisecond clocks land here.
MAX_UNIX_SECONDS = 1e11


def _beyond_reason(value) -> str:
    number = float(pd.to_numeric(value, errors="coerce")) if not isinstance(value, pd.Timestamp) else np.nan
    if MAX_UNIX_SECONDS <= abs(number) < MAX_UNIX_SECONDS * 1e3 * 10:
        return f"timestamp {value!r} looks like milliseconds; timestamps are unix seconds (divide by 1000)"
    return f"timestamp {value!r} is not a unix time in seconds (beyond year 5000)"


def _unix_seconds(times: pd.Series) -> pd.Series:
    """Unix seconds of a datetime column of any resolution; naive times are UTC, NaT stays missing."""
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _merge_duplicates(frame: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    """Keep one row per (user, item): the latest one when timestamps exist, else the last one. Only the
    repeated pairs are sorted (a whole 20M-row table sorted and copied was the load's peak)."""
    key = [contract.USER_ID, contract.ITEM_ID]
    repeated = frame.duplicated(key, keep=False).to_numpy()
    if repeated.any():
        group = frame.loc[repeated]
        if contract.TIMESTAMP in frame.columns:
            group = group.sort_values(contract.TIMESTAMP, kind="stable")
        dropped = group.index[group.duplicated(key, keep="last").to_numpy()]
        report.merged_duplicate_interactions += len(dropped)
        frame = frame.drop(index=dropped)
    return frame.reset_index(drop=True)


def _load_kg(directory: Path, policy: _RowPolicy) -> pd.DataFrame | None:
    path = find_table(directory, contract.KG)
    if path is None:
        return None
    frame = read_table(path, contract.KG)
    policy.report.rows_read["kg"] = len(frame)
    bad, problems = id_problems(path, frame, contract.KG.id_columns)
    frame = policy.apply(frame, bad, problems, "kg: empty field")
    columns = [contract.KG_HEAD, contract.KG_RELATION, contract.KG_TAIL]
    return frame[columns].drop_duplicates().reset_index(drop=True)


def _location_order(location: str) -> int:
    return int(location.split()[-1])
