"""The fault suite's named bad inputs: each builds a dataset (or a configuration, or a command line) with
one thing wrong, runs one ``m6rec`` command on it in-process and names the outcome it must have.

Outcomes:
  error      exit 2, one ``error:`` line (and at most a ``hint:``) containing ``expect``, no traceback
  usage      exit 2, the usage line and one ``error:`` line containing ``expect``
  skipped    with ``--skip-invalid-rows``: exit 0, and the validation report counts ``expect`` skipped rows
  item       exit 0; the item ``x`` has no embedding and its problem contains ``expect``
  accepted   exit 0, and the output says ``expect`` (the input is odd but has one documented reading)

``tests/test_fault_suite.py`` runs them all; ``tests/reliability_doc.py`` writes what each produced into
``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from log_state import restored_logging

GOOD_INTERACTIONS = "user_id,item_id,rating,timestamp\n" + "".join(
    f"u{user},{item},{1 + (user + index) % 5},{1_700_000_000 + 3600 * (user * 7 + index)}\n"
    for user in range(1, 9)
    for index, item in enumerate("abcdefgh"[user % 3 : user % 3 + 5])
)
GOOD_ITEMS = "item_id,title,genre\n" + "".join(
    f"{item},Title {item},{'xy'[n % 2]}\n" for n, item in enumerate("abcdefgh")
)
GOOD_KG = "head,relation,tail\na,made_by,studio1\nb,made_by,studio1\nc,made_by,studio2\n"
FAST_CONFIG = (
    "baselines: {models: [popularity, itemknn]}\nembeddings: {modalities: []}\nranker: {enabled: false}\n"
)


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    tried: str
    build: Callable[[Path], None]
    command: tuple[str, ...]
    outcome: str
    expect: str | int


@dataclass
class Observed:
    """What a case produced: exit code, stdout, stderr (paths shown as DATA, OUT, CONFIG)."""

    code: int
    out: str
    err: str
    problems: list[dict] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def summary(self, case: Case) -> str:
        """One line for the reliability report: what the user saw."""
        if case.outcome in ("error", "usage"):
            return self.error_lines[0] if self.error_lines else f"exit {self.code}"
        if case.outcome == "item":
            problem = next((row["problem"] for row in self.problems if row.get("item_id") == "x"), "")
            return f"exit {self.code}; item x: {problem}"
        if case.outcome == "skipped":
            return f"exit {self.code}; {_skipped(self.out)} row(s) skipped and counted"
        line = next((line for line in self.out.splitlines() if str(case.expect) in line), "")
        return f"exit {self.code}; {line.strip()}"


def _skipped(out: str) -> int:
    try:
        return int(json.loads(out)["skipped_total"])
    except (ValueError, KeyError):
        return -1


# --- building blocks ----------------------------------------------------------------------------------


def _good(root: Path, interactions: str = GOOD_INTERACTIONS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "interactions.csv").write_text(interactions)
    (root / "items.csv").write_text(GOOD_ITEMS)
    (root / "kg.csv").write_text(GOOD_KG)


def _with_interactions(text: str) -> Callable[[Path], None]:
    return lambda root: _good(root, text)


def _with_row(row: str) -> Callable[[Path], None]:
    return _with_interactions(GOOD_INTERACTIONS + row + "\n")


def _with_file(name: str, content: bytes | str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        _good(root)
        path = root / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return build


def _without(name: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        _good(root)
        (root / name).unlink()

    return build


def _parquet_interactions(make_table) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        import pyarrow.parquet as pq

        _good(root)
        (root / "interactions.csv").unlink()
        pq.write_table(make_table(), root / "interactions.parquet")

    return build


def _parquet_file(content: bytes) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        _good(root)
        (root / "interactions.csv").unlink()
        (root / "interactions.parquet").write_bytes(content)

    return build


def _list_ids():
    import pyarrow as pa

    return pa.table({"user_id": [["u1"], ["u2"]], "item_id": ["a", "b"]})


def _repeated_parquet_columns():
    import pyarrow as pa

    return pa.Table.from_arrays(
        [pa.array(["u1"]), pa.array(["a"]), pa.array(["b"])], names=["user_id", "item_id", "item_id"]
    )


def _interactions_folder(root: Path) -> None:
    _good(root)
    (root / "interactions.csv").unlink()
    (root / "interactions.csv").mkdir()


def _table_symlinked_out(root: Path) -> None:
    _good(root)
    outside = root.parent / "elsewhere-items.csv"
    outside.write_text(GOOD_ITEMS)
    (root / "items.csv").unlink()
    (root / "items.csv").symlink_to(outside)


def _both_formats(root: Path) -> None:
    import pandas as pd

    _good(root)
    pd.read_csv(root / "interactions.csv").to_parquet(root / "interactions.parquet")


def _with_config(text: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        _good(root)
        (root.parent / "config.yaml").write_text(text)

    return build


def _items_only_ids(root: Path) -> None:
    _good(root)
    (root / "items.csv").write_text("item_id\n" + "".join(f"{item}\n" for item in "abcdefgh"))
    (root.parent / "config.yaml").write_text("baselines: {models: [popularity, itemknn]}\n")


def _with_media(path_value: str, prepare: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A catalogue whose item ``x`` has ``audio_path`` ``path_value`` (the other items have a good clip)."""

    def build(root: Path) -> None:
        import numpy as np
        import soundfile

        _good(root)
        (root / "audio").mkdir()
        tone = 0.3 * np.sin(np.linspace(0, 2 * np.pi * 440, 8000))
        soundfile.write(root / "audio" / "tone.wav", tone, 8000)
        items = "item_id,title,audio_path\n" + "".join(
            f"{item},Title {item},audio/tone.wav\n" for item in "abcdefgh"
        )
        (root / "items.csv").write_text(items + f"x,Title x,{path_value}\n")
        (root.parent / "secret.wav").write_bytes((root / "audio" / "tone.wav").read_bytes())
        if prepare is not None:
            prepare(root)

    return build


