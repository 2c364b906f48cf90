"""Shared helper of the benchmark scripts: replace one marked section of docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = "# Benchmarks\n\nEvery number here was produced by a script in `benchmarks/`; each section names its command.\n"


def update_section(path: Path, name: str, body: str) -> None:
    """Write ``body`` between the ``<!-- name:start -->`` and ``<!-- name:end -->`` markers of ``path``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
