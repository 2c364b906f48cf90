"""The batch plan: what tonight's batch redoes, from the last lists of the same model and the current data.

:class:`PreviousLists` finds the last lists served the same way (a batch's, or the training run's own);
:func:`batch_plan` decides whether the sources are refitted or fold in the new interactions, and which
users are scored again (:class:`m6rec.config.BatchSettings`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from m6rec import __version__
from m6rec.config import RunConfig
from m6rec.data.contract import USER_ID
from m6rec.data.dataset import Dataset
from m6rec.data.interactions import HISTORY_DIGEST, InteractionMatrix, frame_digest, user_history_digests
from pipelines.run_folder import RunFolder
from pipelines.trained_model import TrainedModel, config_digest

log = logging.getLogger("m6rec")


@dataclass(frozen=True)
class PreviousLists:
    """The last lists of the same model served the same way: a batch's lists folder (or the training
    run's own lists when they came from every interaction), the data they were built from and each
    user's history digest then."""

    folder: RunFolder
    summary: dict
    data_fingerprint: str
    catalogue_digest: str
    digests: pd.DataFrame
    item_vectors_digest: str = ""

    @classmethod
    def find(cls, model: TrainedModel, folder: RunFolder, config: RunConfig) -> PreviousLists | None:
        report = folder.batch_report
        if report.is_file() and folder.recommendations.is_file() and folder.user_histories.is_file():
            summary = json.loads(report.read_text())
            same_model = summary.get("model_trained_at") == model.trained_at and (
                summary.get("model_config_digest") == model.manifest.config_digest
            )
            if same_model and summary.get("serving_digest") == config_digest(config):
                return cls(
                    folder,
                    summary,
                    summary.get("data_fingerprint", ""),
                    summary.get("catalogue_digest", ""),
                    pd.read_parquet(folder.user_histories),
                    summary.get("item_vectors_digest", ""),
                )
        if model.manifest.lists_from_all_interactions and model.folder.user_histories.is_file():
            if config_digest(model.manifest.run_config()) == config_digest(config):
                return cls.of_training_run(model)
        return None

    @classmethod
    def of_training_run(cls, model: TrainedModel) -> PreviousLists:
        """The training run's own lists (built from every interaction: ``lists_from_all_interactions``)."""
        manifest = model.manifest
        summary = {
            "m6rec_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_dir": str(model.directory.resolve()),
            "model_trained_at": model.trained_at,
            "model_config_digest": manifest.config_digest,
            "data_fingerprint": manifest.data_fingerprint,
            "catalogue_digest": manifest.catalogue_digest,
            "item_vectors_digest": manifest.item_vectors_digest,
            "serving_digest": config_digest(manifest.run_config()),
            "selected_model": manifest.selected_model,
            "sources": sorted(manifest.source_params),
            "from_training_run": True,
            "counts": _list_counts(model.folder),
        }
        digests = (
            pd.read_parquet(model.folder.user_histories) if model.folder.user_histories.is_file() else None
        )
        return cls(
            model.folder,
            summary,
            manifest.data_fingerprint,
            manifest.catalogue_digest,
            digests,
            manifest.item_vectors_digest,
        )

    def lists_except(self, user_ids: np.ndarray):
        """The previous list rows of every user not in ``user_ids``, one row group at a time."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        rescored = pa.array(pd.Series(user_ids).astype(str).to_numpy(dtype=object), type=pa.string())
        parquet = pq.ParquetFile(self.folder.recommendations)
        for group in range(parquet.num_row_groups):
            rows = parquet.read_row_group(group)
            users = rows.column(USER_ID).cast(pa.string())
            yield rows.filter(pc.invert(pc.is_in(users, value_set=rescored))).to_pandas()


@dataclass(frozen=True)
class BatchPlan:
    """What tonight's batch redoes: refit the sources or fold in, and which users are scored again."""

    refit: bool
    keeps_lists: bool
    changed_users: np.ndarray
    digests: pd.DataFrame
    catalogue_digest: str
    reason: str

    def rescoring_everyone(self, why: str, users: int) -> BatchPlan:
        """This plan, but every user scored again, because ``why``."""
        if not self.keeps_lists:
            return self
        mode = self.reason.split(";")[0]
        return replace(self, keeps_lists=False, reason=f"{mode}; {why}: all {users} users scored")

    def rescored_rows(self, matrix: InteractionMatrix) -> np.ndarray:
        if not self.keeps_lists:
            return np.arange(matrix.n_users, dtype=np.int64)
        return np.sort(matrix.users.positions(self.changed_users)).astype(np.int64)


