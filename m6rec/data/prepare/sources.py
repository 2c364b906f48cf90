"""Finding a public dataset's raw files: in a folder, inside its official zip, or downloaded into a cache.

Raw files are read as bytes straight from the folder or the archive (nothing is unpacked) and decoded
as UTF-8, falling back to Latin-1 line by line, because the GroupLens distributions mix both.
"""

from __future__ import annotations

import http.client
import io
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from m6rec.errors import M6RecError
from m6rec.io import atomic_path

DEFAULT_CACHE_DIR = Path("~/.cache/m6rec/downloads")
KGCN_MUSIC_URLS = (
    "https://raw.githubusercontent.com/hwwang55/KGCN/master/data/music/kg.txt",
    "https://raw.githubusercontent.com/hwwang55/KGCN/master/data/music/item_index2entity_id.txt",
)
DOWNLOAD_TIMEOUT_S = 60


class DatasetSourceError(M6RecError, ValueError):
    """The raw files of a dataset cannot be found, fetched or parsed."""


@dataclass(frozen=True)
class RawFiles:
    """The raw files of one distribution: those in ``root`` when it is a folder, or the archive members
    under ``member_prefix`` when ``root`` is a zip file."""

    root: Path
    member_prefix: str | None = None

    @property
    def is_archive(self) -> bool:
        """Whether the files are members of a zip archive rather than files in a folder."""
        return self.member_prefix is not None

    def has(self, name: str) -> bool:
        """Whether the raw file ``name`` (a bare file name such as ``u.data``) is present."""
        if self.is_archive:
            with zipfile.ZipFile(self.root) as archive:
                return self.member_prefix + name in archive.namelist()
        return (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        """The content of the raw file ``name``; :class:`DatasetSourceError` naming it when absent."""
        if not self.has(name):
            raise DatasetSourceError(f"raw file '{name}' not found in {self.describe()}")
        if self.is_archive:
            with zipfile.ZipFile(self.root) as archive:
                return archive.read(self.member_prefix + name)
        return (self.root / name).read_bytes()

    def read_frame(
        self, name: str, columns: Sequence[str], *, delimiter: str = "\t", header: bool = False
    ) -> pl.DataFrame:
        """The delimited raw file ``name`` as a frame of string ``columns``, values as written.

        No quoting is applied (titles and names hold bare quotes). ``header`` skips the first line; blank
        lines are skipped. A line with another number of fields raises :class:`DatasetSourceError`.
        """
        import pyarrow.csv as pa_csv

        try:
            table = pa_csv.read_csv(
                io.BytesIO(utf8_bytes(self.read_bytes(name))),
                read_options=pa_csv.ReadOptions(
                    column_names=list(columns), skip_rows=int(header), use_threads=False
                ),
                parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False),
                convert_options=pa_csv.ConvertOptions(
                    column_types={column: pa.string() for column in columns}, strings_can_be_null=False
                ),
            )
        except pa.ArrowInvalid as error:
            problem = str(error).removeprefix("CSV parse error: ").splitlines()[0]
            raise DatasetSourceError(f"{name}: {problem} ({self.describe()})") from None
        return pl.from_arrow(table)

    def read_rows(
        self, name: str, *, n_fields: int, delimiter: str = "\t", header: bool = False
    ) -> list[tuple[str, ...]]:
        """The rows of a small delimited raw file ``name``, each a tuple of ``n_fields`` strings."""
        columns = [f"field_{position}" for position in range(n_fields)]
        return self.read_frame(name, columns, delimiter=delimiter, header=header).rows()

    def describe(self) -> str:
        """Where the files are, for messages and ``dataset.json``."""
        if self.is_archive:
            return f"{self.root}!/{self.member_prefix}" if self.member_prefix else str(self.root)
        return str(self.root)


