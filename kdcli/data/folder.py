"""``folder:PATH``: a user's ImageFolder (``PATH/train/<class>/*``, ``PATH/test/<class>/*``).

Images are decoded once (PIL, in a thread pool) into uint8 tensors and cached as safetensors, keyed
by the file list, sizes and modification times, so later runs read one file and decode nothing.
The cache sits in kd's cache directory (``$XDG_CACHE_HOME/kd/folder/<hash of PATH>/``, by default
under ``~/.cache``), never inside the user's data folder. Per-channel mean/std come from the train
split and are stored with its cache. A file that is not a readable image is a one-line error naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kdcli.data.base import DATASETS, Dataset, DatasetInfo, ImageSet, Split
from kdcli.data.loader import channel_stats
from kdcli.data.locate import cache_root
from kdcli.errors import KDError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
SPLIT_DIRS: dict[Split, tuple[str, ...]] = {"train": ("train",), "test": ("test", "val")}
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
CACHE_FORMAT = "1"


@dataclass(frozen=True)
class SplitListing:
    """The image files of one split, in label order, and a key that changes when any file does."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]
    key: str


def _split_dir(root: Path, split: Split) -> Path:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / name}/<class>/" for name in SPLIT_DIRS[split])
    raise KDError(f"folder dataset {root} has no {split} split: put its images in {wanted}")


