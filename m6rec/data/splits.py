"""Train/test splits of an interaction table.

Every split takes a frame with ``user_id``, ``item_id`` (and ``timestamp`` for the temporal ones) and
returns ``(train, test)`` frames with the same columns. Split specs are short strings so that configs and
the CLI can name them: ``random:0.25``, ``temporal:0.2``, ``leave-last-out:1``, ``cutoff:2024-01-01``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from m6rec.data.contract import TIMESTAMP, USER_ID
from m6rec.errors import ConfigError, DataError

# Seconds; the unix times pandas can represent (years 1677 to 2262).
MAX_UNIX_TIME = 9_223_372_036


def random_split(
    frame: pd.DataFrame, test_ratio: float, *, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, a seeded random ``test_ratio`` share of the interactions goes to test.

    Each user keeps ``round((1 - test_ratio) * n)`` interactions in train (at least one), the Microsoft
    Recommenders stratified-split convention.
    """
    _check_ratio(test_ratio)
    order = np.random.default_rng(seed).permutation(len(frame))
    return _split_by_position(frame, order, test_ratio)


def temporal_split(frame: pd.DataFrame, test_ratio: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the latest ``test_ratio`` share of the interactions (by timestamp) goes to test."""
    _check_ratio(test_ratio)
    _require_timestamps(frame, "temporal")
    return _split_by_position(frame, _time_order(frame), test_ratio)


def leave_last_out(frame: pd.DataFrame, n: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last ``n`` interactions by timestamp go to test; users with ``n`` or fewer keep all."""
    if n < 1:
        raise ConfigError(f"leave-last-out needs n >= 1, got {n}")
    _require_timestamps(frame, "leave-last-out")
    order = _time_order(frame)
    users = _users_in(frame, order)
    from_end = users.groupby(users, sort=False).cumcount(ascending=False).to_numpy()
    sizes = users.groupby(users, sort=False).transform("size").to_numpy()
    is_test = (from_end < n) & (sizes > n)
    return _select(frame, order, is_test)


def time_cutoff(frame: pd.DataFrame, cutoff: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions at or after the unix time ``cutoff`` go to test, the rest to train."""
    _require_timestamps(frame, "cutoff")
    is_test = (frame[TIMESTAMP] >= cutoff).fillna(False).to_numpy(dtype=bool)
    return frame.loc[~is_test], frame.loc[is_test]


@dataclass(frozen=True)
class SplitSpec:
    """A named split and its parameter, parsed from strings like ``random:0.25``."""

    kind: str
    value: float
    seed: int = 42

    KINDS = ("random", "temporal", "leave-last-out", "cutoff")

    @classmethod
    def parse(cls, text: str, *, seed: int = 42) -> SplitSpec:
        kind, _, value = text.partition(":")
        if kind not in cls.KINDS:
            raise ConfigError(
                f"unknown split {text!r}; use one of: random:0.25, temporal:0.2, "
                "leave-last-out:1, cutoff:<unix time or ISO date>"
            )
        defaults = {"random": "0.25", "temporal": "0.2", "leave-last-out": "1"}
        value = value or defaults.get(kind, "")
        if kind == "cutoff":
            return cls(kind, float(_parse_time(value)), seed)
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"split {text!r}: {value!r} is not a number") from None
        if kind == "leave-last-out" and not (number >= 1 and number.is_integer()):
            raise ConfigError(f"split {text!r}: leave-last-out needs a whole number of interactions >= 1")
        if kind != "leave-last-out":
            _check_ratio(number)
        return cls(kind, number, seed)

    def apply(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split ``frame`` according to this spec."""
        if self.kind == "random":
            return random_split(frame, self.value, seed=self.seed)
        if self.kind == "temporal":
            return temporal_split(frame, self.value)
        if self.kind == "leave-last-out":
            return leave_last_out(frame, int(self.value))
        return time_cutoff(frame, int(self.value))

    def __str__(self) -> str:
        value = int(self.value) if self.kind in ("leave-last-out", "cutoff") else self.value
        return f"{self.kind}:{value}"


def _split_by_position(frame: pd.DataFrame, order: np.ndarray, test_ratio: float):
    users = _users_in(frame, order)
    position = users.groupby(users, sort=False).cumcount().to_numpy()
    sizes = users.groupby(users, sort=False).transform("size").to_numpy()
    n_train = np.maximum(1, np.round((1.0 - test_ratio) * sizes)).astype(np.int64)
    return _select(frame, order, position >= n_train)


# Splits work on row positions, not index labels, so frames with repeated labels (pd.concat) split correctly.
def _time_order(frame: pd.DataFrame) -> np.ndarray:
    """Row positions of ``frame`` sorted by timestamp, ties in file order."""
    return frame[TIMESTAMP].reset_index(drop=True).sort_values(kind="stable").index.to_numpy()


def _users_in(frame: pd.DataFrame, order: np.ndarray) -> pd.Series:
    return pd.Series(frame[USER_ID].to_numpy()[order])


def _select(frame: pd.DataFrame, order: np.ndarray, is_test: np.ndarray):
    """(train, test) in ``frame``'s own row order, where ``is_test`` is given for the rows in ``order``."""
    mask = np.zeros(len(frame), dtype=bool)
    mask[order[is_test]] = True
    return frame.loc[~mask], frame.loc[mask]


def _check_ratio(test_ratio: float) -> None:
    if not 0.0 < test_ratio < 1.0:
        raise ConfigError(f"test ratio must be between 0 and 1, got {test_ratio}")


def _require_timestamps(frame: pd.DataFrame, kind: str) -> None:
    if TIMESTAMP not in frame.columns or frame[TIMESTAMP].isna().all():
        raise DataError("interactions", f"the {kind} split needs a timestamp column; use random:0.25 instead")


def _parse_time(value: str) -> int:
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not np.isfinite(number) or abs(number) > MAX_UNIX_TIME:
            raise ConfigError(
                f"cutoff {value!r} is not a unix time between -{MAX_UNIX_TIME} and {MAX_UNIX_TIME}"
            )
        return int(number)
    try:
        return int(pd.Timestamp(value, tz="UTC").timestamp())
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        raise ConfigError(f"cutoff {value!r} is neither a unix time nor a date") from None
