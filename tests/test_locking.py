"""One run at a time per output folder: a second run fails (or waits) naming the holder, a killed holder's
lock is free again and named as taken over, abandoned staging folders are swept, and ``m6rec run`` into a
held folder is one error line, exit 2, with the previous outputs untouched."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from m6rec.errors import ConfigError
from m6rec.locking import LOCK_FILE, WAIT_ENV, FolderInUseError, folder_lock

ROOT = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent(
    """
    import sys, time
    from m6rec.locking import folder_lock
    with folder_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
        open(sys.argv[1] + "/holder-done", "w").close()  # the last thing done while holding the lock
    """
)


def hold(folder: Path, seconds: float = 60.0) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock for ``seconds`` (returns once it holds it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
    holder = hold(tmp_path / "out")
    try:
        with pytest.raises(FolderInUseError) as raised, folder_lock(tmp_path / "out"):
            pass
        message = str(raised.value)
        assert "\n" not in message
        assert (
            f"{tmp_path / 'out'}: another m6rec run is writing this folder (PID {holder.pid} on " in message
        )
    finally:
        holder.kill()
        holder.wait()


def test_a_run_may_wait_for_the_holder_to_finish(tmp_path, monkeypatch):
    holder = hold(tmp_path / "out", seconds=1.0)
    monkeypatch.setenv(WAIT_ENV, "60")
    with folder_lock(tmp_path / "out"):
        assert (tmp_path / "out" / "holder-done").exists(), "the lock was taken once the holder was done"
    holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over_and_its_staging_folders_swept(tmp_path, caplog):
    out = tmp_path / "out"
    holder = hold(out)
    (out / ".staging-abandoned").mkdir()
    (out / ".staging-abandoned" / "recommendations.parquet").write_bytes(b"half")
    (out / "recommendations.parquet").write_bytes(b"last good lists")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()

    with caplog.at_level(logging.WARNING, logger="m6rec"), folder_lock(out):
        assert not (out / ".staging-abandoned").exists()
    assert f"took over the lock of a run that ended without releasing it (PID {holder.pid} on " in caplog.text
    assert "removed 1 staging folder(s) left by runs that did not finish: .staging-abandoned" in caplog.text
    assert (out / "recommendations.parquet").read_bytes() == b"last good lists"
    assert (out / LOCK_FILE).read_text() == "", "a released lock names no holder"


def test_the_lock_is_reentrant_in_one_process_and_free_after(tmp_path):
    with folder_lock(tmp_path), folder_lock(tmp_path):
        assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
    with folder_lock(tmp_path, wait_seconds=0):
        pass


def test_a_bad_wait_setting_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{WAIT_ENV}='soon': expected a number of seconds"):
        with folder_lock(tmp_path):
            pass


def test_m6rec_run_into_a_held_folder_is_one_error_line_and_keeps_the_outputs(tmp_path):
    m6rec = Path(sys.executable).with_name("m6rec")
    if not m6rec.exists():
        pytest.skip(f"console script {m6rec} not installed")
    data = tmp_path / "data"
    data.mkdir()
    (data / "interactions.csv").write_text("user_id,item_id\nu1,a\nu2,b\n")
    out = tmp_path / "out"
    holder = hold(out)
    (out / "recommendations.parquet").write_bytes(b"last good lists")
    try:
        result = subprocess.run(
            [str(m6rec), "run", str(data), "--out", str(out)], capture_output=True, text=True
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(
        f"error: {out}: another m6rec run is writing this folder (PID {holder.pid} on "
    )
    assert lines[1:] == ["hint: wait for it to finish, stop it, or write to another folder"]
    assert (out / "recommendations.parquet").read_bytes() == b"last good lists"
