"""SVHN (cropped digits) from torchvision's files ``train_32x32.mat`` and ``test_32x32.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DatasetInfo, ImageSet, Split
from kdcli.data.locate import Download, FileSource, register_file_source
from kdcli.errors import KDError

FILES: dict[Split, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def read_svhn_split(files: dict[Split, Path], split: Split) -> ImageSet:
    """``X`` is uint8 ``[32, 32, 3, N]`` (HWCN); ``y`` is ``[N, 1]`` with digit 0 stored as 10."""
    try:
        from scipy.io import loadmat  # noqa: PLC0415 - scipy is slow to import; only SVHN's .mat files need it
    except ImportError as exc:
        raise KDError("reading SVHN needs scipy: pip install scipy") from exc
    path = files[split]
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except (OSError, ValueError, NotImplementedError) as exc:
        raise KDError(f"{path} is not a MATLAB v5 file with X and y: {exc}") from exc
    pixels, labels = mat.get("X"), mat.get("y")
    if pixels is None or labels is None or pixels.ndim != 4 or pixels.shape[:3] != (32, 32, 3):
        raise KDError(f"{path}: expected X of shape [32, 32, 3, N] and y of shape [N, 1]")
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(3, 2, 0, 1), dtype=np.uint8))
    labels = labels.reshape(-1).astype(np.int64) % 10
    if labels.shape[0] != images.shape[0]:
        raise KDError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    return ImageSet(images, torch.from_numpy(labels))


def find_svhn_files(folder: Path) -> dict[Split, Path] | None:
    paths = {split: folder / name for split, name in FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _downloads() -> list[Download]:
    from torchvision.datasets import SVHN  # noqa: PLC0415 - torchvision is imported only to download

    return [Download(*SVHN.split_list[split]) for split in FILES]


SVHN = register_file_source(FileSource(
    info=DatasetInfo(
        name="svhn",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        train_size=73257,
        test_size=26032,
        class_names=tuple(str(d) for d in range(10)),
        augment="crop",  # a flipped digit is another glyph
    ),
    subdirs=("", "svhn", "SVHN"),
    find=find_svhn_files,
    read=read_svhn_split,
    downloads=_downloads,
    expected=", ".join(FILES.values()),
), 'SVHN cropped digits, 32x32 colour, 73k/26k (.mat files)')
