"""USPS from the bzip2'd libsvm files torchvision also reads (``usps.bz2``, ``usps.t.bz2``)."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DatasetInfo, ImageSet, Split
from kdcli.data.locate import Download, FileSource, register_file_source
from kdcli.errors import KDError

FILES: dict[Split, str] = {"train": "usps.bz2", "test": "usps.t.bz2"}
SIZE = 16


def parse_libsvm(text: str, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse libsvm lines ``label index:value ...`` (1-based indices) into dense ``[N, F]`` float32 and labels.

    Dense files (every feature on every line, in order, as USPS is) take one vectorised parse; sparse
    lines fall back to a per-line parse with missing features left at 0.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    numbers = np.fromstring(" ".join(lines).replace(":", " "), dtype=np.float64, sep=" ")
    width = 1 + 2 * num_features
    if numbers.size == len(lines) * width:
        table = numbers.reshape(len(lines), width)
        if np.array_equal(table[:, 1::2], np.broadcast_to(np.arange(1, num_features + 1), (len(lines), num_features))):
            return table[:, 2::2].astype(np.float32), table[:, 0].astype(np.int64)
    features = np.zeros((len(lines), num_features), dtype=np.float32)
    labels = np.zeros(len(lines), dtype=np.int64)
    for row, line in enumerate(lines):
        label, *pairs = line.split()
        labels[row] = int(float(label))
        for pair in pairs:
            index, value = pair.split(":")
            if not 1 <= int(index) <= num_features:
                raise KDError(f"libsvm feature index {index} outside 1..{num_features} on line {row + 1}")
            features[row, int(index) - 1] = float(value)
    return features, labels


def read_usps_split(files: dict[Split, Path], split: Split) -> ImageSet:
    path = files[split]
    try:
        text = bz2.decompress(path.read_bytes()).decode("ascii")
    except (OSError, ValueError) as exc:
        raise KDError(f"{path} is not a bzip2'd libsvm file: {exc}") from exc
    features, labels = parse_libsvm(text, SIZE * SIZE)
    # Values lie in [-1, 1]; map to 0..255 by rounding (torchvision truncates, losing half a level).
    pixels = np.clip(np.rint((features + 1.0) * 127.5), 0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels.reshape(-1, 1, SIZE, SIZE))
    # The file numbers the classes 1..10 (digit d is class d + 1).
    return ImageSet(images, torch.from_numpy(labels - 1))


def find_usps_files(folder: Path) -> dict[Split, Path] | None:
    paths = {split: folder / name for split, name in FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _downloads() -> list[Download]:
    from torchvision.datasets import USPS  # noqa: PLC0415 - torchvision is imported only to download

    return [Download(url, filename, md5) for url, filename, md5 in USPS.split_list.values()]


USPS_INFO = DatasetInfo(
    name="usps",
    num_classes=10,
    channels=1,
    image_size=SIZE,
    mean=(0.2545,),  # measured on the train split as read here
    std=(0.3846,),
    train_size=7291,
    test_size=2007,
    class_names=tuple(str(d) for d in range(10)),
)

USPS = register_file_source(FileSource(
    info=USPS_INFO,
    subdirs=("", "usps"),
    find=find_usps_files,
    read=read_usps_split,
    downloads=_downloads,
    expected=", ".join(FILES.values()),
), 'USPS digits, 16x16 gray, 7291/2007 (libsvm .bz2)')