def utf8_bytes(data: bytes) -> bytes:
    """``data`` as UTF-8 without a byte-order mark; lines that are not UTF-8 are read as Latin-1."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return b"\n".join(_decode_line(line).encode("utf-8") for line in data.split(b"\n"))
    return data


def _decode_line(raw_line: bytes) -> str:
    try:
        return raw_line.decode("utf-8")
    except UnicodeDecodeError:
        return raw_line.decode("latin-1")


def int_column(frame: pl.DataFrame, column: str, *, file: str) -> pl.Series:
    """``frame[column]`` parsed as int64; :class:`DatasetSourceError` naming the first non-integer value."""
    values = frame[column].str.strip_chars().cast(pl.Int64, strict=False)
    if values.null_count():
        position = values.is_null().arg_max()
        raise DatasetSourceError(
            f"{file}: data row {position + 1}: {column} {frame[column][position]!r} is not an integer"
        )
    return values


def open_raw_files(source: Path, anchor: str) -> RawFiles:
    """The raw files in ``source``: a folder or a zip holding ``anchor`` at its top level or one folder down.

    ``anchor`` is a file every copy of the distribution has (``u.data``); the other raw files are read
    from the folder where it was found.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DatasetSourceError(f"source not found: {source}")
    if source.is_dir():
        return RawFiles(_folder_holding(source, anchor))
    if not zipfile.is_zipfile(source):
        raise DatasetSourceError(f"source {source} is neither a folder nor a zip archive")
    return RawFiles(source, _archive_prefix_holding(source, anchor))


def fetch(url: str, cache_dir: Path | None = None) -> Path:
    """Download ``url`` into ``cache_dir`` (default ``~/.cache/m6rec/downloads``) unless already there.

    Returns the local path. A zip found in the cache that is not a valid archive is downloaded again.
    Raises :class:`DatasetSourceError` when the download fails.
    """
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
    target = cache_dir / url.rsplit("/", 1)[-1]
    if target.is_file() and (target.suffix != ".zip" or zipfile.is_zipfile(target)):
        return target
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DatasetSourceError(
            f"could not fetch {url} ({reason}); download it yourself and pass --source DIR_OR_ZIP"
        ) from error
    write_atomically(target, lambda temporary: temporary.write_bytes(payload))
    return target


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it onto ``path``."""
    with atomic_path(path) as temporary:
        write(temporary)


def fetch_kgcn_music(cache_dir: Path | None = None) -> Path:
    """Download KGCN's Last.FM knowledge graph files; returns the folder to pass as ``kgcn``."""
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / "kgcn-music"
    for url in KGCN_MUSIC_URLS:
        fetch(url, cache_dir)
    return cache_dir


def resolve_raw_files(source: Path | None, *, url: str, anchor: str, cache_dir: Path | None) -> RawFiles:
    """The raw files from ``source`` when given, else from the official zip at ``url`` (downloaded once)."""
    if source is None:
        source = fetch(url, cache_dir)
    return open_raw_files(source, anchor)


def _folder_holding(folder: Path, anchor: str) -> Path:
    if (folder / anchor).is_file():
        return folder
    holders = sorted(child for child in folder.iterdir() if child.is_dir() and (child / anchor).is_file())
    if not holders:
        raise DatasetSourceError(f"raw file '{anchor}' not found in {folder} or its subfolders")
    if len(holders) > 1:
        names = ", ".join(child.name for child in holders)
        raise DatasetSourceError(f"raw file '{anchor}' found in several subfolders of {folder}: {names}")
    return holders[0]


def _archive_prefix_holding(archive_path: Path, anchor: str) -> str:
    with zipfile.ZipFile(archive_path) as archive:
        names = archive.namelist()
    prefixes = sorted(
        name.removesuffix(anchor)
        for name in names
        if name.rsplit("/", 1)[-1] == anchor and name.count("/") <= 1 and not name.startswith("__MACOSX/")
    )
    if not prefixes:
        raise DatasetSourceError(f"raw file '{anchor}' not found in {archive_path} or its top folders")
    if len(prefixes) > 1:
        raise DatasetSourceError(
            f"raw file '{anchor}' found in several folders of {archive_path}: {prefixes}"
        )
    return prefixes[0]
