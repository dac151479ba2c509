"""``--image-size N``: a dataset's images resized once, when a split is loaded.

The data-free papers feed MNIST to LeNet-5 at 32×32: the official DAFL code (huawei-noah,
``DAFL/teacher-train.py``) and the ZSKD/Lopes rows that reuse its teachers read MNIST through
``transforms.Resize((32, 32))`` before ``ToTensor`` and ``Normalize((0.1307,), (0.3081,))``. That
Resize is PIL's bilinear filter with antialiasing; here it is ``F.interpolate(mode="bilinear",
antialias=True)``, which follows PIL's filter (pixel centres, support widened when shrinking), rounded
back to uint8. The normalisation keeps the dataset's own mean and std, as the official code keeps
MNIST's: resizing changes them by well under 1 %.

The resize is done once per split and cached with it (:class:`~kdcli.data.base.Dataset`'s cache): the
training loop reads uint8 images of the new size like any others. The dataset's
:class:`~kdcli.data.base.DatasetInfo` reports the new size (``resized_from`` keeps the native one), so
models are built for it and runs record it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kdcli.data.base import Dataset, ImageSet, Split
from kdcli.errors import KDError

#: Images resized at once (bounds the float copy: 4096 × 3 × 256² floats is 3 GiB at most).
CHUNK = 4096
#: The largest --image-size accepted (a typo such as 3232 should not allocate gigabytes).
MAX_SIZE = 1024


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` → uint8 ``[N, C, size, size]``: bilinear with antialiasing (PIL's filter, as
    torchvision's ``Resize`` on PIL images), rounded and clipped to 0..255."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], CHUNK):
        part = images[start:start + CHUNK].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def check_size(size: int) -> None:
    if not 0 <= size <= MAX_SIZE:
        raise KDError(f"--image-size must be in [0, {MAX_SIZE}] (0 = the dataset's own size; got {size})")


def resized(dataset: Dataset, size: int) -> Dataset:
    """``dataset`` with every image resized to ``size``×``size`` when a split is loaded (``0``, or the
    dataset's own size: ``dataset`` itself)."""
    check_size(size)
    native = dataset.info.image_size
    if size in (0, native):
        return dataset
    info = dataclasses.replace(dataset.info, image_size=size, resized_from=native)
    base = dataset

    def load(split: Split) -> ImageSet:
        data = base.loader(split)  # not base.load: the native split is not kept beside the resized one
        return ImageSet(resize_images(data.images, size), data.labels)

    return Dataset(info, load, source=f"{dataset.source} resized to {size}×{size}")
