"""The console log: a level prefix on every line, one random-weights warning per process, per-epoch lines
only on a terminal or at DEBUG, third-party chatter held back, m6rec's warnings as warnings in Prefect."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import importlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from m6rec.log import (
    LOGGER_NAME,
    QUIET_LIBRARIES,
    LevelPrefixFormatter,
    configure_logging,
)
from m6rec.progress import PROGRESS_ENV

REPO = Path(__file__).resolve().parents[1]
LEVEL_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [^:]+: ")
EPOCH_LINE = re.compile(r"^(\w+) m6rec: (kg|two-tower) epoch (\d+)/3: ")
RANDOM_WEIGHTS = "RANDOM-INIT weights"
TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}
# One process that logs the way a run does: FAISS loads, two image encoders fall back to random weights
# (ViT-B-32 with a tag that cannot be downloaded offline, as in the demo), the KG and two-tower models
# train, a library warns with a multi-line message and a stage fails with a traceback.
RUN_SCRIPT = """
import logging, sys, warnings
import numpy as np, pandas as pd
from m6rec.log import configure_logging
configure_logging(verbose=sys.argv[2] == "verbose")

from features.image import ImageEncoder
from features.kg import KGConfig, train_kg_embeddings
from features.two_tower import TwoTowerConfig, train_two_tower
from m6rec.candidates.faiss_index import build_index
from m6rec.data.interactions import IdIndex, InteractionMatrix

out = sys.argv[1]
for _ in range(2):
    ImageEncoder(model="ViT-B-32", pretrained="laion2b_s34b_b79k", allow_random_weights=True, force_cpu=True)
vectors = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)  # enough to train IVF4
build_index(vectors, factory="Flat")
build_index(vectors, factory="IVF4,Flat")
triples = pd.DataFrame(
    [(f"item-{i}", "tagged", f"tag-{i % 3}") for i in range(12)], columns=["head", "relation", "tail"]
)
train_kg_embeddings(triples, [f"item-{i}" for i in range(12)], f"{out}/kg.parquet",
                    KGConfig(dimension=8, epochs=3, batch_size=16, force_cpu=True))
pairs = pd.DataFrame([(f"u{u}", f"i{(u + k) % 10}") for u in range(20) for k in range(3)],
                     columns=["user_id", "item_id"])
users, items = IdIndex.from_values(pairs["user_id"]), IdIndex.from_values(pairs["item_id"])
train_two_tower(InteractionMatrix.from_frame(pairs, users, items), {},
                TwoTowerConfig(epochs=3, dimension=8, batch_size=16, force_cpu=True))
warnings.warn("a library's warning\\nwith a second line")
try:
    raise RuntimeError("a deliberate failure")
except RuntimeError:
    logging.getLogger("m6rec").warning("stage failed", exc_info=True)
"""


@pytest.fixture
def restored_logging():
    """Prefect's own handlers taken off its loggers for the test: an earlier test's flow run may have set up
    Prefect's logging, whose API handler warns outside a flow run. ``conftest.restore_logging`` undoes the
    rest of what the test changes (root handlers and level, logger levels, warnings capture)."""
    loggers = [logging.getLogger(name) for name in ("prefect", "prefect.flow_runs", "prefect.task_runs")]
    saved = [(logger, list(logger.handlers), logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers[:] = []
        logger.propagate = True
    yield
    for logger, handlers, propagate in saved:
        logger.handlers[:] = handlers
        logger.propagate = propagate


@pytest.fixture(scope="module")
def run_logs(tmp_path_factory) -> dict[str, list[str]]:
    """stderr lines of :data:`RUN_SCRIPT`, at the default level and verbose, with stderr not a terminal."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    environment.pop(PROGRESS_ENV, None)
    logs = {}
    for mode in ("default", "verbose"):
        out = tmp_path_factory.mktemp(f"run-{mode}")
        script = out / "run.py"
        script.write_text(RUN_SCRIPT)
        finished = subprocess.run(
            [sys.executable, str(script), str(out), mode],
            capture_output=True,
            text=True,
            env=environment,
            cwd=REPO,
            timeout=600,
        )
        assert finished.returncode == 0, finished.stderr[-3000:]
        logs[mode] = finished.stderr.splitlines()
    return logs


@pytest.mark.parametrize("mode", ["default", "verbose"])
def test_every_line_of_a_run_log_has_a_level_prefix(run_logs, mode):
    lines = run_logs[mode]
    assert lines
    assert [line for line in lines if not LEVEL_PREFIX.match(line)] == []
    assert "WARNING py.warnings: with a second line" in lines
    assert "WARNING m6rec: RuntimeError: a deliberate failure" in lines
    assert not [line for line in lines if line.startswith("ERROR")]


