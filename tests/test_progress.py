"""Progress bars: shown on a terminal or when forced, silent otherwise, log lines kept whole."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import contextlib
import io
import logging
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from m6rec.candidates import create_source
from m6rec.candidates.faiss_index import build_index
from m6rec.errors import ConfigError
from m6rec.progress import PROGRESS_ENV, progress, progress_bar, progress_enabled, quiet_model_loading

ITEMS = ["first", "second", "third", "fourth", "fifth"]


class TerminalStream(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def progress_off(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "0")


@pytest.fixture
def progress_on(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")


@pytest.fixture
def progress_unset(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)


@contextlib.contextmanager
def root_logs_to_stderr() -> Iterator[None]:
    """The CLI's logging set-up: the root logger writes INFO records to (the current) stderr."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


@pytest.mark.usefixtures("progress_off")
def test_forced_off_yields_the_same_items_and_writes_nothing(capfd):
    shown = list(progress(ITEMS, desc="counting words", unit="word"))
    with progress_bar(total=10, desc="counting by hand") as bar:
        for _ in range(10):
            bar.update(1)

    assert shown == ITEMS
    assert not progress_enabled()
    assert capfd.readouterr() == ("", "")


@pytest.mark.usefixtures("progress_on")
def test_forced_on_draws_a_bar_with_its_description_on_stderr(capfd):
    shown = list(progress(iter(ITEMS), desc="counting words", total=len(ITEMS), unit="word"))
    with progress_bar(total=4, desc="counting by hand", unit="step") as bar:
        bar.update(4)
    captured = capfd.readouterr()

    assert shown == ITEMS
    assert captured.out == ""
    assert "counting words" in captured.err and "/5" in captured.err
    assert "counting by hand" in captured.err and "/4" in captured.err


@pytest.mark.usefixtures("progress_unset")
def test_unset_follows_whether_stderr_is_a_terminal(monkeypatch):
    piped, terminal = io.StringIO(), TerminalStream()
    monkeypatch.setattr(sys, "stderr", piped)
    assert list(progress(ITEMS, desc="into a pipe")) == ITEMS
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(ITEMS, desc="onto a terminal")) == ITEMS

    assert piped.getvalue() == ""
    assert "onto a terminal" in terminal.getvalue()


@pytest.mark.usefixtures("progress_unset")
def test_the_default_under_pytest_is_quiet(capfd):
    assert not sys.stderr.isatty()
    assert list(progress(ITEMS, desc="counting words")) == ITEMS
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("value", ["1", "true", "ON", " yes "])
def test_truthy_values_force_progress_on(monkeypatch, value):
    monkeypatch.setenv(PROGRESS_ENV, value)
    assert progress_enabled()


def test_an_unknown_setting_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "maybe")
    with pytest.raises(ConfigError, match=f"{PROGRESS_ENV}='maybe'"):
        progress_enabled()


@pytest.mark.usefixtures("progress_on")
def test_log_lines_during_a_bar_are_printed_whole_and_the_handler_is_restored(capfd):
    root = logging.getLogger()
    with root_logs_to_stderr():
        handlers_before = list(root.handlers)
        for word in progress(ITEMS, desc="counting words"):
            assert root.handlers != handlers_before  # routed through tqdm while the bar is open
            logging.getLogger("m6rec.test").info("seen %s", word)
        handlers_after = list(root.handlers)
    err = capfd.readouterr().err

    assert handlers_after == handlers_before
    lines = err.replace("\r", "\n").splitlines()
    assert [line for line in lines if line.startswith("seen ")] == [f"seen {word}" for word in ITEMS]


@pytest.mark.usefixtures("progress_on")
def test_a_bar_adds_no_log_handler_where_the_root_logger_has_no_console(capfd):
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    for _ in progress(ITEMS, desc="counting words"):
        assert root.handlers == handlers_before


@pytest.mark.usefixtures("progress_on")
def test_leaving_a_loop_early_closes_its_bar(capfd):
    root = logging.getLogger()
    with root_logs_to_stderr():
        handlers_before = list(root.handlers)
        for word in progress(ITEMS, desc="counting words"):
            if word == "second":
                break
        assert root.handlers == handlers_before


