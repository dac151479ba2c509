"""CIFAR-10 and CIFAR-100 in either official on-disk format: binary (``*.bin``) or Python pickles.

kd never runs a pickle from a user's disk: the Python-format batches go through
:class:`SafeUnpickler`, which resolves no global at all except numpy's array-rebuilding functions,
and those are replaced by inert stand-ins that only record shape, dtype and raw bytes.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcli.data.base import DatasetInfo, ImageSet, Split
from kdcli.data.locate import Download, FileSource, register_file_source
from kdcli.errors import KDError

RECORD_PIXELS = 3 * 32 * 32


# --- the restricted unpickler -------------------------------------------------------------


class _DtypeStub:
    """Stands in for ``numpy.dtype(code, align, copy)``; keeps only the code and byte order."""

    def __init__(self, code: Any, *_: Any) -> None:
        self.code = code.decode() if isinstance(code, bytes) else str(code)
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], (str, bytes)):
            order = state[1].decode() if isinstance(state[1], bytes) else state[1]
            self.byteorder = order if order in "<>|=" else "|"

    def to_numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        if dtype.kind not in "uif":  # object/structured dtypes would carry more than raw numbers
            raise pickle.UnpicklingError(f"array dtype {self.code!r} refused")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _ArrayStub:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, shape, dtype)`` until its state arrives."""

    def __init__(self, *_: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray state: (version, shape, dtype, is_fortran, raw bytes)
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeStub)):
            raise pickle.UnpicklingError("malformed array state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("array data is not raw bytes")
        array = np.frombuffer(raw, dtype=dtype.to_numpy()).reshape(shape, order="F" if fortran else "C")
        self.array = array


def _frombuffer_stub(buffer: Any, dtype: _DtypeStub, shape: Any, order: str) -> _ArrayStub:
    """Stands in for numpy's protocol-5 ``_frombuffer``."""
    stub = _ArrayStub()
    stub.array = np.frombuffer(bytes(buffer), dtype=dtype.to_numpy()).reshape(shape, order=order)
    return stub


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which Python 3 uses to pickle bytes at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refused _codecs.encode call")
    return text.encode("latin1")


_NDARRAY = object()  # the ndarray class argument of _reconstruct: only ever passed through

_ALLOWED: dict[tuple[str, str], Any] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _ArrayStub
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _frombuffer_stub
_ALLOWED[("numpy", "ndarray")] = _NDARRAY
_ALLOWED[("numpy", "dtype")] = _DtypeStub
_ALLOWED[("_codecs", "encode")] = _latin1_encode


class SafeUnpickler(pickle.Unpickler):
    """Loads plain containers (dict, list, tuple, str, bytes, numbers) and numeric numpy arrays; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def _unstub(value: Any) -> Any:
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise pickle.UnpicklingError("array without data")
        return value.array
    if isinstance(value, dict):
        return {k: _unstub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unstub(v) for v in value)
    return value


def safe_load_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (latin-1-free: Python 2 strings stay bytes)."""
    try:
        with path.open("rb") as f:
            return _unstub(SafeUnpickler(f, encoding="bytes").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise KDError(f"{path} is not a CIFAR batch kd can read safely: {exc}") from exc


# --- the two formats ----------------------------------------------------------------------


def _to_imageset(pixels: np.ndarray, labels: np.ndarray, origin: Path) -> ImageSet:
    if pixels.ndim != 2 or pixels.shape[1] != RECORD_PIXELS or pixels.shape[0] != labels.shape[0]:
        raise KDError(f"{origin}: expected {RECORD_PIXELS} pixels per image and one label each")
    images = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


def read_binary_batches(paths: list[Path], label_bytes: int) -> ImageSet:
    """Binary format: records of ``label_bytes`` label bytes (the last is the label used) + 3072 pixels."""
    record = label_bytes + RECORD_PIXELS
    parts_x, parts_y = [], []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % record:
            raise KDError(f"{path}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
        table = raw.reshape(-1, record)
        parts_y.append(table[:, label_bytes - 1])
        parts_x.append(table[:, label_bytes:])
    return _to_imageset(np.concatenate(parts_x), np.concatenate(parts_y), paths[0])


def read_pickle_batches(paths: list[Path], label_key: bytes) -> ImageSet:
    """Python format: each file a dict with ``b"data"`` (uint8 ``[N, 3072]``) and a label list."""
    parts_x, parts_y = [], []
    for path in paths:
        batch = safe_load_pickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise KDError(f"{path}: expected a dict with b'data' and {label_key!r}")
        parts_x.append(np.asarray(batch[b"data"]))
        parts_y.append(np.asarray(batch[label_key], dtype=np.int64))
    return _to_imageset(np.concatenate(parts_x), np.concatenate(parts_y), paths[0])


# --- where each format keeps each split ---------------------------------------------------

CIFAR10_LAYOUTS = {
    # folder: (train files, test files, format)
    "cifar-10-batches-bin": ([f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "bin"),
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "py"),
}
CIFAR100_LAYOUTS = {
    "cifar-100-binary": (["train.bin"], ["test.bin"], "bin"),
    "cifar-100-python": (["train"], ["test"], "py"),
}


def _finder(layouts: dict[str, tuple[list[str], list[str], str]]):
    def find(folder: Path) -> tuple[dict[Split, list[Path]], str] | None:
        for sub, (train, test, fmt) in layouts.items():
            base = folder / sub
            files: dict[Split, list[Path]] = {"train": [base / n for n in train], "test": [base / n for n in test]}
            if all(p.is_file() for group in files.values() for p in group):
                return files, fmt
        return None

    return find


def read_cifar10(found: tuple[dict[Split, list[Path]], str], split: Split) -> ImageSet:
    files, fmt = found
    if fmt == "bin":
        return read_binary_batches(files[split], label_bytes=1)
    return read_pickle_batches(files[split], b"labels")


def read_cifar100(found: tuple[dict[Split, list[Path]], str], split: Split) -> ImageSet:
    files, fmt = found
    if fmt == "bin":
        return read_binary_batches(files[split], label_bytes=2)  # coarse label, then fine label
    return read_pickle_batches(files[split], b"fine_labels")


def _downloads(cls_name: str):
    def downloads() -> list[Download]:
        import torchvision.datasets  # noqa: PLC0415 - torchvision is imported only to download

        cls = getattr(torchvision.datasets, cls_name)
        return [Download(cls.url, cls.filename, cls.tgz_md5, extract=True)]

    return downloads


CIFAR10 = register_file_source(FileSource(
    info=DatasetInfo(
        name="cifar10",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        train_size=50000,
        test_size=10000,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        augment="crop_flip",
    ),
    subdirs=("", "cifar10", "cifar-10"),
    find=_finder(CIFAR10_LAYOUTS),
    read=read_cifar10,
    downloads=_downloads("CIFAR10"),
    expected="cifar-10-batches-py/ (from cifar-10-python.tar.gz) or cifar-10-batches-bin/",
), 'CIFAR-10, 32x32 colour, 50k/10k (python or binary batches)')

CIFAR100 = register_file_source(FileSource(
    info=DatasetInfo(
        name="cifar100",
        num_classes=100,
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        train_size=50000,
        test_size=10000,
        augment="crop_flip",
    ),
    subdirs=("", "cifar100", "cifar-100"),
    find=_finder(CIFAR100_LAYOUTS),
    read=read_cifar100,
    downloads=_downloads("CIFAR100"),
    expected="cifar-100-python/ (from cifar-100-python.tar.gz) or cifar-100-binary/",
), 'CIFAR-100 (fine labels), 32x32 colour, 50k/10k (python or binary batches)')
