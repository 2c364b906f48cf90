"""Crash and race tests: ``m6rec run`` killed with SIGKILL at chosen moments (``tests/killed_run.py``),
and two runs started into one folder at once. After every kill, readers see one generation whole and
the re-run's lists are byte-identical to an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from killed_run import MOMENTS

HARNESS = Path(__file__).with_name("killed_run.py")
RUN_CONFIG = """\
baselines:
  models: [popularity, ease]
  search_spaces: {popularity: {}, ease: {l2: [100.0]}}
embeddings:
  modalities: [kg, cf]
  kg: {epochs: 5, dimension: 8}
  two_tower: {epochs: 2, dimension: 8}
ranker:
  training_folds: 1
  params: {n_estimators: 30, num_leaves: 7, min_child_samples: 20, learning_rate: 0.1, early_stopping_rounds: 10}
"""
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _run(moment: str, catalogue: Path, out: Path, config: Path, **environment) -> subprocess.CompletedProcess:
    arguments = [sys.executable, str(HARNESS), moment, "run", str(catalogue), "--out", str(out)]
    return subprocess.run(
        [*arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENVIRONMENT, **environment},
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _published(out: Path) -> Path:
    return (out / "current").resolve()


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """(catalogue, config, a folder after one uninterrupted run): a 60-user demo catalogue with KG and
    two-tower embeddings, two sources and a ranker."""
    from m6rec.demo_catalogue import DemoCatalogueSpec, generate_demo_catalogue

    root = tmp_path_factory.mktemp("crashes")
    spec = DemoCatalogueSpec(
        n_users=60, n_items=48, n_cold_items=6, interactions_per_user=(8, 20), seed=3, image_size=16
    )
    catalogue = generate_demo_catalogue(root / "catalogue", spec)
    config = root / "run.yaml"
    config.write_text(RUN_CONFIG)
    first = _run("none", catalogue, root / "first", config)
    assert first.returncode == 0, first.stderr
    return catalogue, config, root / "first"


@pytest.mark.parametrize("moment", [name for name in MOMENTS if name != "switch"])
def test_a_run_killed_before_publishing_leaves_the_last_generation_and_the_rerun_resumes(
    trained_once, tmp_path, moment
):
    catalogue, config, first = trained_once
    out = shutil.copytree(first, tmp_path / "out", symlinks=True)
    if moment == "two-tower":  # a saved model of the same inputs would be reused, not trained again
        for model in sorted(_published(out).rglob("two_tower"), reverse=True):
            shutil.rmtree(model)
    published, before = _published(out), _digests(_published(out))

    killed = _run(moment, catalogue, out, config)
    assert killed.returncode == -signal.SIGKILL
    assert _published(out) == published, "the published generation is still the last one"
    assert _digests(published) == before, "and every file of it is as it was"
    pd.read_parquet(out / "recommendations.parquet")
    assert (out / "model.json").read_bytes() == (published / "model.json").read_bytes()

    rerun = _run("none", catalogue, out, config)
    assert rerun.returncode == 0, rerun.stderr
    assert _published(out) != published
    resumed = "resuming the run that did not finish" in rerun.stderr
    assert resumed == (moment != "publishing"), "a generation killed once complete is not resumed"
    if moment == "lists":
        for reused in (
            "the tuning stage finished before",
            "the ranker stage finished before",
            "two-tower: the saved model",
        ):
            assert reused in rerun.stderr, reused
    assert (out / "recommendations.parquet").read_bytes() == (first / "recommendations.parquet").read_bytes()


def test_a_run_killed_right_after_the_switch_is_published_whole(trained_once, tmp_path):
    catalogue, config, first = trained_once
    out = shutil.copytree(first, tmp_path / "out", symlinks=True)
    published = _published(out)

    killed = _run("switch", catalogue, out, config)
    assert killed.returncode == -signal.SIGKILL
    new = _published(out)
    assert new != published and (new / "generation.json").is_file()
    assert (out / "recommendations.parquet").read_bytes() == (new / "recommendations.parquet").read_bytes()
    assert (new / "recommendations.parquet").read_bytes() == (first / "recommendations.parquet").read_bytes()
    assert _run("none", catalogue, out, config).returncode == 0


def _start(moment: str, catalogue: Path, out: Path, config: Path, **environment) -> subprocess.Popen:
    arguments = [sys.executable, str(HARNESS), moment, "run", str(catalogue), "--out", str(out)]
    return subprocess.Popen(
        [*arguments, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENVIRONMENT, **environment},
    )


def _await_holder(out: Path, run: subprocess.Popen) -> None:
    """Wait until ``run`` holds the lock of ``out`` (its lock file names it)."""
    lock = out / ".m6rec.lock"
    deadline = time.monotonic() + 300
    while not (lock.is_file() and f'"pid": {run.pid}' in lock.read_text()):
        assert run.poll() is None, run.stderr.read()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.1)


@pytest.mark.parametrize(("wait", "codes"), [("0", (0, 2)), ("600", (0, 0))])
def test_two_runs_into_one_folder_at_once(trained_once, tmp_path, wait, codes):
    """A second run started while the first holds the folder fails at once with one line naming it, or,
    told to wait, publishes after it. Either way the lists are those of one uninterrupted run."""
    catalogue, config, first = trained_once
    out = tmp_path / "out"
    holder = _start("pause", catalogue, out, config, M6REC_TEST_PAUSE="15")
    _await_holder(out, holder)
    second = _start("none", catalogue, out, config, M6REC_LOCK_WAIT_SECONDS=wait)
    outcomes = [(run.wait(timeout=600), run.stderr.read()) for run in (holder, second)]
    assert tuple(code for code, _ in outcomes) == codes, outcomes
    if codes[1] == 2:
        error = [line for line in outcomes[1][1].splitlines() if line.startswith("error:")]
        assert len(error) == 1, outcomes[1][1]
        assert error[0].startswith(
            f"error: {out}: another m6rec run is writing this folder (PID {holder.pid} on "
        )
        assert "Traceback" not in outcomes[1][1]
    generations = sorted(path.name for path in (out / "generations").iterdir())
    assert generations == ["000001", "000002"][: codes.count(0)]
    assert (out / "recommendations.parquet").read_bytes() == (first / "recommendations.parquet").read_bytes()


def test_a_batch_killed_while_scoring_leaves_the_last_lists_and_the_rerun_gives_an_uninterrupted_batchs(
    trained_once, tmp_path
):
    """The batch's lists are a generation of the model folder too: killed in its second chunk of users,
    the published lists stay whole; the re-run gives what a batch that was never killed gives."""
    catalogue, _, first = trained_once
    data = shutil.copytree(catalogue, tmp_path / "data")
    interactions = pd.read_parquet(data / "interactions.parquet")
    lists = pd.read_parquet(first / "recommendations.parquet")
    extra = interactions.iloc[[0]].assign(user_id=lists["user_id"].iloc[0], item_id=lists["item_id"].iloc[0])
    pd.concat([interactions, extra]).to_parquet(data / "interactions.parquet")
    killed_model, clean_model = (
        shutil.copytree(first, tmp_path / name, symlinks=True) for name in ("killed", "clean")
    )

    def batch(moment: str, model: Path) -> subprocess.CompletedProcess:
        arguments = [sys.executable, str(HARNESS), moment, "batch", str(data), str(model), "1"]
        return subprocess.run(arguments, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)

    published, before = _published(killed_model), _digests(_published(killed_model))
    killed = batch("scoring", killed_model)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _published(killed_model) == published and _digests(published) == before
    assert batch("none", killed_model).returncode == 0
    assert batch("none", clean_model).returncode == 0
    for name in ("recommendations.parquet", "batch.json"):
        assert (killed_model / "lists" / name).is_file()
    assert (killed_model / "lists" / "recommendations.parquet").read_bytes() == (
        clean_model / "lists" / "recommendations.parquet"
    ).read_bytes()
