"""Inputs are read only from inside the dataset folder: media paths and tables that land elsewhere, and
anything but a regular file, are refused before anything opens them."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from features.base import RejectedInput, media_inputs
from m6rec.data.contained import MediaLimits, RejectedPath, contained_path, streamed_fingerprint
from m6rec.data.dataset import load_dataset
from m6rec.errors import DataError


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "dataset"
    (root / "media").mkdir(parents=True)
    (root / "media" / "ok.jpg").write_bytes(b"jpeg bytes")
    (root / "interactions.csv").write_text("user_id,item_id\nu1,a\nu2,b\n")
    (tmp_path / "secret.txt").write_text("outside the dataset")
    return root


def _reason(dataset: Path, raw: str, **limits) -> str:
    items = pd.DataFrame({"item_id": ["x"], "image_path": [raw]})
    (value,) = media_inputs(items, dataset, "image_path", MediaLimits(**limits)).inputs
    assert isinstance(value, RejectedInput), value
    return value.reason


def test_a_path_inside_the_dataset_is_read_and_hashed(dataset):
    items = pd.DataFrame({"item_id": ["x", "y"], "image_path": ["media/ok.jpg", "media/../media/ok.jpg"]})
    prepared = media_inputs(items, dataset, "image_path")
    assert prepared.inputs == [str((dataset / "media" / "ok.jpg").resolve())] * 2
    assert prepared.fingerprints[0] == prepared.fingerprints[1]
    assert prepared.fingerprints[0].startswith("sha256:")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../secret.txt", "../secret.txt: outside the dataset folder (resolves to "),
        ("media/../../secret.txt", "media/../../secret.txt: outside the dataset folder"),
        ("/etc/shadow", "/etc/shadow: outside the dataset folder"),
        ("/dev/zero", "/dev/zero: outside the dataset folder"),
        ("~/.ssh/id_rsa", "~/.ssh/id_rsa: a home-relative path"),
        ("media", "media: not a regular file (a folder)"),
        ("media/absent.jpg", "missing file "),
    ],
)
def test_paths_that_escape_or_are_not_files_are_refused_with_a_reason(dataset, raw, expected):
    assert _reason(dataset, raw).startswith(expected)


def test_a_symlink_out_of_the_dataset_is_refused_and_an_allowed_root_admits_it(dataset):
    (dataset / "media" / "link.jpg").symlink_to(dataset.parent / "secret.txt")
    assert "outside the dataset folder" in _reason(dataset, "media/link.jpg")
    items = pd.DataFrame({"item_id": ["x"], "image_path": ["media/link.jpg"]})
    allowed = media_inputs(items, dataset, "image_path", MediaLimits(extra_roots=(dataset.parent,)))
    assert allowed.inputs == [str((dataset.parent / "secret.txt").resolve())]


def test_a_fifo_is_refused_without_being_opened(dataset):
    os.mkfifo(dataset / "media" / "pipe.jpg")
    assert _reason(dataset, "media/pipe.jpg") == "media/pipe.jpg: not a regular file (a FIFO)"


def test_a_device_inside_an_allowed_root_is_refused(dataset):
    with pytest.raises(RejectedPath, match="not a regular file \\(a character device\\)"):
        contained_path(dataset, "/dev/zero", (Path("/dev"),))


def test_hashing_is_streamed_and_capped(dataset):
    big = dataset / "media" / "big.jpg"
    big.write_bytes(b"\0" * (3 << 20))
    with pytest.raises(RejectedPath, match="larger than the 1,048,576-byte limit"):
        streamed_fingerprint(big, MediaLimits(max_bytes=1 << 20))
    assert "larger than the 2,097,152-byte limit" in _reason(dataset, "media/big.jpg", max_bytes=2 << 20)
    assert streamed_fingerprint(big, MediaLimits()).startswith("sha256:")


def test_a_rejected_item_is_encoded_again_once_its_file_is_fixed(dataset):
    items = pd.DataFrame({"item_id": ["x"], "image_path": ["media/late.jpg"]})
    before = media_inputs(items, dataset, "image_path").fingerprints
    (dataset / "media" / "late.jpg").write_bytes(b"now here")
    assert media_inputs(items, dataset, "image_path").fingerprints != before


def test_a_table_symlinked_out_of_the_dataset_is_one_line_error(dataset, tmp_path):
    outside = tmp_path / "elsewhere" / "items.csv"
    outside.parent.mkdir()
    outside.write_text("item_id,title\na,A\nb,B\n")
    (dataset / "items.csv").symlink_to(outside)
    with pytest.raises(DataError) as error:
        load_dataset(dataset)
    assert str(error.value).startswith(f"{dataset / 'items.csv'}: outside the dataset folder")
    assert "\n" not in str(error.value)
    assert len(load_dataset(dataset, allow_outside_paths=[outside.parent]).items) == 2


def test_a_table_that_is_a_folder_is_one_line_error(dataset):
    (dataset / "interactions.csv").unlink()
    (dataset / "interactions.csv").mkdir()
    with pytest.raises(DataError, match="interactions.csv: not a regular file \\(a folder\\)"):
        load_dataset(dataset)


def test_a_file_slower_to_read_than_the_timeout_is_refused(dataset):
    slow = dataset / "media" / "slow.jpg"
    slow.write_bytes(b"\1" * (2 << 20))
    with pytest.raises(RejectedPath, match="reading took over 0 s"):
        streamed_fingerprint(slow, MediaLimits(read_timeout_seconds=0.0))