VALIDATE = ("validate", "DATA")
VALIDATE_SKIPPING = ("validate", "DATA", "--skip-invalid-rows", "--json")
RUN = ("run", "DATA", "--out", "OUT", "--config", "CONFIG")
EMBED_AUDIO = ("embed", "DATA", "--out", "OUT", "--modalities", "audio", "--config", "CONFIG")


def _config(root: Path, text: str = FAST_CONFIG) -> None:
    (root.parent / "config.yaml").write_text(text)


def _fast(build: Callable[[Path], None]) -> Callable[[Path], None]:
    def with_fast_config(root: Path) -> None:
        build(root)
        if not (root.parent / "config.yaml").exists():
            _config(root)

    return with_fast_config


def _link_out(root: Path) -> None:
    (root / "audio" / "link.wav").symlink_to(root.parent / "secret.wav")


def _fifo(root: Path) -> None:
    os.mkfifo(root / "audio" / "pipe.wav")


def _text_file(root: Path) -> None:
    (root / "audio" / "notes.wav").write_text("not audio")


# fmt: off
CASES: list[Case] = [
    # --- tables: CSV and Parquet ---
    Case("no-interactions-table", "tables", "the dataset has no interactions file", _without("interactions.csv"), VALIDATE, "error", "required table 'interactions' not found"),
    Case("empty-file", "tables", "interactions.csv is 0 bytes", _with_interactions(""), VALIDATE, "error", "file is empty"),
    Case("header-only", "tables", "interactions.csv has a header and no rows", _with_interactions("user_id,item_id\n"), VALIDATE, "error", "has a header but no data rows"),
    Case("not-utf8", "tables", "a Latin-1 byte in interactions.csv", _with_file("interactions.csv", GOOD_INTERACTIONS.encode() + b"u9,\xe9,1,1700000000\n"), VALIDATE, "error", "not valid UTF-8"),
    Case("wrong-field-count", "tables", "a row with one field too many", _with_row("u9,a,3,1700000000,extra"), VALIDATE, "error", "malformed CSV: expected 4 fields, saw 5"),
    Case("unclosed-quote", "tables", "a quote that never closes", _with_row('u9,"a,3,1700000000'), VALIDATE, "error", "a quote opened here is never closed"),
    Case("repeated-header", "tables", "the header names item_id twice", _with_interactions("user_id,item_id,item_id\nu1,a,b\n"), VALIDATE, "error", "column 'item_id' appears 2 times in the header"),
    Case("missing-required-column", "tables", "no item_id column", _with_interactions("user_id,rating\nu1,5\n"), VALIDATE, "error", "missing required column 'item_id'"),
    Case("csv-and-parquet", "tables", "interactions.csv and interactions.parquet both present", _both_formats, VALIDATE, "error", "both interactions.parquet and interactions.csv exist"),
    Case("corrupt-parquet", "tables", "interactions.parquet is not Parquet", _parquet_file(b"PAR1 broken"), VALIDATE, "error", "not a readable Parquet file"),
    Case("table-is-a-folder", "tables", "interactions.csv is a folder", _interactions_folder, VALIDATE, "error", "interactions.csv: not a regular file (a folder)"),
    Case("table-symlinked-out", "tables", "items.csv is a symlink to a file outside the dataset", _table_symlinked_out, VALIDATE, "error", "outside the dataset folder"),
    Case("parquet-list-ids", "tables", "user_id holds lists in Parquet", _parquet_interactions(_list_ids), VALIDATE, "error", "column 'user_id' holds list<element: string> values"),
    Case("parquet-repeated-columns", "tables", "a Parquet file with two item_id columns", _parquet_interactions(_repeated_parquet_columns), VALIDATE, "error", "column 'item_id' appears 2 times"),
    # --- IDs and the knowledge graph ---
    Case("empty-user-id", "ids", "a row without user_id", _with_row(",a,3,1700000000"), VALIDATE, "error", "empty user_id"),
    Case("empty-user-id-skipped", "ids", "the same, with --skip-invalid-rows", _with_row(",a,3,1700000000"), VALIDATE_SKIPPING, "skipped", 1),
    Case("blank-item-id", "ids", "an item_id of spaces", _with_row("u9,   ,3,1700000000"), VALIDATE, "error", "empty item_id"),
    Case("unknown-item", "ids", "an interaction with an item the items table lacks", _with_row("u9,zzz,3,1700000000"), VALIDATE, "error", "item_id 'zzz' is not in the items table"),
    Case("unknown-item-skipped", "ids", "the same, with --skip-invalid-rows", _with_row("u9,zzz,3,1700000000"), VALIDATE_SKIPPING, "skipped", 1),
    Case("empty-kg-head", "kg", "a KG triple without head", _with_file("kg.csv", GOOD_KG + ",made_by,studio3\n"), VALIDATE, "error", "empty head"),
    Case("kg-missing-column", "kg", "kg.csv without relation", _with_file("kg.csv", "head,tail\na,b\n"), VALIDATE, "error", "missing required column 'relation'"),
    # --- weights ---
    Case("rating-not-a-number", "weights", "rating 'five'", _with_row("u9,a,five,1700000000"), VALIDATE, "error", "rating 'five' is not a number"),
    Case("rating-infinite", "weights", "rating 'inf'", _with_row("u9,a,inf,1700000000"), VALIDATE, "error", "rating 'inf' is not a number"),
    Case("rating-negative", "weights", "rating -1", _with_row("u9,a,-1,1700000000"), VALIDATE, "error", "rating '-1' is negative"),
    Case("ratings-all-positive", "weights", "1-star ratings without min_rating", _good, VALIDATE, "accepted", "every row is a positive"),
    # --- timestamps ---
    Case("timestamp-text", "timestamps", "timestamp 'yesterday' among unix times", _with_row("u9,a,3,yesterday"), VALIDATE, "error", "timestamp 'yesterday' is not a number"),
    Case("timestamp-huge", "timestamps", "timestamp 1e30", _with_row("u9,a,3,1e30"), VALIDATE, "error", "timestamp '1e30' is not a unix time in seconds"),
    Case("timestamp-milliseconds", "timestamps", "a millisecond timestamp", _with_row("u9,a,3,1700000000000"), VALIDATE, "error", "looks like milliseconds"),
    Case("timestamp-not-a-date", "timestamps", "every timestamp an unparsable text", _with_interactions("user_id,item_id,timestamp\nu1,a,soon\nu2,b,later\n"), VALIDATE, "error", "neither a unix time nor an ISO 8601 date"),
    # --- media paths: containment ---
    Case("media-absolute", "media", "audio_path /etc/passwd", _fast(_with_media("/etc/passwd")), EMBED_AUDIO, "item", "outside the dataset folder"),
    Case("media-dotdot", "media", "audio_path ../secret.wav", _fast(_with_media("../secret.wav")), EMBED_AUDIO, "item", "outside the dataset folder"),
    Case("media-home", "media", "audio_path ~/secret.wav", _fast(_with_media("~/secret.wav")), EMBED_AUDIO, "item", "a home-relative path"),
    Case("media-symlink-out", "media", "audio_path a symlink to a file outside", _fast(_with_media("audio/link.wav", _link_out)), EMBED_AUDIO, "item", "outside the dataset folder"),
    Case("media-fifo", "media", "audio_path a FIFO (would hang a reader)", _fast(_with_media("audio/pipe.wav", _fifo)), EMBED_AUDIO, "item", "not a regular file (a FIFO)"),
    Case("media-device", "media", "audio_path /dev/zero (would fill memory)", _fast(_with_media("/dev/zero")), EMBED_AUDIO, "item", "outside the dataset folder"),
    Case("media-folder", "media", "audio_path a folder", _fast(_with_media("audio")), EMBED_AUDIO, "item", "not a regular file (a folder)"),
    Case("media-missing", "media", "audio_path a file that is not there", _fast(_with_media("audio/absent.wav")), EMBED_AUDIO, "item", "missing file"),
    Case("media-not-audio", "media", "audio_path a text file", _fast(_with_media("audio/notes.wav", _text_file)), EMBED_AUDIO, "item", "cannot decode"),
    # --- configuration ---
    Case("config-unknown-key", "config", "a misspelt key (top_kk)", _with_config("top_kk: 5\n"), RUN, "error", "top_kk: unknown key"),
    Case("config-top-k-zero", "config", "top_k 0 (would publish empty lists)", _with_config("top_k: 0\n"), RUN, "error", "top_k: Input should be greater than or equal to 1"),
    Case("config-negative-seed", "config", "seed -1", _with_config("seed: -1\n"), RUN, "error", "seed: Input should be greater than or equal to 0"),
    Case("config-split-overflow", "config", "split cutoff:1e400", _with_config("split: 'cutoff:1e400'\n"), RUN, "error", "cutoff '1e400' is not a unix time"),
    Case("config-split-ratio", "config", "split random:2", _with_config("split: 'random:2'\n"), RUN, "error", "test ratio must be between 0 and 1"),
    Case("config-yaml-syntax", "config", "a YAML syntax error", _with_config("top_k: [1,\n"), RUN, "error", "cannot read config"),
    Case("config-not-a-mapping", "config", "a YAML list instead of a mapping", _with_config("- top_k\n"), RUN, "error", "expected a mapping of keys"),
    Case("config-huge-depth", "config", "candidate_depth and candidates_per_source of a billion on 8 items", _with_config("candidate_depth: 1000000000\nranker: {candidates_per_source: 1000000000}\nbaselines: {models: [popularity, itemknn]}\nembeddings: {modalities: []}\n"), RUN, "accepted", "recommendations:"),
    Case("config-duplicate-key", "config", "top_k given twice", _with_config("top_k: 5\nseed: 1\ntop_k: 7\n"), RUN, "error", "duplicate key 'top_k' (line 3)"),
    Case("config-keep-zero", "config", "keep_generations 0", _with_config("keep_generations: 0\n"), RUN, "error", "keep_generations"),
    Case("config-missing-file", "config", "--config names no file", _good, RUN, "error", "cannot read config: [Errno 2] No such file"),
    # --- command line ---
    Case("cli-unknown-command", "cli", "m6rec trian", _good, ("trian",), "usage", "No such command 'trian'"),
    Case("cli-run-without-out", "cli", "m6rec run DATA (no --out)", _good, ("run", "DATA"), "usage", "Missing option '--out'"),
    Case("cli-no-dataset-folder", "cli", "a DATA_DIR that does not exist", lambda root: None, VALIDATE, "error", "dataset directory does not exist"),
    Case("cli-rollback-elsewhere", "cli", "m6rec rollback on a folder that is no output folder", _good, ("rollback", "DATA"), "error", "no generations to roll back to"),
    Case("cli-recommend-no-model", "cli", "m6rec recommend on a folder without a run", _good, ("recommend", "DATA", "--user", "u1"), "error", "no recommendations here"),
    # --- the run ---
    Case("too-few-interactions", "run", "three interactions and a held-out split", _fast(_with_interactions("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,a,3\n")), (*RUN, "--split", "leave-last-out:1"), "error", "too few training interactions to tune the sources"),
    Case("single-user", "run", "one user only", _fast(_with_interactions("user_id,item_id\nu1,a\nu1,b\nu1,c\n")), RUN, "accepted", "recommendations:"),
    Case("out-is-a-file", "run", "--out names a file, not a folder", _fast(_with_file("../out", "not a folder")), RUN, "error", "not a folder (a file of that name is in the way)"),
    Case("items-only-ids", "run", "an items file with only item_id, the default embeddings and extra sources", _items_only_ids, RUN, "accepted", "recommendations:"),
    Case("batch-without-model", "cli", "m6rec batch with a --model folder that holds no model", _good, ("batch", "DATA", "--model", "OUT"), "error", "no trained model"),
]
# fmt: on