def test_a_run_warns_once_about_random_weights_and_holds_back_library_chatter(run_logs):
    lines = run_logs["default"]
    warnings = [line for line in lines if RANDOM_WEIGHTS in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING m6rec: image encoder uses RANDOM-INIT")
    assert "laion2b_s34b_b79k" in warnings[0]  # the reason open_clip's held-back error gave
    others = [line for line in lines if RANDOM_WEIGHTS not in line]
    for chatter in ("Failed to download weights", "No pretrained weights loaded", "faiss", "Inferred unique"):
        assert not [line for line in others if chatter in line], chatter
    assert [line for line in run_logs["verbose"] if RANDOM_WEIGHTS in line][0].startswith("WARNING")


def test_off_a_terminal_each_training_logs_one_summary_line_and_its_epochs_only_at_debug(run_logs):
    quiet, verbose = run_logs["default"], run_logs["verbose"]
    assert not [line for line in quiet if EPOCH_LINE.match(line)]
    assert (
        len([line for line in quiet if line.startswith("INFO m6rec: two-tower: 3 of at most 3 epochs in ")])
        == 1
    )
    assert len([line for line in quiet if line.startswith("INFO m6rec: kg: TransE, 3 epochs in ")]) == 1
    epochs = [EPOCH_LINE.match(line) for line in verbose]
    assert [match.groups() for match in epochs if match] == [
        *(("DEBUG", "kg", str(epoch)) for epoch in (1, 2, 3)),
        *(("DEBUG", "two-tower", str(epoch)) for epoch in (1, 2, 3)),
    ]


def test_only_an_approximate_index_logs_its_recall_at_info(run_logs):
    built = [line for line in run_logs["default"] if "FAISS index" in line]
    assert len(built) == 1 and built[0].startswith("INFO m6rec: FAISS index IVF4,Flat over 256 vectors")
    assert any(line.startswith("DEBUG m6rec: FAISS index Flat over 256") for line in run_logs["verbose"])


def test_two_encoders_in_one_process_warn_once(tiny_vit, monkeypatch, caplog):
    from features.image import ImageEncoder

    monkeypatch.setattr("features.image._announced_random_weights", set())
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        for _ in range(2):
            ImageEncoder(model=tiny_vit, pretrained=None, allow_random_weights=True, seed=7, num_workers=0)
        ImageEncoder(model=tiny_vit, pretrained=None, allow_random_weights=True, seed=8, num_workers=0)
    announced = [
        (record.levelname, re.search(r"\(seed (\d+)\)", record.getMessage()).group(1))
        for record in caplog.records
        if RANDOM_WEIGHTS in record.getMessage()
    ]
    assert announced == [("WARNING", "7"), ("DEBUG", "7"), ("WARNING", "8")]
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]


@pytest.mark.parametrize(
    ("progress", "capture_level", "epoch_level"),
    [("0", logging.INFO, None), ("0", logging.DEBUG, "DEBUG"), ("1", logging.INFO, "INFO")],
)
def test_two_tower_epoch_lines_follow_the_terminal_rule(
    checkerboard_interactions, monkeypatch, caplog, progress, capture_level, epoch_level
):
    from features.two_tower import TwoTowerConfig, train_two_tower

    monkeypatch.setenv(PROGRESS_ENV, progress)
    config = TwoTowerConfig(epochs=2, dimension=8, batch_size=64, force_cpu=True)
    with caplog.at_level(capture_level, logger=LOGGER_NAME):
        train_two_tower(checkerboard_interactions.train, {}, config)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]
    epochs = [level for level, message in messages if message.startswith("two-tower epoch")]
    assert epochs == ([] if epoch_level is None else [epoch_level, epoch_level])
    summaries = [
        m for level, m in messages if level == "INFO" and m.startswith("two-tower: 2 of at most 2 epochs in ")
    ]
    assert len(summaries) == 1 and "40 users, 22 items of which 0 content-only" in summaries[0]


@pytest.mark.parametrize(("capture_level", "epoch_lines"), [(logging.INFO, 0), (logging.DEBUG, 2)])
def test_kg_epoch_lines_appear_at_debug_off_a_terminal(
    tmp_path, monkeypatch, caplog, capture_level, epoch_lines
):
    from features.kg import KGConfig, train_kg_embeddings

    monkeypatch.setenv(PROGRESS_ENV, "0")
    triples = pd.DataFrame(
        [(f"i{i}", "in", f"g{i % 2}") for i in range(6)], columns=["head", "relation", "tail"]
    )
    with caplog.at_level(capture_level, logger=LOGGER_NAME):
        train_kg_embeddings(triples, [f"i{i}" for i in range(6)], tmp_path / "kg.parquet", KGConfig(epochs=2))
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert [m.split(":")[0] for m in messages if " epoch " in m] == [f"kg epoch {e}/2" for e in (1, 2)][
        :epoch_lines
    ]
    assert len([m for m in messages if m.startswith("kg: TransE, 2 epochs in ")]) == 1


