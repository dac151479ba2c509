"""Datasets by name, and the device-resident loader that batches them.

``get_dataset(name)`` returns a :class:`Dataset` whose ``info`` is known at once; images are read
only by ``dataset.load("train" | "test")``. File-based datasets are looked for in ``--data-dir``,
then ``$KD_DATA_DIR``, then system folders, then ``~/.cache/kd/data``; a download is tried only
when none holds a copy (see :mod:`kdcli.data.locate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

# Each module registers its datasets in DATASETS; the import order is the order `kd list` shows.
# isort: off
from kdcli.data import builtin, idx, usps, cifar, svhn, folder  # noqa: F401
# isort: on
from kdcli.data import memory
from kdcli.data.base import DATASETS, Dataset, DatasetInfo, ImageSet, Split
from kdcli.data.loader import DeviceLoader, channel_stats, iterate_eval, split_train_val
from kdcli.data.resize import resized

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


def get_dataset(name: str, data_dir: str | Path | None = None, image_size: int = 0) -> Dataset:
    """The dataset called ``name``; unknown names raise :class:`KDError` with suggestions.

    ``image_size`` (``--image-size``; 0 = the dataset's own) resizes every image once, when a split is
    loaded (:mod:`kdcli.data.resize`); the returned ``info`` reports that size.

    No image is read here (except a ``folder:`` dataset's first use, which builds its cache to learn
    its mean/std); missing files raise a :class:`KDError` that says where to put them.
    """
    if name in memory.IN_MEMORY:  # a Python object given to kdcli.api in this process
        return resized(memory.IN_MEMORY[name], image_size)
    if name.startswith(memory.PREFIX):
        raise memory.missing(name)
    entry, captured = DATASETS.resolve(name)
    return resized(entry.builder(data_dir, **captured), image_size)


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

