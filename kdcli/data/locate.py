"""Where dataset files are looked for, how a missing copy is fetched, and what to say when it cannot be.

Search order for a dataset's files: the explicit ``data_dir`` (``--data-dir``), then ``$KD_DATA_DIR``,
then the dataset's system locations (e.g. Debian's ``/usr/share/datasets/fashion-mnist``), then kd's
download cache ``~/.cache/kd/data/<name>``. Only when none holds a copy is a download tried, and
only into that cache.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from kdcli.data.base import DATASETS, Dataset, DatasetInfo, ImageSet, Split
from kdcli.errors import KDError


def cache_root() -> Path:
    """kd's cache: ``$XDG_CACHE_HOME/kd`` (default ``~/.cache/kd``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kd"


def download_dir(name: str) -> Path:
    return cache_root() / "data" / name


def search_roots(name: str, data_dir: str | Path | None, system: Sequence[str | Path] = ()) -> list[Path]:
    """Folders that may hold ``name``'s files, in the order they are tried."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("KD_DATA_DIR"):
        roots.append(Path(os.environ["KD_DATA_DIR"]).expanduser())
    roots.extend(Path(p) for p in system)
    roots.append(download_dir(name))
    return roots


def candidate_dirs(roots: Sequence[Path], subdirs: Sequence[str]) -> list[Path]:
    """Each root, then each ``root/subdir`` (``""`` means the root itself), in order."""
    return [root / sub if sub else root for root in roots for sub in subdirs]


@dataclass(frozen=True)
class Download:
    """One file to fetch: ``url`` saved as ``filename`` (checked against ``md5``); archives are extracted."""

    url: str
    filename: str
    md5: str | None = None
    extract: bool = False


def download(files: Sequence[Download], dest: Path) -> None:
    """Fetch ``files`` into ``dest`` with torchvision's downloader. Tests replace this to stay offline."""
    from torchvision.datasets.utils import download_and_extract_archive, download_url  # noqa: PLC0415 - only to download

    dest.mkdir(parents=True, exist_ok=True)
    for item in files:
        if item.extract:
            download_and_extract_archive(
                item.url, str(dest), filename=item.filename, md5=item.md5, remove_finished=True
            )
        else:
            download_url(item.url, str(dest), filename=item.filename, md5=item.md5)


@dataclass
class FileSource:
    """A dataset read from files a user may already have.

    Attributes:
        info: the dataset's static facts.
        subdirs: where under each search root the files may sit (``""`` is the root itself).
        find: given one folder, what the reader needs (e.g. the paths of each split), or None.
        read: reads one split from what ``find`` returned.
        downloads: what to fetch when no copy is found (a callable: torchvision is imported only then).
        expected: the file names a user should provide, for the error message.
        system: system-wide folders searched after ``$KD_DATA_DIR``.
        hint: another way to get the files (a Debian package), for the error message.
    """

    info: DatasetInfo
    subdirs: tuple[str, ...]
    find: Callable[[Path], Any]
    read: Callable[[Any, Split], ImageSet]
    downloads: Callable[[], Sequence[Download]]
    expected: str
    system: tuple[str, ...] = ()
    hint: str = ""

    def locate(self, roots: Sequence[Path]) -> tuple[Path, Any] | None:
        """The first candidate folder where ``find`` succeeds, with what it found."""
        for folder in candidate_dirs(roots, self.subdirs):
            if folder.is_dir():
                found = self.find(folder)
                if found is not None:
                    return folder, found
        return None

    def available(self, data_dir: str | Path | None) -> bool:
        """Whether a local copy exists (no download is tried)."""
        return self.locate(search_roots(self.info.name, data_dir, self.system)) is not None

    def open(self, data_dir: str | Path | None) -> Dataset:
        """Locate the files now (downloading them if there is no copy); read a split on ``load``."""
        folder, found = self._locate_or_download(data_dir)
        return Dataset(self.info, lambda split: self.read(found, split), source=str(folder))

    def _locate_or_download(self, data_dir: str | Path | None) -> tuple[Path, Any]:
        name = self.info.name
        roots = search_roots(name, data_dir, self.system)
        located = self.locate(roots)
        if located is not None:
            return located
        dest = download_dir(name)
        try:
            download(self.downloads(), dest)
        except Exception as exc:  # no network, a moved mirror, a full disk: all end in the same advice
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(OSError):
                dest.rmdir()  # only if the failed download left it empty
        else:
            located = self.locate([dest])
            if located is not None:
                return located
            reason = f"the download into {dest} did not produce the expected files"
        where = Path(data_dir).expanduser() if data_dir is not None else Path("DIR")
        advice = f"put {self.expected} in {where}, then pass --data-dir {where} (or set KD_DATA_DIR)"
        if self.hint:
            advice += f", or {self.hint}"
        searched = ", ".join(str(r) for r in roots)
        raise KDError(f"{name} not found: {advice}. Searched {searched}; download failed ({reason}).")


def register_file_source(source: FileSource, help: str) -> FileSource:
    """Register ``source`` in :data:`~kdcli.data.base.DATASETS` under its dataset's name."""
    DATASETS.add(
        source.info.name,
        lambda data_dir: source.open(data_dir),
        help=help,
        offline=lambda data_dir: source.available(data_dir),
        static_info=source.info,
    )
    return source
