"""Datasets (registry, readers, caches, errors) and the device loader.

Real data is reached only through ``$KD_DATA_DIR`` (tests skip without it); every on-disk format
is also tested on small generated files. No test downloads: ``locate.download`` always raises here.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcli.data import (
    DATASETS,
    DeviceLoader,
    ImageSet,
    available_offline,
    builtin,
    channel_stats,
    cifar,
    folder,
    get_dataset,
    idx,
    iterate_eval,
    locate,
    split_train_val,
)
from kdcli.errors import KDError

REAL_DATA = os.environ.get("KD_DATA_DIR")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never download; keep kd's cache inside the test's tmp dir."""

    def no_download(files, dest):
        raise OSError("network is unreachable (tests never download)")

    monkeypatch.setattr(locate, "download", no_download)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def offline_names() -> list[str]:
    """Example names loadable here, with kd's download cache hidden as it is inside every test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", os.devnull)
        return [name for name in DATASETS.example_names() if available_offline(name)]


# --- every dataset that is here loads right -----------------------------------------------


@pytest.mark.parametrize("name", offline_names())
def test_offline_dataset_loads_with_declared_shape(name: str) -> None:
    dataset = get_dataset(name)
    info = dataset.info
    assert len(info.mean) == len(info.std) == info.channels
    assert all(0 < s < 1 for s in info.std) and all(0 < m < 1 for m in info.mean)
    for split, size in (("train", info.train_size), ("test", info.test_size)):
        data = dataset.load(split)
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert data.images.shape[1:] == (info.channels, info.image_size, info.image_size)
        assert data.images.shape[0] == data.labels.shape[0] == size
        assert int(data.labels.min()) >= 0 and int(data.labels.max()) < info.num_classes
        if split == "train":
            assert torch.bincount(data.labels, minlength=info.num_classes).min() > 0
            mean, std = channel_stats(data.images)
            np.testing.assert_allclose(mean, info.mean, atol=0.01)
            np.testing.assert_allclose(std, info.std, atol=0.01)
    assert dataset.load("train") is dataset.load("train")  # read once


def _failing_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("images were read")

    monkeypatch.setattr(builtin, "_digits_arrays", boom)
    monkeypatch.setattr(builtin, "seeded_generator", boom)
    for source in (idx.MNIST, idx.FASHION_MNIST, cifar.CIFAR10, cifar.CIFAR100):
        monkeypatch.setattr(source, "read", boom)
    from kdcli.data import svhn, usps

    monkeypatch.setattr(usps.USPS, "read", boom)
    monkeypatch.setattr(svhn.SVHN, "read", boom)


@pytest.mark.parametrize("name", [n for n in offline_names() if not n.startswith("folder:")])
def test_info_does_not_read_images(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _failing_readers(monkeypatch)
    dataset = get_dataset(name)
    assert dataset.info.name == name and dataset.info.num_classes > 1
    with pytest.raises(AssertionError, match="images were read"):
        dataset.load("test")


def test_unknown_name_suggests() -> None:
    with pytest.raises(KDError, match=r"Did you mean mnist") as err:
        get_dataset("mnits")
    assert "fashion-mnist" in str(err.value) and "\n" not in str(err.value)


def test_augment_policy() -> None:
    assert get_dataset("digits").info.augment == "none"
    assert cifar.CIFAR10.info.augment == cifar.CIFAR100.info.augment == "crop_flip"
    from kdcli.data import svhn

    assert svhn.SVHN.info.augment == "crop"


# --- digits and fake ----------------------------------------------------------------------


def test_digits_split_is_fixed_disjoint_and_stratified() -> None:
    torch.manual_seed(1234)  # the user's seed must not matter
    first = builtin.digits_split_indices()
    torch.manual_seed(99)
    second = builtin.digits_split_indices()
    assert all(torch.equal(first[s], second[s]) for s in ("train", "test"))
    train, test = first["train"], first["test"]
    assert len(train) == 1438 and len(test) == 359
    assert torch.equal(torch.sort(torch.cat([train, test])).values, torch.arange(1797))
    # A fingerprint of the split: if it moves, so do the hard-coded mean/std and every digits result.
    assert test[:5].tolist() == [3, 9, 10, 13, 30] and int(test.sum()) == 327839
    _, labels = builtin._digits_arrays()
    per_class = torch.bincount(labels[test], minlength=10).double() / torch.bincount(labels, minlength=10)
    assert torch.all((per_class - 0.2).abs() < 0.01)
    mean, std = channel_stats(get_dataset("digits").load("train").images)
    np.testing.assert_allclose(mean, builtin.DIGITS_INFO.mean, atol=1e-4)
    np.testing.assert_allclose(std, builtin.DIGITS_INFO.std, atol=1e-4)


def test_fake_is_deterministic_and_learnable() -> None:
    a, b = get_dataset("fake"), get_dataset("fake")
    assert torch.equal(a.load("train").images, b.load("train").images)
    train, test = a.load("train"), a.load("test")
    assert not torch.equal(train.images[:100], test.images)
    # Nearest class mean, fitted on train, must beat chance (10%) by far on test.
    x_train, x_test = train.images.flatten(1).float(), test.images.flatten(1).float()
    centroids = torch.stack([x_train[train.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == test.labels).float().mean()
    assert accuracy > 0.6
    shaped = get_dataset("fake-3-16-4")
    assert shaped.load("train").images.shape == (80, 3, 16, 16) and shaped.info.num_classes == 4


# --- validation split ---------------------------------------------------------------------


def test_split_train_val_is_stratified_disjoint_and_seeded() -> None:
    data = get_dataset("digits").load("train")
    kept, val = split_train_val(data, 0.1, seed=5)
    assert val is not None and len(kept) + len(val) == len(data)
    # Disjoint and complete: compare by a per-image fingerprint plus label.
    ids = data.images.flatten(1).long() @ torch.arange(64, dtype=torch.long) * 10 + data.labels
    kept_ids = kept.images.flatten(1).long() @ torch.arange(64, dtype=torch.long) * 10 + kept.labels
    val_ids = val.images.flatten(1).long() @ torch.arange(64, dtype=torch.long) * 10 + val.labels
    assert not set(kept_ids.tolist()) & set(val_ids.tolist())
    assert sorted(kept_ids.tolist() + val_ids.tolist()) == sorted(ids.tolist())
    expected = torch.round(torch.bincount(data.labels).double() * 0.1).long()
    assert torch.equal(torch.bincount(val.labels, minlength=10), expected)
    again_kept, again_val = split_train_val(data, 0.1, seed=5)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_kept.labels, kept.labels)
    _, other = split_train_val(data, 0.1, seed=6)
    assert not torch.equal(other.images, val.images)
    assert split_train_val(data, 0.0, seed=5) == (data, None)
    with pytest.raises(KDError):
        split_train_val(data, 1.0, seed=5)


# --- DeviceLoader -------------------------------------------------------------------------


def indexed_set(n: int, channels: int = 1, size: int = 4) -> ImageSet:
    """Sample i has label i and every pixel equal to i % 256."""
    labels = torch.arange(n)
    images = (labels % 256).to(torch.uint8).reshape(n, 1, 1, 1).expand(n, channels, size, size).contiguous()
    return ImageSet(images, labels)


def loader(data: ImageSet, batch_size: int = 16, **kwargs) -> DeviceLoader:
    options = dict(mean=0.0, std=1 / 255, device="cpu", shuffle=True, drop_last=False)
    options.update(kwargs)
    return DeviceLoader(data, batch_size, **options)


def test_loader_covers_every_sample_once_and_keeps_pairs() -> None:
    data = indexed_set(103)
    batches = list(loader(data).epoch(0))
    assert len(batches) == len(loader(data)) == 7 and len(batches[-1][1]) == 103 - 6 * 16
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(torch.sort(labels).values, torch.arange(103))
    assert not torch.equal(labels, torch.arange(103))  # shuffled
    for images, y in batches:
        assert images.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.allclose(images[:, 0, 0, 0], (y % 256).float())  # mean 0, std 1/255 → raw values
    dropped = loader(data, drop_last=True)
    assert len(dropped) == 6 and sum(len(y) for _, y in dropped.epoch(0)) == 96


def test_loader_order_depends_on_seed_and_epoch_only() -> None:
    data = indexed_set(64)

    def order(seed: int, epoch: int) -> list[int]:
        return torch.cat([y for _, y in loader(data, seed=seed).epoch(epoch)]).tolist()

    torch.manual_seed(0)
    first = order(3, 1)
    torch.manual_seed(1)  # global RNG state must not matter
    assert order(3, 1) == first
    assert order(3, 2) != first and order(4, 1) != first
    assert torch.cat([y for _, y in loader(data, shuffle=False).epoch(5)]).tolist() == list(range(64))


@pytest.mark.parametrize("augment", ["none", "crop", "flip", "crop_flip"])
def test_resume_mid_epoch_replays_the_tail(augment: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=generator)
    data = ImageSet(images, torch.arange(50) % 10)
    full = list(loader(data, 8, augment=augment, seed=7).epoch(2))
    tail = list(loader(data, 8, augment=augment, seed=7).epoch(2, start_step=3))
    assert len(tail) == len(full) - 3
    for (x_full, y_full), (x_tail, y_tail) in zip(full[3:], tail):
        assert torch.equal(x_full, x_tail) and torch.equal(y_full, y_tail)
    assert list(loader(data, 8).epoch(0, start_step=len(full))) == []


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) with zero fill: what a crop of the 4-padded image at (4+dy, 4+dx) shows."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    h, w = image.shape[-2:]
    return padded[..., 4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]


def test_crop_and_flip_are_real_and_keep_shape() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=generator)
    data = ImageSet(images, torch.arange(64))
    plain = {int(i): x for xb, yb in loader(data, 64).epoch(0) for i, x in zip(yb, xb)}

    flipped = [(int(i), x) for xb, yb in loader(data, 64, augment="flip").epoch(0) for i, x in zip(yb, xb)]
    mirrored = sum(torch.equal(x, plain[i].flip(-1)) for i, x in flipped)
    assert all(torch.equal(x, plain[i]) or torch.equal(x, plain[i].flip(-1)) for i, x in flipped)
    assert 16 < mirrored < 48

    for augment in ("crop", "crop_flip"):
        moved = 0
        for xb, yb in loader(data, 64, augment=augment).epoch(0):
            assert xb.shape == (64, 3, 8, 8) and xb.dtype == torch.float32
            for i, x in zip(yb.tolist(), xb):
                source = plain[i]
                candidates = [source, source.flip(-1)] if augment == "crop_flip" else [source]
                shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)]
                matches = [(dy, dx) for c in candidates for dy, dx in shifts if torch.equal(x, _shifted(c, dy, dx))]
                assert matches, "augmented image is not a zero-padded crop of the original"
                moved += (0, 0) not in matches
        assert moved > 32


def test_normalisation_and_channels_last() -> None:
    dataset = get_dataset("fake-3-8-10")
    data = dataset.load("train")
    mean, std = dataset.info.mean, dataset.info.std
    batches = torch.cat([x for x, _ in loader(data, 64, mean=mean, std=std).epoch(0)])
    assert abs(batches.mean().item()) < 0.05 and abs(batches.std().item() - 1) < 0.05
    for x, _ in loader(data, 64, mean=mean, std=std, channels_last=True, augment="crop_flip").epoch(0):
        assert x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] == 3
    evaluated = list(iterate_eval(data, 75, mean, std, "cpu"))
    assert [len(y) for _, y in evaluated] == [75, 75, 50]
    assert torch.equal(torch.cat([y for _, y in evaluated]), data.labels)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    expected = (data.images[:75].float() / 255 - mean_t) / std_t
    assert torch.allclose(evaluated[0][0], expected, atol=1e-5)


# --- readers on generated files -----------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_fake_mnist(folder: Path, n: int = 30, compress: bool = True, value: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arrays = {}
    for split, (images_name, labels_name) in idx.FILES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / (images_name + (".gz" if compress else "")), images, compress)
        write_idx(folder / (labels_name + (".gz" if compress else "")), labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("layout, compress", [("", True), ("mnist", False), ("MNIST/raw", True)])
def test_idx_reader_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, compress: bool) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    arrays = write_fake_mnist(tmp_path / layout, compress=compress)
    dataset = get_dataset("mnist", tmp_path)
    test = dataset.load("test")
    assert test.images.shape == (30, 1, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), arrays["test"][0])
    assert np.array_equal(test.labels.numpy(), arrays["test"][1])


def test_explicit_data_dir_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_mnist(tmp_path / "env", value=1)
    mine = write_fake_mnist(tmp_path / "mine", value=2)
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "env"))
    dataset = get_dataset("mnist", tmp_path / "mine")
    assert dataset.source == str(tmp_path / "mine")
    assert np.array_equal(dataset.load("train").images[:, 0].numpy(), mine["train"][0])
    assert get_dataset("mnist").source == str(tmp_path / "env")


def test_corrupt_idx_is_a_kderror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    with pytest.raises(KDError, match="t10k-images"):
        get_dataset("mnist", tmp_path).load("test")


def test_usps_reader_on_generated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(-1, 1, (12, 256)), 3)
    values[0, 0], values[0, 1] = -1.0, 1.0
    labels = np.arange(12) % 10 + 1  # the file numbers classes 1..10
    for name in ("usps.bz2", "usps.t.bz2"):
        lines = [f"{y} " + " ".join(f"{j + 1}:{v:.6f}" for j, v in enumerate(row)) for y, row in zip(labels, values)]
        (tmp_path / "usps").mkdir(exist_ok=True)
        (tmp_path / "usps" / name).write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    data = get_dataset("usps", tmp_path).load("train")
    assert data.images.shape == (12, 1, 16, 16) and data.labels.tolist() == (labels - 1).tolist()
    assert data.images[0, 0, 0, 0] == 0 and data.images[0, 0, 0, 1] == 255
    expected = np.rint((values + 1) * 127.5).astype(np.uint8).reshape(12, 1, 16, 16)
    assert np.array_equal(data.images.numpy(), expected)


def cifar_arrays(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n)


def check_cifar(dataset, arrays: dict) -> None:
    for split, (pixels, labels) in arrays.items():
        data = dataset.load(split)
        assert data.images.shape == (len(labels), 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == labels.tolist()
        # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major.
        assert data.images[1, 1, 2, 3] == pixels[1, 1024 + 2 * 32 + 3]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_python_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: int) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    arrays = {"train": [], "test": None}
    for i in range(1, 6):
        pixels, labels = cifar_arrays(4, 10, i)
        arrays["train"].append((pixels, labels))
        batch = {b"batch_label": b"training batch", b"labels": labels.tolist(), b"data": pixels}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=protocol))
    pixels, labels = cifar_arrays(6, 10, 9)
    (base / "test_batch").write_bytes(pickle.dumps({b"labels": labels.tolist(), b"data": pixels}, protocol=protocol))
    arrays["train"] = tuple(np.concatenate(parts) for parts in zip(*arrays["train"]))
    arrays["test"] = (pixels, labels)
    check_cifar(get_dataset("cifar10", tmp_path), arrays)


def test_cifar_binary_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    ten = tmp_path / "cifar10" / "cifar-10-batches-bin"
    ten.mkdir(parents=True)
    arrays10 = {}
    names = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    for split, files in names.items():
        parts = []
        for k, name in enumerate(files):
            pixels, labels = cifar_arrays(3, 10, k + 10 * (split == "test"))
            (ten / name).write_bytes(np.concatenate([labels[:, None].astype(np.uint8), pixels], 1).tobytes())
            parts.append((pixels, labels))
        arrays10[split] = tuple(np.concatenate(p) for p in zip(*parts))
    check_cifar(get_dataset("cifar10", tmp_path), arrays10)

    hundred = tmp_path / "cifar-100-binary"
    hundred.mkdir()
    arrays100 = {}
    for split in ("train", "test"):
        pixels, fine = cifar_arrays(5, 100, split == "test")
        coarse = fine // 5
        records = np.concatenate([coarse[:, None], fine[:, None], pixels], 1).astype(np.uint8)
        (hundred / f"{split}.bin").write_bytes(records.tobytes())
        arrays100[split] = (pixels, fine)
    dataset = get_dataset("cifar100", tmp_path)
    assert dataset.info.num_classes == 100
    check_cifar(dataset, arrays100)


def test_cifar100_python_format_uses_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    arrays = {}
    for split in ("train", "test"):
        pixels, fine = cifar_arrays(7, 100, split == "test")
        batch = {b"data": pixels, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        (base / split).write_bytes(pickle.dumps(batch, protocol=2))
        arrays[split] = (pixels, fine)
    check_cifar(get_dataset("cifar100", tmp_path), arrays)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_cifar_pickle_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": [0]}))
    with pytest.raises(KDError, match="refused to load"):
        get_dataset("cifar10", tmp_path).load("test")
    (base / "test_batch").write_bytes(pickle.dumps({b"data": np.array([object()]), b"labels": [0]}))
    with pytest.raises(KDError, match="refused"):
        get_dataset("cifar10", tmp_path).load("test")


def test_svhn_reader_on_generated_mat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    rng = np.random.default_rng(0)
    generated = {}
    for split, name in (("train", "train_32x32.mat"), ("test", "test_32x32.mat")):
        x = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
        y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)
        scipy_io.savemat(tmp_path / name, {"X": x, "y": y})
        generated[split] = (x, y)
    dataset = get_dataset("svhn", tmp_path)
    data = dataset.load("test")
    x, y = generated["test"]
    assert data.images.shape == (6, 3, 32, 32) and data.labels.tolist() == [0, 1, 2, 0, 9, 5]
    assert data.images[4, 2, 5, 7] == x[5, 7, 2, 4]


# --- missing data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, needle",
    [
        ("mnist", "train-images-idx3-ubyte.gz"),
        ("fashion-mnist", "apt install dataset-fashion-mnist"),
        ("usps", "usps.t.bz2"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "test_32x32.mat"),
    ],
)
def test_missing_files_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, needle: str
) -> None:
    monkeypatch.delenv("KD_DATA_DIR", raising=False)
    monkeypatch.setattr(idx.FASHION_MNIST, "system", ())  # a Debian install here must not satisfy the test
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not available_offline(name, empty)
    with pytest.raises(KDError) as err:
        get_dataset(name, empty)
    message = str(err.value)
    assert needle in message and f"--data-dir {empty}" in message and "network is unreachable" in message
    assert "\n" not in message


def test_download_lists_match_torchvision() -> None:
    from kdcli.data import svhn, usps

    for source in (idx.MNIST, idx.FASHION_MNIST, usps.USPS, cifar.CIFAR10, cifar.CIFAR100, svhn.SVHN):
        files = source.downloads()
        assert files and all(f.url.startswith(("http://", "https://")) and f.filename and f.md5 for f in files)


# --- folder: ------------------------------------------------------------------------------


def write_png_folder(root: Path, mode: str = "RGB", size: int = 8) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for split, count in (("train", 4), ("test", 2)):
        for label, name in enumerate(["cat", "ant", "bee"]):  # sorted: ant, bee, cat
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
                image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
                image.save(root / split / name / f"{i}.png")


def test_folder_dataset_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "images"
    write_png_folder(root)
    dataset = get_dataset(f"folder:{root}")
    info = dataset.info
    assert info.class_names == ("ant", "bee", "cat") and info.num_classes == 3
    assert (info.channels, info.image_size, info.train_size, info.test_size) == (3, 8, 12, 6)
    train, test = dataset.load("train"), dataset.load("test")
    assert train.images.shape == (12, 3, 8, 8) and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(info.mean, channel_stats(train.images)[0])
    # the cache lives in kd's cache directory ($XDG_CACHE_HOME/kd), never in the user's data folder
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    assert all(folder.cache_paths(root, split)[0].is_file() for split in ("train", "test"))
    assert os.environ["XDG_CACHE_HOME"] in str(folder.cache_paths(root, "train")[0])

    import PIL.Image

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    again = get_dataset(f"folder:{root}")
    assert again.info == info
    assert torch.equal(again.load("train").images, train.images) and torch.equal(again.load("test").labels, test.labels)

    # A changed file invalidates the cache.
    changed = root / "train" / "ant" / "0.png"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        get_dataset(f"folder:{root}")


def test_folder_gray_readonly_and_odd_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "gray"
    write_png_folder(root, mode="L", size=6)
    # A cache that cannot be written is no failure: the run reads the images, uncached.
    monkeypatch.setattr(folder, "_writable", lambda path: False)
    dataset = get_dataset(f"folder:{root}")
    assert (dataset.info.channels, dataset.info.image_size, dataset.info.augment) == (1, 6, "none")
    assert not folder.cache_paths(root, "train")[0].exists()
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]

    from PIL import Image

    odd = root / "test" / "bee" / "odd.png"
    Image.fromarray(np.zeros((7, 6), dtype=np.uint8), "L").save(odd)
    with pytest.raises(KDError, match="odd.png"):
        get_dataset(f"folder:{root}").load("test")

    with pytest.raises(KDError, match="no test split"):
        (tmp_path / "only" / "train" / "a").mkdir(parents=True)
        get_dataset(f"folder:{tmp_path / 'only'}")
    assert not available_offline(f"folder:{tmp_path / 'missing'}")


@pytest.mark.skipif(not REAL_DATA, reason="KD_DATA_DIR not set")
def test_folder_on_cifar10_jpeg_subset(tmp_path: Path) -> None:
    archive = Path(REAL_DATA) / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} missing")
    root = tmp_path / "cifar10-jpeg"
    taken: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in ("train", "test"):
                continue
            key = f"{parts[0]}/{parts[1]}"
            if taken.get(key, 0) >= (8 if parts[0] == "train" else 4):
                continue
            taken[key] = taken.get(key, 0) + 1
            target = root / parts[0] / parts[1] / Path(parts[2]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    dataset = get_dataset(f"folder:{root}")
    assert dataset.info.class_names == cifar.CIFAR10.info.class_names
    assert (dataset.info.channels, dataset.info.image_size, dataset.info.augment) == (3, 32, "crop_flip")
    train = dataset.load("train")
    assert train.images.shape == (80, 3, 32, 32)
    assert torch.equal(torch.bincount(dataset.load("test").labels), torch.full((10,), 4))