@pytest.mark.parametrize(("setting", "shown"), [("0", False), ("1", True)])
def test_open_clip_chatter_is_held_back_only_when_progress_is_off(monkeypatch, setting, shown, caplog):
    monkeypatch.setenv(PROGRESS_ENV, setting)
    filters_before = list(logging.getLogger().filters)
    with caplog.at_level(logging.INFO), quiet_model_loading():
        _log_from_open_clip("Loaded built-in ViT-B-32 model config.", logging.INFO)
        _log_from_open_clip("open_clip is worried", logging.WARNING)
    messages = [record.getMessage() for record in caplog.records]

    assert ("Loaded built-in ViT-B-32 model config." in messages) is shown
    assert "open_clip is worried" in messages
    assert logging.getLogger().filters == filters_before


def _log_from_open_clip(message: str, level: int) -> None:
    """Log on the root logger as open_clip does (``logging.info``), from a file inside its package."""
    source = os.path.join(sys.prefix, "site-packages", "open_clip", "factory.py")
    record = logging.getLogger().makeRecord("root", level, source, 1, message, (), None)
    logging.getLogger().handle(record)


@pytest.mark.parametrize(("setting", "shown"), [("0", False), ("1", True)])
def test_candidate_scoring_and_index_building_report_progress(
    monkeypatch, capfd, checkerboard_interactions, setting, shown
):
    monkeypatch.setenv(PROGRESS_ENV, setting)
    source = create_source("itemknn").fit(checkerboard_interactions.train)
    quiet = create_source("itemknn").fit(checkerboard_interactions.train)
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    build_index(vectors, factory="Flat")
    candidates = source.recommend(np.arange(checkerboard_interactions.train.n_users), 5)
    err = capfd.readouterr().err

    assert ("scoring candidates (itemknn)" in err) is shown
    assert ("building FAISS index Flat" in err) is shown
    if not shown:
        assert err == ""
    monkeypatch.setenv(PROGRESS_ENV, "0")
    expected = quiet.recommend(np.arange(checkerboard_interactions.train.n_users), 5)
    assert np.array_equal(candidates.items, expected.items)


@pytest.fixture(scope="module")
def quietly_loaded_text_encoder():
    """The bundled text model loaded with progress forced off, what loading wrote to stderr, and whether
    transformers' own bars were on before."""
    from transformers.utils import logging as transformers_logging

    from features.text import TextEncoder

    bars_were_on = transformers_logging.is_progress_bar_enabled()

    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "0"
    stderr, sys.stderr = sys.stderr, io.StringIO()
    try:
        encoder = TextEncoder(batch_size=2, force_cpu=True)
        assert encoder.dimension > 0  # the model loads on first use, here
        written = sys.stderr.getvalue()
    finally:
        sys.stderr = stderr
        if previous is None:
            del os.environ[PROGRESS_ENV]
        else:
            os.environ[PROGRESS_ENV] = previous
    return encoder, written, bars_were_on


def test_loading_the_text_model_is_quiet_when_progress_is_off(quietly_loaded_text_encoder):
    from transformers.utils import logging as transformers_logging

    _, written, bars_were_on = quietly_loaded_text_encoder
    assert "Loading weights" not in written
    assert transformers_logging.is_progress_bar_enabled() == bars_were_on


@pytest.mark.parametrize(("setting", "shown"), [("0", False), ("1", True)])
def test_text_encoding_shows_its_bar_only_when_progress_is_on(
    monkeypatch, capfd, quietly_loaded_text_encoder, setting, shown
):
    encoder, _, _ = quietly_loaded_text_encoder
    monkeypatch.setenv(PROGRESS_ENV, setting)
    result = encoder.encode(ITEMS[:3])
    err = capfd.readouterr().err

    assert ("encoding text" in err) is shown
    if not shown:
        assert err == ""
    assert result.vectors.shape[0] == 3 and not result.failures


def test_off_a_terminal_a_heartbeat_line_says_how_far_a_long_stage_got(monkeypatch, caplog):
    import logging

    from m6rec import progress as progress_module

    monkeypatch.setenv("M6REC_PROGRESS", "0")
    beat = progress_module.Heartbeat(desc="lists", total=30, unit="user", every=0.0)
    with caplog.at_level(logging.INFO, logger="m6rec"):
        beat.update(10)
        beat.update(5)
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [
        "lists: 10 of 30 users done",
        "lists: 15 of 30 users done",
    ]
    quiet = progress_module.Heartbeat(
        desc="lists", total=30, unit="user"
    )  # every 30 s: a short stage is silent
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="m6rec"):
        quiet.update(30)
    assert not caplog.records
