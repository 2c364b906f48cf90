"""Command-line usage errors print the usage line and one error line and exit 2, with no traceback,
whichever click the installed typer runs on; ``--version`` and ``-h`` work; ``--help`` lists every command
with a one-line summary; commands that print results take ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m6rec import __version__, cli

M6REC = Path(sys.executable).with_name("m6rec")
COMMANDS = (
    "run",
    "batch",
    "embed",
    "demo",
    "recommend",
    "rollback",
    "validate",
    "inspect",
    "datasets",
    "flows",
)


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (
            (),
            "Usage: m6rec [OPTIONS] COMMAND [ARGS]...",
            "error: Missing command: one of " + ", ".join(COMMANDS),
        ),
        (("flows",), "Usage: m6rec flows [OPTIONS] COMMAND [ARGS]...", "error: Missing command: one of run,"),
        (("frobnicate",), "Usage: m6rec [OPTIONS] COMMAND [ARGS]...", "error: No such command 'frobnicate'"),
        (
            ("--frobnicate",),
            "Usage: m6rec [OPTIONS] COMMAND [ARGS]...",
            "error: No such option: --frobnicate",
        ),
        (("inspect",), "Usage: m6rec inspect [OPTIONS]", "error: Missing argument 'FILE'."),
        (("run",), "Usage: m6rec run [OPTIONS]", "error: Missing argument 'DATA_DIR'."),
        (("run", "data"), "Usage: m6rec run [OPTIONS]", "error: Missing option '--out'"),
        (
            ("run", "data", "-o", "out", "--bogus"),
            "Usage: m6rec run [OPTIONS]",
            "error: No such option: --bogus",
        ),
        (
            ("run", "data", "-o", "out", "--seed", "abc"),
            "Usage: m6rec run [OPTIONS]",
            "error: Invalid value for '--seed'",
        ),
        (
            ("run", "data", "-o", "out", "--top-k"),
            "Usage: m6rec run [OPTIONS]",
            "error: Option '--top-k' requires an argument",
        ),
        (
            ("inspect", "x.parquet", "--k", "0"),
            "Usage: m6rec inspect [OPTIONS]",
            "error: Invalid value for '--k'",
        ),
        (
            ("flows", "run", "foo", "data", "--out", "out"),
            "Usage: m6rec flows run [OPTIONS]",
            "error: Invalid value for NAME: 'foo': expected one of nightly, nightly-embeddings,",
        ),
    ],
)
def test_usage_errors_are_the_usage_line_and_one_error_line(capsys, args, usage, error, m6rec_main):
    code, out, err = m6rec_main(*args)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(usage), err
    assert lines[1].startswith(error), err
    assert lines[1].endswith("--help')"), "the error line says where to read more"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_command_with_a_one_line_summary(capsys, flag, m6rec_main):
    code, out, _ = m6rec_main(flag)
    assert code == 0
    rows = [line for line in out.splitlines() if any(f" {name} " in line for name in COMMANDS)]
    for name in COMMANDS:
        matching = [line for line in rows if f" {name} " in line]
        assert matching, f"{name} is not listed"
    commands_panel = out[out.index("Commands") :]
    listed = [line for line in commands_panel.splitlines() if line.startswith("│ ") and line.strip("│ ")]
    assert len(listed) == len(COMMANDS), "one line per command:\n" + commands_panel


def test_subcommand_help_with_short_flag(capsys, m6rec_main):
    code, out, _ = m6rec_main("run", "-h")
    assert code == 0 and "Example: m6rec run" in out


def test_version(capsys, m6rec_main):
    code, out, err = m6rec_main("--version")
    assert (code, out, err) == (0, f"m6rec {__version__}\n", "")


def test_version_matches_the_installed_distribution():
    from importlib.metadata import version

    assert version("m6rec") == __version__


def test_user_error_inside_a_command_is_one_line(capsys, tmp_path, m6rec_main):
    code, out, err = m6rec_main("inspect", tmp_path / "missing.parquet")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("-h",),
        ("--version",),
        ("inspect",),
        ("flows", "run", "foo", "data", "--out", "out"),
        ("run", "--bad"),
    ],
)
def test_console_script_never_prints_a_traceback(args):
    if not M6REC.exists():
        pytest.skip(f"console script {M6REC} not installed")
    result = subprocess.run([str(M6REC), *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode in (0, 2)


def test_commands_that_print_results_take_json():
    import typer.main

    group = typer.main.get_command(cli.app)
    printing = {
        "run",
        "batch",
        "embed",
        "demo",
        "recommend",
        "rollback",
        "validate",
        "inspect",
        "datasets prepare",
        "flows run",
        "flows deploy",
    }
    for path in printing:
        command = group
        for part in path.split():
            command = command.commands[part]
        options = {option for parameter in command.params for option in getattr(parameter, "opts", [])}
        assert "--json" in options, f"m6rec {path} has no --json"


def test_inspect_json_is_machine_readable(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"item_id": ["a", "b"], "score": [1.0, 2.0]}), path)
    cli.main(["inspect", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["rows"] == 2


def test_commands_are_offline_unless_a_download_is_asked_for(monkeypatch):
    from m6rec.cli import OFFLINE_ENVIRONMENT, offline_by_default

    for name in OFFLINE_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("M6REC_ALLOW_DOWNLOADS", raising=False)
    offline_by_default(["datasets", "prepare", "ml-100k", "--out", "data"])
    assert not any(name in os.environ for name in OFFLINE_ENVIRONMENT), "a download command stays online"
    monkeypatch.setenv("M6REC_ALLOW_DOWNLOADS", "1")
    offline_by_default(["run", "data", "--out", "out"])
    assert not any(name in os.environ for name in OFFLINE_ENVIRONMENT)
    monkeypatch.delenv("M6REC_ALLOW_DOWNLOADS")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    offline_by_default(["run", "data", "--out", "out"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0", "what the user set wins"
