"""Run ``m6rec`` and SIGKILL it at a chosen moment (the crash tests' harness, ``tests/test_crashes.py``).

    python tests/killed_run.py MOMENT m6rec-arguments...
    python tests/killed_run.py MOMENT batch DATA_DIR MODEL_DIR USER_CHUNK   (pipelines.batch.batch_recommend)

The process kills itself with SIGKILL (no clean-up, no ``finally``) at:
  embeddings  right after the KG embedding file is written, before the two-tower model
  two-tower   in the middle of the two-tower training (its third batch)
  ranker      as the ranker's LightGBM training starts
  lists       as the final lists start (sources tuned, ranker trained)
  publishing  after the new generation is complete (generation.json written), before ``current`` switches
  switch      right after ``current`` switched, before the links beside it are brought up to date
  none        not at all (an uninterrupted run through the same harness)
  scoring     in the middle of a batch's scoring (its second chunk of users)
  pause       not at all, but the run sleeps $M6REC_TEST_PAUSE seconds (default 20) before it publishes,
              holding the folder's lock (for the race tests)
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Moment:
    """Where the harness kills a run, and what ``tests/test_crashes.py`` checks happened after."""

    where: str
    published_after_kill: str
    rerun: str


# ``tests/reliability_doc.py`` writes this table into docs/reliability.md.
MOMENTS = {
    "embeddings": Moment(
        "right after the KG embedding file is written, before the two-tower model",
        "the previous generation, every file byte-identical",
        "resumes the unfinished generation (reuses its features/), lists byte-identical to an uninterrupted run",
    ),
    "two-tower": Moment(
        "in the middle of the two-tower training (its third batch; the folder's saved models removed "
        "first, since a saved model of the same inputs is reused rather than trained)",
        "the previous generation, every file byte-identical",
        "resumes the unfinished generation, lists byte-identical to an uninterrupted run",
    ),
    "ranker": Moment(
        "as the ranker's LightGBM training starts",
        "the previous generation, every file byte-identical",
        "resumes the unfinished generation, lists byte-identical to an uninterrupted run",
    ),
    "lists": Moment(
        "as the final lists start, after the sources are tuned and the ranker is trained",
        "the previous generation, every file byte-identical",
        "resumes: reuses the embeddings, the two-tower model, the tuned sources and the trained ranker "
        "(each by a digest of its inputs), lists byte-identical to an uninterrupted run",
    ),
    "publishing": Moment(
        "after the new generation is complete (generation.json written), before current switches",
        "the previous generation, every file byte-identical",
        "publishes a new generation (the complete, unpublished one is kept aside, not resumed), lists "
        "byte-identical to an uninterrupted run",
    ),
    "switch": Moment(
        "right after current switched, before the links beside it are brought up to date",
        "the new generation, whole (generation.json present, lists byte-identical to an uninterrupted run)",
        "completes and publishes the next generation",
    ),
}


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _after(module, name: str, when) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        value = original(*args, **kwargs)
        if when(*args, **kwargs):
            _die()
        return value

    setattr(module, name, wrapped)


def _on_call(module, name: str, call: int) -> None:
    original, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            _die()
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def _before(module, name: str, action) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        action(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def arm(moment: str) -> None:
    if moment == "embeddings":
        import pipelines.item_embeddings

        _after(pipelines.item_embeddings, "record_report", lambda result, name, *rest: name == "kg")
    elif moment == "two-tower":
        import features.two_tower.training

        _on_call(features.two_tower.training, "_batch_loss", 3)
    elif moment == "ranker":
        from ranker.model import LightGBMRanker

        _on_call(LightGBMRanker, "fit", 1)
    elif moment == "lists":
        import pipelines.run

        _on_call(pipelines.run, "write_lists", 1)
    elif moment == "scoring":
        from pipelines.scoring import ListScorer

        _on_call(ListScorer, "score", 2)
    elif moment == "publishing":
        import m6rec.generations

        _on_call(m6rec.generations, "_fsync_tree", 1)
    elif moment == "switch":
        from m6rec.generations import Generations

        _on_call(Generations, "_link_names", 1)
    elif moment == "pause":
        import time

        import m6rec.generations

        seconds = float(os.environ.get("M6REC_TEST_PAUSE", "20"))
        _before(m6rec.generations.Generations, "_commit", lambda *args, **kwargs: time.sleep(seconds))
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    if sys.argv[2] == "batch":
        from m6rec.config import RunConfig
        from m6rec.log import configure_logging
        from pipelines.batch import batch_recommend

        configure_logging()
        data_dir, model_dir, user_chunk = sys.argv[3:6]
        batch_recommend(data_dir, model_dir, config=RunConfig(user_chunk=int(user_chunk)))
    else:
        from m6rec.cli import main

        main(sys.argv[2:])
