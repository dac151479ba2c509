"""--image-size: images resized once at load time (kdcli.data.resize)."""

import numpy as np
import pytest
import torch
from PIL import Image

from kdcli.data import get_dataset
from kdcli.data.resize import resize_images, resized
from kdcli.errors import KDError


def test_upsampling_follows_torchvision_resize_on_pil_images():
    """The official DAFL code resizes MNIST 28 → 32 with transforms.Resize on PIL images: PIL's bilinear filter."""
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = resize_images(images, 32)
    assert ours.shape == (4, 1, 32, 32) and ours.dtype == torch.uint8
    for image, mine in zip(images, ours):
        pil = Image.fromarray(image[0].numpy()).resize((32, 32), Image.BILINEAR)
        assert np.abs(np.asarray(pil).astype(int) - mine[0].numpy().astype(int)).max() <= 1


def test_downsampling_is_antialiased_like_pil():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours = resize_images(images, 12)
    for image, mine in zip(images, ours):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((12, 12), Image.BILINEAR)
        assert np.abs(np.asarray(pil).astype(int) - mine.permute(1, 2, 0).numpy().astype(int)).max() <= 1


def test_a_resized_dataset_reports_its_size_and_resizes_each_split_once(monkeypatch):
    dataset = get_dataset("digits", image_size=12)
    assert dataset.info.image_size == 12 and dataset.info.resized_from == 8
    assert dataset.info.to_dict()["image_size"] == 12 and dataset.info.to_dict()["resized_from"] == 8
    calls = []
    import kdcli.data.resize as resize_module

    original = resize_module.resize_images
    monkeypatch.setattr(resize_module, "resize_images", lambda *a: calls.append(1) or original(*a))
    train = dataset.load("train")
    assert train.images.shape[1:] == (1, 12, 12) and train.images.dtype == torch.uint8
    assert dataset.load("train") is train and len(calls) == 1  # cached: never per step
    native = get_dataset("digits")
    assert torch.equal(train.labels, native.load("train").labels)
    assert "resized_from" not in native.info.to_dict()


def test_zero_or_the_native_size_is_the_dataset_itself():
    dataset = get_dataset("digits")
    assert resized(dataset, 0) is dataset and resized(dataset, 8) is dataset
    with pytest.raises(KDError, match="--image-size"):
        resized(dataset, 5000)
