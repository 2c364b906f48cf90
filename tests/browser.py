"""Headless Chromium for tests: a page's DOM after its scripts ran, its console messages, and screenshots.

Uses Debian's ``/usr/bin/chromium`` with a throw-away profile and no network-facing features, so a run
touches nothing outside a temporary folder. ``parse_elements`` turns HTML (a dumped DOM or a file) into a
flat list of elements that tests can filter without a browser API.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
WINDOW_WIDTH = 1280
TIMEOUT_SECONDS = 120
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_CONSOLE_LINE = re.compile(r':CONSOLE(?::\d+|\(\d+\))\] "(?P<message>.*)", source: (?P<source>.*)$')


def chromium_available() -> bool:
    """Whether the Chromium binary the helpers run is installed and executable."""
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


@dataclass(frozen=True)
class RenderedPage:
    """The serialised DOM after the page loaded and its scripts ran, and what it wrote to the console."""

    dom: str
    console: list[str]


def dump_dom(page: Path, *, width: int = WINDOW_WIDTH, height: int = 900) -> RenderedPage:
    """Load ``page`` in headless Chromium at ``width`` × ``height`` and return its rendered DOM."""
    completed = _chromium(
        ["--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", "--dump-dom", _url(page)]
    )
    console = []
    for line in completed.stderr.splitlines():
        match = _CONSOLE_LINE.search(line)
        if match:
            console.append(f"{match['message']} ({match['source']})")
    return RenderedPage(dom=completed.stdout, console=console)


def screenshot(page: Path, out: Path, *, height: int, width: int = WINDOW_WIDTH) -> Path:
    """Save a PNG of ``page`` rendered in a ``width`` × ``height`` window to ``out``; returns ``out``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    completed = _chromium([f"--screenshot={out}", f"--window-size={width},{height}", _url(page)])
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}: {completed.stderr[-2000:]}")
    return out


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG file's IHDR chunk."""
    header = Path(path).read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _url(page: Path) -> str:
    return Path(page).resolve().as_uri()


def _chromium(arguments: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="m6rec-chromium-") as profile:
        environment = {**os.environ, "XDG_CONFIG_HOME": profile, "XDG_CACHE_HOME": profile}
        completed = subprocess.run(
            [str(CHROMIUM), *_FLAGS, f"--user-data-dir={profile}", *arguments],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            env=environment,
            check=False,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"chromium exited with {completed.returncode}: {completed.stderr[-2000:]}")
    return completed


@dataclass
class Element:
    """One element of a parsed page: tag, attributes, its own text, and its ancestors (outermost first)."""

    tag: str
    attrs: dict[str, str]
    ancestors: tuple[Element, ...]
    text: str = ""
    children: list[Element] = field(default_factory=list, repr=False)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def chart(self) -> str | None:
        """``data-chart`` of the innermost chart figure holding this element (or of the element itself)."""
        for element in (self, *reversed(self.ancestors)):
            if element.tag == "figure" and "data-chart" in element.attrs:
                return element.attrs["data-chart"]
        return None

    def inside(self, element_id: str) -> bool:
        return any(ancestor.attrs.get("id") == element_id for ancestor in self.ancestors)

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class _ElementCollector(HTMLParser):
    _VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[Element] = []
        self.elements: list[Element] = []

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs}, tuple(self.open))
        if self.open:
            self.open[-1].children.append(element)
        self.elements.append(element)
        if tag not in self._VOID:
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self._VOID:
            self.open.pop()

    def handle_endtag(self, tag):
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data):
        if self.open:
            self.open[-1].text += data


def parse_elements(html: str) -> list[Element]:
    """Every element of ``html`` in document order."""
    collector = _ElementCollector()
    collector.feed(html)
    collector.close()
    return collector.elements
