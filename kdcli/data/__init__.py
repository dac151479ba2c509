"""Datasets by name, and the device-resident loader that batches them.

``get_dataset(name)`` returns a :class:`Dataset` whose ``info`` is known at once; images are read
only by ``dataset.load("train" | "test")``. File-based datasets are looked for in ``--data-dir``,
then ``$KD_DATA_DIR``, then system folders, then ``~/.cache/kd/data``; a download is tried only
when none holds a copy (see :mod:`kdcli.data.locate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kdcli.data.base import Dataset, DatasetInfo, ImageSet, Split
from kdcli.data.builtin import DIGITS_INFO, digits_dataset, fake_dataset
from kdcli.data.cifar import CIFAR10, CIFAR100
from kdcli.data.folder import folder_available, folder_dataset
from kdcli.data.idx import FASHION_MNIST, MNIST
from kdcli.data.loader import DeviceLoader, channel_stats, iterate_eval, split_train_val
from kdcli.data.locate import FileSource
from kdcli.data.svhn import SVHN
from kdcli.data.usps import USPS
from kdcli.registry import Registry

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DeviceLoader",
    "ImageSet",
    "Split",
    "available_offline",
    "channel_stats",
    "get_dataset",
    "iterate_eval",
    "split_train_val",
]

# A builder takes the data directory (or None) plus what a name pattern captured, and returns a
# Dataset. Entry extras: ``offline`` (same arguments) says whether a local copy exists without
# downloading; ``static_info`` is the DatasetInfo of a dataset whose facts are fixed (for `kd list`).
DatasetBuilder = Callable[..., Dataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")

DATASETS.add(
    "digits",
    lambda data_dir: digits_dataset(),
    help="scikit-learn's 8x8 digits (1797 images, shipped in the wheel); the default",
    static_info=DIGITS_INFO,
)
DATASETS.add(
    "fake",
    lambda data_dir: fake_dataset(),
    help="generated 1x8x8, 10 classes, 200 train / 100 test; for tests",
    static_info=fake_dataset().info,
)
DATASETS.add(
    "fake-C-S-K",
    lambda data_dir, channels, size, classes: fake_dataset(channels, size, classes),
    help="generated data with C channels, SxS pixels, K classes; for tests",
    pattern=r"fake-(?P<channels>[1-9]\d*)-(?P<size>[1-9]\d*)-(?P<classes>[1-9]\d*)",
    parse=lambda m: {k: int(v) for k, v in m.groupdict().items()},
    examples=("fake-3-32-10",),
)


def _add_file_source(source: FileSource, help: str) -> None:
    DATASETS.add(
        source.info.name,
        lambda data_dir: source.open(data_dir),
        help=help,
        offline=lambda data_dir: source.available(data_dir),
        static_info=source.info,
    )


_add_file_source(MNIST, "MNIST digits, 28x28 gray, 60k/10k (idx files)")
_add_file_source(FASHION_MNIST, "Fashion-MNIST, 28x28 gray, 60k/10k (idx files; Debian dataset-fashion-mnist)")
_add_file_source(USPS, "USPS digits, 16x16 gray, 7291/2007 (libsvm .bz2)")
_add_file_source(CIFAR10, "CIFAR-10, 32x32 colour, 50k/10k (python or binary batches)")
_add_file_source(CIFAR100, "CIFAR-100 (fine labels), 32x32 colour, 50k/10k (python or binary batches)")
_add_file_source(SVHN, "SVHN cropped digits, 32x32 colour, 73k/26k (.mat files)")

DATASETS.add(
    "folder:PATH",
    lambda data_dir, path: folder_dataset(path),
    help="an ImageFolder: PATH/train/<class>/*, PATH/test/<class>/*; decoded once and cached",
    pattern=r"folder:(?P<path>.+)",
    offline=lambda data_dir, path: folder_available(path),
)


def get_dataset(name: str, data_dir: str | Path | None = None) -> Dataset:
    """The dataset called ``name``; unknown names raise :class:`KDError` with suggestions.

    No image is read here (except a ``folder:`` dataset's first use, which builds its cache to learn
    its mean/std); missing files raise a :class:`KDError` that says where to put them.
    """
    entry, captured = DATASETS.resolve(name)
    return entry.builder(data_dir, **captured)


def available_offline(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether ``name`` can be loaded without a download (for ``kd list datasets``).

    A family's template name (``fake-C-S-K``, ``folder:PATH``) counts as available when the family
    needs no files.
    """
    template = next((e for e in DATASETS if e.name == name and e.pattern is not None), None)
    if template is not None:
        return "offline" not in template.info
    entry, captured = DATASETS.resolve(name)
    offline: Callable[..., bool] | None = entry.info.get("offline")
    return True if offline is None else bool(offline(data_dir, **captured))