def _class_names(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def list_split(root: Path, split: Split, classes: list[str]) -> SplitListing:
    """Every image under ``root/<split>/<class>/`` (sorted), labelled by the class's rank in ``classes``."""
    split_dir = _split_dir(root, split)
    present = _class_names(split_dir)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise KDError(f"{split_dir} has class folders not in train/: {', '.join(unknown)}")
    files: list[Path] = []
    labels: list[int] = []
    digest = hashlib.sha256(f"kd-folder-cache {CACHE_FORMAT}\n{json.dumps(classes)}\n".encode())
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        entries = sorted(
            (e for e in os.scandir(class_dir) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES),
            key=lambda e: e.name,
        )
        for entry in entries:
            stat = entry.stat()
            files.append(Path(entry.path))
            labels.append(label)
            digest.update(f"{name}/{entry.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    if not files:
        raise KDError(f"no images in {split_dir}/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return SplitListing(tuple(files), tuple(labels), digest.hexdigest())


# --- decoding -----------------------------------------------------------------------------


#: What PIL raises for a file it cannot decode (truncated, not an image, unsupported, absurdly large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _unreadable(path: Path, err: BaseException) -> KDError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return KDError(f"{path} is not a readable image ({reason}); remove or replace it")


def _probe(path: Path) -> tuple[str, int, int]:
    """PIL mode to decode to, and the image's (height, width), from the file header only."""
    try:
        with Image.open(path) as image:
            mode = "L" if image.mode in GRAY_MODES else "RGB"
            return mode, image.height, image.width
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def _decode(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except DECODE_ERRORS as err:
        raise _unreadable(path, err) from None


def decode_images(files: tuple[Path, ...], threads: int | None = None) -> torch.Tensor:
    """Decode ``files`` into uint8 ``[N, C, H, W]``; every image must match the first one's size."""
    mode, height, width = _probe(files[0])
    if height != width:
        raise KDError(f"{files[0]} is {width}x{height}: kd models need square images (resize the folder's images)")
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)

    def decode_range(start: int, stop: int) -> int | None:
        """Decode files[start:stop] into ``out``; return the index of the first odd-sized one."""
        for i in range(start, stop):
            pixels = _decode(files[i], mode)
            if pixels.shape[:2] != (height, width):
                return i
            out[i] = pixels.reshape(height, width, channels)
        return None

    threads = threads or min(8, os.cpu_count() or 1)
    chunk = max(1, -(-len(files) // (threads * 4)))
    # PIL releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda s: decode_range(s, min(s + chunk, len(files))), range(0, len(files), chunk))
        odd = [i for i in results if i is not None]
    if odd:
        first = files[min(odd)]
        raise KDError(f"{first} is not {width}x{height} like {files[0]}: resize the folder's images to one size")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --- the cache ----------------------------------------------------------------------------


def cache_paths(root: Path, split: Split) -> list[Path]:
    """Where a split's cache is: kd's cache directory, keyed by the dataset folder's absolute path."""
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return [cache_root() / "folder" / tag / f"{split}.safetensors"]


def read_cache_metadata(path: Path, key: str) -> tuple[dict[str, str], tuple[int, ...]] | None:
    """The metadata and image shape of a cache file whose key matches; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("key") != key:
                return None
            return metadata, tuple(f.get_slice("images").get_shape())
    except Exception:  # a truncated or foreign file is just a cache miss
        return None


def load_cache(path: Path) -> ImageSet:
    tensors = load_file(str(path))
    return ImageSet(tensors["images"], tensors["labels"])


def _writable(folder: Path) -> bool:
    """Whether ``folder`` (or its nearest existing parent) may be written; its mode bits count even for root."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def write_cache(paths: list[Path], data: ImageSet, metadata: dict[str, str]) -> Path | None:
    """Write atomically to the first writable location; None if none is (the run still works, uncached)."""
    tensors = {"images": data.images.contiguous(), "labels": data.labels.contiguous()}
    for path in paths:
        if not _writable(path.parent):
            continue
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)  # atomic: a reader sees the old cache or the new one, never half
            return path
        except Exception:  # read-only, full, or not a folder: try the next place
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return None


class FolderSplits:
    """Reads each split from its cache, or decodes it and writes the cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.classes = _class_names(_split_dir(root, "train"))
        _split_dir(root, "test")  # fail before the slow decode of train, not after
        if not self.classes:
            raise KDError(f"{root / 'train'} has no class folders: put images in {root}/train/<class>/")
        if len(self.classes) < 2:
            raise KDError(f"{root / 'train'} has one class folder ({self.classes[0]}): a classifier needs at least "
                          f"2 classes, one folder each")
        self.listings: dict[Split, SplitListing] = {}
        self.loaded: dict[Split, ImageSet] = {}

    def listing(self, split: Split) -> SplitListing:
        if split not in self.listings:
            self.listings[split] = list_split(self.root, split, self.classes)
        return self.listings[split]

    def cached(self, split: Split) -> tuple[Path, dict[str, str], tuple[int, ...]] | None:
        key = self.listing(split).key
        for path in cache_paths(self.root, split):
            found = read_cache_metadata(path, key)
            if found is not None:
                return path, *found
        return None

    def load(self, split: Split) -> ImageSet:
        if split in self.loaded:
            return self.loaded.pop(split)  # handed over once; Dataset keeps its own reference
        hit = self.cached(split)
        if hit is not None:
            return load_cache(hit[0])
        return self.build(split)[0]

    def build(self, split: Split) -> tuple[ImageSet, dict[str, str]]:
        """Decode a split, write its cache (with mean/std for train), return both."""
        listing = self.listing(split)
        data = ImageSet(decode_images(listing.files), torch.tensor(listing.labels, dtype=torch.int64))
        metadata = {"key": listing.key, "classes": json.dumps(self.classes)}
        if split == "train":
            mean, std = channel_stats(data.images)
            metadata.update(mean=json.dumps(mean), std=json.dumps(std))
        write_cache(cache_paths(self.root, split), data, metadata)
        return data, metadata

    def train_stats(self) -> tuple[tuple[int, int], tuple[float, ...], tuple[float, ...]]:
        """(channels, size), mean and std of the train split: from its cache, else by building it."""
        hit = self.cached("train")
        if hit is not None:
            _, metadata, shape = hit
        else:
            data, metadata = self.build("train")
            self.loaded["train"] = data
            shape = tuple(data.images.shape)
        _, channels, height, _ = shape
        return (channels, height), tuple(json.loads(metadata["mean"])), tuple(json.loads(metadata["std"]))


def folder_dataset(path: str) -> Dataset:
    """An ImageFolder dataset; its ``info`` needs the train split's statistics, so a first call decodes train."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise KDError(f"folder dataset {root} does not exist: expected {root}/train/<class>/ and {root}/test/<class>/")
    splits = FolderSplits(root)
    (channels, size), mean, std = splits.train_stats()
    info = DatasetInfo(
        name=f"folder:{path}",
        num_classes=len(splits.classes),
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        train_size=len(splits.listing("train").files),
        test_size=len(splits.listing("test").files),
        class_names=tuple(splits.classes),
        augment="crop_flip" if (channels, size) == (3, 32) else "none",
    )
    return Dataset(info, splits.load, source=str(root))


def folder_available(path: str) -> bool:
    root = Path(path).expanduser()
    return all(any((root / d).is_dir() for d in SPLIT_DIRS[split]) for split in ("train", "test"))


DATASETS.add(
    "folder:PATH",
    lambda data_dir, path: folder_dataset(path),
    help="an ImageFolder: PATH/train/<class>/*, PATH/test/<class>/*; decoded once and cached",
    pattern=r"folder:(?P<path>.+)",
    offline=lambda data_dir, path: folder_available(path),
)
