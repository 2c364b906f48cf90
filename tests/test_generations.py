"""Generations of an output folder: staged whole, published by one switch, kept, rolled back, resumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m6rec.generations import CURRENT, EVERYTHING, GenerationError, Generations
from m6rec.io import write_json


def _write(stage: Path, **files: str) -> None:
    for name, text in files.items():
        path = stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(text, path)


def _publish(generations: Generations, keep: int = 3, carry=EVERYTHING, **files: str) -> Path:
    with generations.staged(kind="test", carry=carry, keep=keep) as stage:
        _write(stage.path, **files)
    return stage.path


def _read(path: Path) -> str:
    import json

    return json.loads(path.read_text())


def test_a_generation_is_published_whole_and_readers_follow_current(tmp_path):
    generations = Generations(tmp_path)
    first = _publish(generations, lists="one", **{"features/text": "t1"})
    assert generations.current() == first
    assert os.readlink(tmp_path / CURRENT) == "generations/000001"
    assert _read(tmp_path / "lists") == "one", "the link beside current reads the published file"
    assert _read(tmp_path / "features" / "text") == "t1"

    second = _publish(generations, lists="two")
    assert generations.current() == second
    assert _read(tmp_path / "lists") == "two"
    assert _read(tmp_path / "features" / "text") == "t1", "carried over"
    assert (first / "features" / "text").stat().st_ino == (second / "features" / "text").stat().st_ino
    assert _read(first / "lists") == "one", "the older generation is untouched"


def test_a_failed_stage_publishes_nothing_and_the_next_run_resumes_only_what_it_may(tmp_path):
    generations = Generations(tmp_path)
    first = _publish(generations, lists="one", **{"features/text": "t1"})
    with pytest.raises(RuntimeError), generations.staged(kind="test", carry=EVERYTHING) as stage:
        _write(stage.path, lists="half", **{"features/text": "t2"})
        (stage.path / "features" / ".image.parquet.x1y2.tmp").write_bytes(b"PAR1 half")
        raise RuntimeError("killed")
    assert generations.current() == first
    assert _read(tmp_path / "lists") == "one"

    with generations.staged(kind="test", carry=EVERYTHING, resume=("features",)) as resumed:
        assert resumed.path == stage.path, "the unfinished generation is taken up again"
        assert _read(resumed.path / "features" / "text") == "t2", "its cache is kept"
        assert not list(resumed.path.rglob("*.tmp")), "but no file it was still writing"
        assert _read(resumed.path / "lists") == "one", "everything else starts from the published one"
    assert generations.current() == stage.path


def test_validation_refuses_a_stage(tmp_path):
    generations = Generations(tmp_path)
    first = _publish(generations, lists="one")

    def refuse(path: Path) -> None:
        raise GenerationError(f"{path}: lists cover 3 users (expected 4)")

    with pytest.raises(GenerationError), generations.staged(kind="test", validate=refuse) as stage:
        _write(stage.path, lists="bad")
    assert generations.current() == first and _read(tmp_path / "lists") == "one"


def test_keep_prunes_the_oldest_and_rollback_goes_back_one(tmp_path):
    generations = Generations(tmp_path)
    for text in ("a", "b", "c", "d"):
        _publish(generations, keep=2, lists=text)
    assert [generation.name for generation in generations.complete()] == ["000003", "000004"]
    assert generations.rollback().name == "000003"
    assert _read(tmp_path / "lists") == "c"
    with pytest.raises(GenerationError, match="no generation older"):
        generations.rollback()
    generations.rollback("000004")
    assert _read(tmp_path / "lists") == "d"
    with pytest.raises(GenerationError, match="no complete generation '000001'"):
        generations.rollback("000001")


def test_a_published_generation_survives_pruning_after_a_rollback(tmp_path):
    generations = Generations(tmp_path)
    for text in ("a", "b"):
        _publish(generations, lists=text)
    generations.rollback()
    _publish(generations, keep=1, carry=(), lists="c")
    assert generations.current().name == "000003"
    assert [generation.name for generation in generations.complete()] == ["000003"]


def test_a_stage_that_changed_nothing_adds_no_generation(tmp_path):
    generations = Generations(tmp_path)
    first = _publish(generations, lists="one", report="r1")
    with generations.staged(kind="test", carry=EVERYTHING, unchanged_ignoring=("report",)) as stage:
        _write(stage.path, report="r2")
    assert generations.current() == first and not stage.path.exists()
    with generations.staged(kind="test", carry=EVERYTHING, unchanged_ignoring=("report",)) as stage:
        _write(stage.path, lists="two")
    assert generations.current() == stage.path


def test_links_follow_the_names_of_the_published_generation(tmp_path):
    generations = Generations(tmp_path)
    _publish(generations, lists="one", metrics="m")
    _publish(generations, carry=(), lists="two")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "metrics").is_symlink()
    generations.rollback()
    assert _read(tmp_path / "metrics") == "m"
    (tmp_path / "notes.txt").write_text("mine")
    _publish(generations, **{"notes.txt": "theirs"})
    assert (tmp_path / "notes.txt").read_text() == "mine", "a file of the user's is never replaced"


def test_outputs_of_an_older_layout_become_generation_zero(tmp_path):
    write_json("old lists", tmp_path / "lists")
    (tmp_path / "unrelated.txt").write_text("keep me")
    generations = Generations(tmp_path, legacy_names=("lists", "metrics"))
    _publish(generations, carry=(), metrics="new")
    assert [generation.name for generation in generations.complete()] == ["000000", "000001"]
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"
    generations.rollback()
    assert _read(tmp_path / "lists") == "old lists"
