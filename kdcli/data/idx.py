"""MNIST and Fashion-MNIST from the original idx files (gzipped or not, or in torchvision's layout)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DatasetInfo, ImageSet, Split
from kdcli.data.locate import Download, FileSource, register_file_source
from kdcli.errors import KDError

FILES: dict[Split, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = [f"{stem}.gz" for pair in FILES.values() for stem in pair]

# The type byte of an idx header → numpy dtype (multi-byte types are big-endian).
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (``.gz`` or raw): 2 zero bytes, a type byte, a rank byte, big-endian int32 dims, data."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # a truncated download or a file that is not gzip
        raise KDError(f"{path} cannot be read: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise KDError(f"{path} is not an idx file (bad magic number)")
    rank = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=rank, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    offset = 4 + 4 * rank
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise KDError(f"{path} is truncated or corrupt: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_files(folder: Path) -> dict[Split, tuple[Path, Path]] | None:
    """The paths of the four idx files in ``folder`` (gzipped preferred), or None if one is missing."""
    found = {split: (_find_file(folder, x), _find_file(folder, y)) for split, (x, y) in FILES.items()}
    if any(path is None for pair in found.values() for path in pair):
        return None
    return found  # type: ignore[return-value]


def read_idx_split(files: dict[Split, tuple[Path, Path]], split: Split) -> ImageSet:
    image_path, label_path = files[split]
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise KDError(f"{image_path} and {label_path} do not hold matching uint8 images [N, H, W] and labels [N]")
    return ImageSet(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


MNIST_INFO = DatasetInfo(
    name="mnist",
    num_classes=10,
    channels=1,
    image_size=28,
    mean=(0.1307,),
    std=(0.3081,),
    train_size=60000,
    test_size=10000,
    class_names=tuple(str(d) for d in range(10)),
)

FASHION_INFO = DatasetInfo(
    name="fashion-mnist",
    num_classes=10,
    channels=1,
    image_size=28,
    mean=(0.2860,),
    std=(0.3530,),
    train_size=60000,
    test_size=10000,
    class_names=(
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    ),
)


def _mnist_downloads() -> list[Download]:
    from torchvision.datasets import MNIST  # noqa: PLC0415 - torchvision is imported only to download

    return [Download(MNIST.mirrors[0] + name, name, md5) for name, md5 in MNIST.resources]


def _fashion_downloads() -> list[Download]:
    from torchvision.datasets import FashionMNIST  # noqa: PLC0415 - torchvision is imported only to download

    return [Download(FashionMNIST.mirrors[0] + name, name, md5) for name, md5 in FashionMNIST.resources]


MNIST = register_file_source(FileSource(
    info=MNIST_INFO,
    subdirs=("", "mnist", "MNIST/raw"),
    find=find_idx_files,
    read=read_idx_split,
    downloads=_mnist_downloads,
    expected=", ".join(FILE_NAMES),
), 'MNIST digits, 28x28 gray, 60k/10k (idx files)')

FASHION_MNIST = register_file_source(FileSource(
    info=FASHION_INFO,
    subdirs=("", "fashion-mnist", "FashionMNIST/raw"),
    find=find_idx_files,
    read=read_idx_split,
    downloads=_fashion_downloads,
    expected=", ".join(FILE_NAMES),
    system=("/usr/share/datasets/fashion-mnist",),
    hint="`apt install dataset-fashion-mnist`",
), 'Fashion-MNIST, 28x28 gray, 60k/10k (idx files; Debian dataset-fashion-mnist)')
