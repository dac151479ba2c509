"""Datasets given as Python objects (the Python API, :mod:`kdcli.api`): a ``torch.utils.data.Dataset`` of
``(image, label)`` pairs, read once into memory as uint8 and named for this process.

An image is a PIL image or a ``[H, W(, C)]`` NumPy array (uint8), or a ``[C, H, W]`` tensor (uint8, or
float in [0, 1] as ``transforms.ToTensor`` gives). kd normalises with the data's own per-channel mean and
std, so a transform must not normalise. Images must be square and of one size (kd's models adapt to it).

One dataset object: kd holds out a fixed, stratified 20 % as its test split (the same images whatever the
run's seed, as for ``digits``). A ``(train, test)`` pair: both as given. The name is
``python:<class>-<content hash>``: the same data gets the same name (and the same run names), and a run
records it; such a run is evaluated again by passing the object (``api.evaluate(run, dataset=obj)``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch

from kdcli.data.base import Dataset, DatasetInfo, ImageSet, Split
from kdcli.data.loader import channel_stats, seeded_generator, stratified_split_indices
from kdcli.errors import KDError

PREFIX = "python:"
TEST_FRACTION = 0.2
SPLIT_SEED = 0

#: The datasets registered in this process, by name.
IN_MEMORY: dict[str, Dataset] = {}


def _image(item: Any, index: int) -> torch.Tensor:
    """One image as uint8 ``[C, H, W]``."""
    if isinstance(item, torch.Tensor):
        image = item.detach().cpu()
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.is_floating_point():
            low, high = float(image.min()), float(image.max())
            if low < -1e-6 or high > 1 + 1e-6:
                raise KDError(f"dataset item {index} holds values in [{low:.3g}, {high:.3g}]; kd takes uint8 images "
                              "or floats in [0, 1] (drop Normalize from the transform: kd normalises itself)")
            image = (image * 255).round().to(torch.uint8)
    else:
        array = np.asarray(item)  # a PIL image or a NumPy array: [H, W] or [H, W, C]
        if array.dtype != np.uint8:
            raise KDError(f"dataset item {index} is a {array.dtype} array; kd takes uint8 [H, W(, C)] arrays, PIL "
                          "images or [C, H, W] tensors")
        image = torch.from_numpy(array.copy())
        image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)
    if image.dim() != 3 or image.dtype != torch.uint8:
        raise KDError(f"dataset item {index} is not an image (shape {list(image.shape)})")
    return image.contiguous()


def to_image_set(data: Any, what: str) -> ImageSet:
    """Read every ``(image, label)`` of a map-style dataset once into a uint8 :class:`ImageSet`."""
    try:
        count = len(data)
    except TypeError:
        raise KDError(f"the {what} dataset must have a length (a map-style torch Dataset)") from None
    if count == 0:
        raise KDError(f"the {what} dataset is empty")
    images, labels = [], []
    for index in range(count):
        item = data[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise KDError(f"{what} dataset item {index} is not an (image, label) pair")
        image = _image(item[0], index)
        if images and image.shape != images[0].shape:
            raise KDError(f"{what} dataset item {index} is {list(image.shape)}, item 0 {list(images[0].shape)}: "
                          "kd needs images of one size (resize them in the transform)")
        images.append(image)
        labels.append(int(item[1]))
    stacked = torch.stack(images)
    if stacked.shape[2] != stacked.shape[3]:
        raise KDError(f"kd needs square images; the {what} dataset's are {stacked.shape[2]}×{stacked.shape[3]} "
                      "(resize or crop them in the transform)")
    if stacked.shape[1] not in (1, 3):
        raise KDError(f"kd needs 1 or 3 channels; the {what} dataset's images have {stacked.shape[1]}")
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64))


def register(data: Any | Sequence[Any], name: str | None = None) -> str:
    """Read ``data`` (one dataset, or a ``(train, test)`` pair) into memory for this process; returns its name."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = to_image_set(data[0], "train"), to_image_set(data[1], "test")
        source = data[0]
    else:
        whole = to_image_set(data, "given")
        kept, held = stratified_split_indices(whole.labels, TEST_FRACTION, seeded_generator(SPLIT_SEED, "python"))
        train = ImageSet(whole.images[kept], whole.labels[kept])
        test = ImageSet(whole.images[held], whole.labels[held])
        source = data
    if train.images.shape[1:] != test.images.shape[1:]:
        raise KDError(f"train images are {list(train.images.shape[1:])}, test images {list(test.images.shape[1:])}")
    if int(train.labels.min()) < 0 or int(test.labels.min()) < 0:
        raise KDError("labels must be 0, 1, ..., K-1")
    classes = getattr(source, "classes", None)
    num_classes = max(int(train.labels.max()), int(test.labels.max())) + 1
    if isinstance(classes, (list, tuple)) and len(classes) >= num_classes:
        num_classes = len(classes)
    else:
        classes = [str(i) for i in range(num_classes)]
    digest = hashlib.blake2b(digest_size=6)
    for part in (train.images, train.labels, test.images, test.labels):
        digest.update(part.numpy().tobytes())
    name = name or f"{PREFIX}{type(source).__name__}-{digest.hexdigest()}"
    mean, std = channel_stats(train.images)
    info = DatasetInfo(
        name=name, num_classes=num_classes, channels=int(train.images.shape[1]), image_size=int(train.images.shape[2]),
        mean=mean, std=tuple(max(s, 1e-3) for s in std), train_size=len(train), test_size=len(test),
        class_names=tuple(str(c) for c in classes[:num_classes]),
    )
    splits = {"train": train, "test": test}

    def load(split: Split) -> ImageSet:
        return splits[split]

    IN_MEMORY[name] = Dataset(info, load, source=f"Python object {type(source).__name__}")
    return name


def missing(name: str) -> KDError:
    """The error for a ``python:`` dataset this process does not hold."""
    return KDError(f"dataset {name} was a Python object in the session that made the run; pass the object again "
                   "(dataset=... in kdcli.api)")
