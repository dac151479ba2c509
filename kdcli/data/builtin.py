"""Datasets that need no files: scikit-learn's ``digits`` (kd's default) and generated ``fake`` data for tests."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from kdcli.data.base import DATASETS, Dataset, DatasetInfo, ImageSet, Split
from kdcli.data.loader import seeded_generator, stratified_split_indices

# --- digits -------------------------------------------------------------------------------

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: every run, whatever its --seed, trains and tests on the same images

DIGITS_INFO = DatasetInfo(
    name="digits",
    num_classes=10,
    channels=1,
    image_size=8,
    # Measured once on the fixed train split below (uint8 / 255); tests check they still match.
    mean=(0.30495,),
    std=(0.37578,),
    train_size=1438,
    test_size=359,
    class_names=tuple(str(d) for d in range(10)),
)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 ``[N, 1, 8, 8]`` and their labels (parsed once per process)."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn takes ~1 s to import: only for digits

    bunch = load_digits()
    # Pixel values are counts 0..16; spread them over 0..255.
    pixels = np.rint(bunch.data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return torch.from_numpy(pixels), torch.from_numpy(bunch.target.astype(np.int64))


def digits_split_indices() -> dict[Split, torch.Tensor]:
    """The fixed stratified 80/20 split of the 1797 digits, as sorted index tensors."""
    _, labels = _digits_arrays()
    train, test = stratified_split_indices(labels, DIGITS_TEST_FRACTION, seeded_generator(DIGITS_SPLIT_SEED, "digits"))
    return {"train": train, "test": test}


def load_digits_split(split: Split) -> ImageSet:
    images, labels = _digits_arrays()
    index = digits_split_indices()[split]
    return ImageSet(images[index], labels[index])


@DATASETS.register("digits", help="scikit-learn's 8x8 digits (1797 images, shipped in the wheel); the default",
                   static_info=DIGITS_INFO)
def digits_dataset(data_dir: object = None) -> Dataset:
    return Dataset(DIGITS_INFO, load_digits_split, source="sklearn.datasets.load_digits")


# --- fake ---------------------------------------------------------------------------------

FAKE_TRAIN_PER_CLASS = 20
FAKE_TEST_PER_CLASS = 10
FAKE_CENTER = 128.0
FAKE_SIGNAL = 24.0  # std of each class's mean pattern, in uint8 levels
FAKE_NOISE = 40.0  # std of per-sample noise: learnable, but not by one pixel


def fake_dataset(channels: int = 1, size: int = 8, classes: int = 10) -> Dataset:
    """Generated data: each class a fixed random pattern plus per-sample noise (learnable well above chance).

    Mean and std are the generator's own parameters (clipping to 0..255 shifts them by well under 1%).
    """
    name = "fake" if (channels, size, classes) == (1, 8, 10) else f"fake-{channels}-{size}-{classes}"
    spread = math.sqrt(FAKE_SIGNAL**2 + FAKE_NOISE**2) / 255.0
    info = DatasetInfo(
        name=name,
        num_classes=classes,
        channels=channels,
        image_size=size,
        mean=(FAKE_CENTER / 255.0,) * channels,
        std=(spread,) * channels,
        train_size=FAKE_TRAIN_PER_CLASS * classes,
        test_size=FAKE_TEST_PER_CLASS * classes,
        class_names=tuple(f"class{i}" for i in range(classes)),
    )

    def load(split: Split) -> ImageSet:
        shape = (channels, size, size)
        patterns = torch.randn((classes, *shape), generator=seeded_generator("fake", shape, classes, "patterns"))
        per_class = FAKE_TRAIN_PER_CLASS if split == "train" else FAKE_TEST_PER_CLASS
        generator = seeded_generator("fake", shape, classes, split)
        labels = torch.arange(per_class * classes) % classes
        noise = torch.randn((labels.shape[0], *shape), generator=generator)
        values = FAKE_CENTER + FAKE_SIGNAL * patterns[labels] + FAKE_NOISE * noise
        return ImageSet(values.round().clamp(0, 255).to(torch.uint8), labels)

    return Dataset(info, load, source="generated")


DATASETS.add("fake", lambda data_dir: fake_dataset(), help="generated 1x8x8, 10 classes, 200 train / 100 test; for tests",
             static_info=fake_dataset().info)
DATASETS.add(
    "fake-C-S-K",
    lambda data_dir, channels, size, classes: fake_dataset(channels, size, classes),
    help="generated data with C channels, SxS pixels, K classes; for tests",
    pattern=r"fake-(?P<channels>[1-9]\d*)-(?P<size>[1-9]\d*)-(?P<classes>[1-9]\d*)",
    parse=lambda m: {k: int(v) for k, v in m.groupdict().items()},
    examples=("fake-3-32-10",),
)