def batch_plan(
    model: TrainedModel,
    config: RunConfig,
    dataset: Dataset,
    matrix: InteractionMatrix,
    previous: PreviousLists | None,
) -> BatchPlan:
    """Refit or fold in, and whom to score: see :class:`m6rec.config.BatchSettings`."""
    settings = config.batch
    digests = user_history_digests(dataset.interactions, matrix.users)
    catalogue = frame_digest(dataset.items)
    trained = model.manifest
    age_days = (datetime.now(UTC) - datetime.fromisoformat(trained.trained_at)).total_seconds() / 86_400
    # New since training: beyond what the dataset held then (its held-out test share is not new), as a
    # share of the interactions the sources were trained on.
    new = len(dataset.interactions) - (trained.dataset_interactions or trained.interactions)
    growth = new / max(trained.interactions, 1)
    refit_reasons = []
    if not settings.incremental:
        refit_reasons.append("incremental batches are off")
    if not trained.saved_sources:
        refit_reasons.append("the model has no saved sources (trained by an older m6rec)")
    if settings.refit_after_days is not None and age_days > settings.refit_after_days:
        refit_reasons.append(
            f"the model is {age_days:.1f} days old (refit_after_days {settings.refit_after_days:g})"
        )
    if growth > settings.refit_drift_share:
        refit_reasons.append(
            f"{new} interactions are new since training, {growth:.1%} of the {trained.interactions} trained on "
            f"(refit_drift_share {settings.refit_drift_share:g})"
        )
    if refit_reasons:
        log.warning(
            "batch: refitting every source on all interactions: %s; retrain to stop this",
            "; ".join(refit_reasons),
        )
    refit = bool(refit_reasons)
    changed, why_all = _changed_or_why_all(settings, previous, refit, catalogue, digests)
    if why_all is not None:
        reason = f"{_mode(refit)}; {why_all}: all {matrix.n_users} users scored"
    else:
        reason = (
            f"{_mode(refit)}; {len(changed)} of {matrix.n_users} users new or with a changed history are "
            "scored, the others keep their lists"
        )
    return BatchPlan(refit, why_all is None, changed, digests, catalogue, reason)


def _changed_or_why_all(settings, previous, refit, catalogue, digests) -> tuple[np.ndarray, str | None]:
    """The users to score again, or why every user is scored (then the users are not listed)."""
    nobody = np.array([], dtype=object)
    if previous is None:
        return nobody, "no earlier lists of this model"
    if refit:
        return nobody, "the sources were refitted"
    if previous.catalogue_digest != catalogue:
        return nobody, "the catalogue changed, so new items can reach every list"
    changed = _changed_users(previous.digests, digests)
    share = len(changed) / max(len(digests), 1)
    if share > settings.rescore_all_share:
        return changed, f"{share:.0%} of the users changed (rescore_all_share {settings.rescore_all_share:g})"
    return changed, None


def _mode(refit: bool) -> str:
    return "sources refitted" if refit else "saved sources fold in the new interactions"


def _changed_users(before: pd.DataFrame, now: pd.DataFrame) -> np.ndarray:
    """Users of ``now`` whose history digest differs from ``before``, or whom ``before`` did not know."""
    then = pd.Series(before[HISTORY_DIGEST].to_numpy(np.uint64), index=before[USER_ID].astype(str))
    then = then.reindex(now[USER_ID].astype(str))
    differs = then.isna().to_numpy() | (
        then.fillna(0).to_numpy(np.uint64) != now[HISTORY_DIGEST].to_numpy(np.uint64)
    )
    return now[USER_ID].astype(str).to_numpy(dtype=object)[differs]


def _list_counts(folder: RunFolder) -> dict:
    """Users and list rows of a training run's lists, from its report and the Parquet footer (every
    batch looks at the training lists, so their rows are not read for this)."""
    import pyarrow.parquet as pq

    return {
        "users": folder.read_run_report()["counts"]["users"],
        "list_rows": pq.ParquetFile(folder.recommendations).metadata.num_rows,
    }
