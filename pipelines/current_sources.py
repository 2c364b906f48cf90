"""The candidate sources a batch serves with: the ones the training run saved, brought up to tonight's
interactions (folded in, or refitted), only those that serve the model's lists, and none whose side
inputs are missing tonight."""

from __future__ import annotations

import logging
import time

from m6rec.candidates import create_source
from m6rec.candidates.registry import source_class
from m6rec.candidates.side_inputs import SideInputs
from m6rec.data.interactions import InteractionMatrix
from pipelines.run_folder import ModelNotTrainedError
from pipelines.trained_model import TrainedModel

log = logging.getLogger("m6rec")


def current_sources(
    matrix: InteractionMatrix, model: TrainedModel, inputs: SideInputs, *, refit: bool
) -> dict:
    """Every source that serves the model's lists (all of them under the ranker, else the selected one and
    the popularity fallback), brought up to ``matrix``: loaded as the training run saved it and folded
    into ``matrix`` (the item side as trained), or, with ``refit`` or for a source not saved (or saved
    without what fold-in needs), refitted with its tuned parameters. A source whose side inputs are
    missing tonight steps aside with a warning; when that is the one list that serves, one error line."""
    from m6rec.candidates.base import FoldInError
    from m6rec.candidates.registry import load_source

    manifest = model.manifest
    serving = set(manifest.source_params) if manifest.ranker_used else {manifest.selected_model, "popularity"}
    sources = {}
    for name, params in manifest.source_params.items():
        if name not in serving:
            continue
        needs = source_class(name).side_inputs
        if not inputs.provides(needs):
            missing = ", ".join(sorted(set(needs) - set(inputs.available())))
            if not manifest.ranker_used and name == manifest.selected_model:
                raise ModelNotTrainedError(
                    f"{model.directory}: the model serves the lists of {name}, which needs {missing}; "
                    "tonight's dataset has none",
                    hint="restore the missing input, or retrain on tonight's data",
                )
            log.warning("source %s steps aside tonight: its side inputs (%s) are missing", name, missing)
            continue
        started, how = time.perf_counter(), "refitted"
        if not refit and name in model.manifest.saved_sources:
            try:
                sources[name], how = (
                    load_source(model.folder.source_dir(name)).fold_in(matrix, inputs),
                    "folded in",
                )
            except FoldInError as error:
                log.warning("%s; refitting it", error)
        if name not in sources:
            sources[name] = create_source(name, **params).fit(matrix, inputs)
        log.info("%s %s in %.1f s", name, how, time.perf_counter() - started)
    return sources