def run_case(case: Case, root: Path) -> Observed:
    """Build ``case`` under ``root`` and run its command in-process; paths in the output become DATA,
    OUT and CONFIG."""
    from m6rec import cli

    data, out, config = root / "data", root / "out", root / "config.yaml"
    case.build(data)
    names = {"DATA": data, "OUT": out, "CONFIG": config, "ROOT": root}
    argv = [str(names.get(arg, arg)) for arg in case.command]
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with restored_logging(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            cli.main(argv)
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        except Exception as error:  # a traceback is what the suite exists to catch; keep it readable
            import traceback

            code = 1
            print("Traceback (most recent call last):", traceback.format_exc(), file=sys.stderr)
            del error
    problems = []
    problems_file = out / "features" / "problems.json"
    if problems_file.is_file():
        problems = json.loads(problems_file.read_text())

    def shown(text: str) -> str:
        for label, path in sorted(names.items(), key=lambda pair: -len(str(pair[1]))):
            text = text.replace(str(path.resolve()), label).replace(str(path), label)
        return text

    problems = [{key: shown(str(value)) for key, value in row.items()} for row in problems]
    return Observed(code, shown(stdout.getvalue()), shown(stderr.getvalue()), problems)


def check(case: Case, observed: Observed) -> str:
    """Why ``observed`` is not the outcome ``case`` names ("" when it is)."""
    err, out = observed.err, observed.out
    if "Traceback" in err + out:
        return f"a traceback:\n{err[-2000:]}"
    if case.outcome in ("error", "usage"):
        if observed.code != 2:
            return f"exit {observed.code}, expected 2\n{err[-1000:]}"
        if len(observed.error_lines) != 1:
            return f"{len(observed.error_lines)} error lines:\n{err}"
        if str(case.expect) not in observed.error_lines[0]:
            return f"the error line lacks {case.expect!r}: {observed.error_lines[0]}"
        others = [
            line
            for line in err.splitlines()
            if line and not line.startswith(("error:", "hint:", "INFO", "WARNING"))
        ]
        if case.outcome == "error" and others:
            return f"more than one line: {others}"
        return ""
    if observed.code != 0:
        return f"exit {observed.code}\n{err[-1500:]}"
    if case.outcome == "skipped":
        found = _skipped(out)
        return "" if found == case.expect else f"{found} skipped rows, expected {case.expect}"
    if case.outcome == "item":
        problem = next((row["problem"] for row in observed.problems if row.get("item_id") == "x"), None)
        if problem is None:
            return f"item x has no problem entry: {observed.problems}"
        return "" if str(case.expect) in problem else f"item x's problem lacks {case.expect!r}: {problem}"
    return "" if str(case.expect) in out + err else f"the output lacks {case.expect!r}:\n{out[-1500:]}"


def fresh_root(base: Path, case: Case) -> Path:
    root = base / case.name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root
