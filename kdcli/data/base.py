"""What a dataset is to kd: static info plus two splits of uint8 images loaded on request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from kdcli.registry import Registry

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset known without reading its images."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None = None
    test_size: int | None = None
    class_names: tuple[str, ...] = ()
    augment: str = "none"  # "crop_flip" for 32x32 colour, "none" for digits-like data
    #: the dataset's own image size when ``image_size`` is a resize of it (``--image-size``), else None
    resized_from: int | None = None

    def to_dict(self) -> dict:
        resized = {"resized_from": self.resized_from} if self.resized_from is not None else {}
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment,
            **resized,
        }


@dataclass
class ImageSet:
    """One split: ``images`` uint8 ``[N, C, H, W]`` (CPU), ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    """A named dataset. ``load(split)`` reads one split; the train split is read only when asked."""

    info: DatasetInfo
    loader: Callable[[Split], ImageSet]
    source: str = ""
    _cache: dict[str, ImageSet] = field(default_factory=dict, repr=False)

    def load(self, split: Split) -> ImageSet:
        if split not in self._cache:
            self._cache[split] = self.loader(split)
        return self._cache[split]


#: Every dataset by name. A builder takes the data directory (or None) plus what a name pattern captured,
#: and returns a :class:`Dataset`; each dataset's module registers itself. Entry extras: ``offline``
#: (same arguments) says whether a local copy exists without downloading; ``static_info`` is the
#: :class:`DatasetInfo` of a dataset whose facts are fixed (for ``kd list``).
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")