def test_every_line_of_a_message_and_its_traceback_carries_the_prefix():
    logger = logging.getLogger("m6rec.test.formatter")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "first\nsecond", None, None)
    assert LevelPrefixFormatter().format(record) == (
        "ERROR m6rec.test.formatter: first\nERROR m6rec.test.formatter: second"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    lines = LevelPrefixFormatter().format(record).splitlines()
    assert lines[0] == "ERROR m6rec.test.formatter: failed"
    assert lines[-1] == "ERROR m6rec.test.formatter: ValueError: boom"
    assert all(line.startswith("ERROR m6rec.test.formatter: ") for line in lines)


def test_prefect_run_records_name_their_flow_or_task():
    logger = logging.getLogger("prefect.flow_runs")
    flow_record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "Finished", None, None)
    flow_record.flow_name = "nightly"
    task_record = logger.makeRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Crashed", None, None)
    task_record.task_run_name = "encode-0"
    assert LevelPrefixFormatter().format(flow_record) == "INFO flow nightly: Finished"
    assert LevelPrefixFormatter().format(task_record) == "ERROR task encode-0: Crashed"


@pytest.mark.usefixtures("restored_logging")
def test_configure_logging_keeps_m6rec_info_and_demotes_third_party_chatter(capsys):
    configure_logging()
    logging.getLogger("prefect").setLevel(logging.INFO)  # as Prefect's own logging set-up does
    logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
    logging.getLogger("pykeen.nn.representation").info("Inferred unique=False for Embedding()")
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1/api/logs/")
    logging.getLogger("numba.core").info("compiling")
    logging.info("open_clip: Loaded built-in ViT-B-32 model config.")  # open_clip logs on the root logger
    logging.getLogger("prefect.task_runs").info("Finished in state Completed()")
    logging.getLogger("prefect").info("Starting temporary server on http://127.0.0.1:8652")
    logging.getLogger("prefect.flow_runs").info("Beginning flow run 'a' for flow 'nightly'")
    logging.getLogger("faiss.loader").warning("a real faiss problem")
    logging.getLogger("m6rec.some.module").info("a stage's progress")
    logging.getLogger(LOGGER_NAME).debug("detail")

    assert capsys.readouterr().err.splitlines() == [
        "INFO prefect.flow_runs: Beginning flow run 'a' for flow 'nightly'",
        "WARNING faiss.loader: a real faiss problem",
        "INFO m6rec.some.module: a stage's progress",
    ]
    assert all(logging.getLogger(name).getEffectiveLevel() == logging.WARNING for name in QUIET_LIBRARIES)


@pytest.mark.usefixtures("restored_logging")
def test_verbose_shows_m6rec_debug_and_prefect_task_lines_but_not_library_info(capsys):
    configure_logging()
    configure_logging(verbose=True)  # a second call replaces the first one's handler
    logging.getLogger("prefect").setLevel(logging.INFO)
    logging.getLogger(LOGGER_NAME).debug("detail")
    logging.getLogger("prefect.task_runs").info("Finished in state Completed()")
    logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
    assert capsys.readouterr().err.splitlines() == [
        "DEBUG m6rec: detail",
        "INFO prefect.task_runs: Finished in state Completed()",
    ]


def test_importing_the_flows_demotes_third_party_loggers_and_keeps_a_chosen_m6rec_level(restored_logging):
    import flows

    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)
    importlib.reload(flows)
    assert logging.getLogger("faiss").level == logging.WARNING
    assert logging.getLogger(LOGGER_NAME).level == logging.INFO
    logging.getLogger(LOGGER_NAME).setLevel(logging.DEBUG)
    importlib.reload(flows)
    assert logging.getLogger(LOGGER_NAME).level == logging.DEBUG


def test_prefect_shows_the_random_weights_warning_once_as_a_warning(prefect_test_api, tiny_vit, monkeypatch):
    """A flow run's log in the Prefect API (what the UI shows) holds the m6rec logger's records, as
    PREFECT_LOGGING_EXTRA_LOGGERS=m6rec arranges for deployments: the warning comes once, at WARNING."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from features.image import ImageEncoder

    @flow(name="two-image-encoders")
    def two_image_encoders() -> None:
        for _ in range(2):
            ImageEncoder(model=tiny_vit, pretrained=None, allow_random_weights=True, seed=9, num_workers=0)

    monkeypatch.setattr("features.image._announced_random_weights", set())
    m6rec_logger = logging.getLogger(LOGGER_NAME)
    forwarded = any(isinstance(handler, APILogHandler) for handler in m6rec_logger.handlers)
    api = APILogHandler()
    if not forwarded:
        m6rec_logger.addHandler(api)
    try:
        state = two_image_encoders(return_state=True)
        api.flush()
    finally:
        m6rec_logger.removeHandler(api)
    run_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=run_filter)
    assert state.is_completed()
    assert [(log.name, log.level) for log in logs if RANDOM_WEIGHTS in log.message] == [
        (LOGGER_NAME, logging.WARNING)
    ]
    assert not [log for log in logs if log.level >= logging.ERROR]


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """The config file of a one-layer ViT CLIP, registered with open_clip (no weights anywhere)."""
    import open_clip

    config = tmp_path_factory.mktemp("tiny-vit") / "m6rec-logging-tiny-vit.json"
    config.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(config)
    return str(config)
