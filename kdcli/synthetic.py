"""Synthetic transfer sets on disk: safetensors shards, ``synthetic.json`` and a ``samples.png`` preview.

A set made by ``kd synthesize`` (or kept by ``kd distill-datafree``) is a folder::

    DIR/
      synthetic.json          # how it was made: method, params, teacher run, counts, speed, shards
      shard-00000.safetensors # images (uint8 pixels, or float16 in [0, 1] pixel units, unclipped),
      ...                     #   soft_targets (teacher softmax, T=1) and classes (the class aimed at)
      samples.png             # one row per class
      generator.safetensors   # dafl / zskt only: the trained generator

The folder is written under a temporary name and renamed into place, so it is either whole or absent.
Images are stored in pixel units (not normalised) so a set is readable without knowing the teacher.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from kdcli.checkpoint import FORMAT_VERSION, load_tensors, save_tensors
from kdcli.errors import KDError

SET_FILE = "synthetic.json"
SAMPLES_FILE = "samples.png"
SHARD_SIZE = 10_000
SAMPLES_PER_CLASS = 8
DTYPES = ("uint8", "float16")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence synthesis progress bars (``--quiet`` / ``--json``)."""
    global _quiet
    _quiet = quiet


@dataclass
class SyntheticSet:
    """A transfer set in memory.

    Attributes:
        images: ``[N, C, H, W]``: uint8 pixels, or float in [0, 1] pixel units (may exceed the range).
        soft_targets: ``[N, K]`` float32, the teacher's softmax at T=1 on these images.
        classes: ``[N]`` int64, the class each image was aimed at (teacher argmax for generator samples).
    """

    images: torch.Tensor
    soft_targets: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def pixels(self) -> torch.Tensor:
        """Float images in [0, 1] pixel units (uint8 divided by 255)."""
        return self.images.float() / 255.0 if self.images.dtype == torch.uint8 else self.images.float()


# ---------------------------------------------------------------------------------------------
# Pixel space ↔ the teacher's normalised input space


def _channel(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(list(values), dtype=torch.float32, device=like.device)
    if t.numel() == 1:
        t = t.expand(like.shape[1])
    return t.view(1, -1, 1, 1)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean) / std`` for float images in [0, 1] pixel units."""
    return (pixels - _channel(mean, pixels)) / _channel(std, pixels)


def to_pixels(normalised: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return normalised * _channel(std, normalised) + _channel(mean, normalised)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def soft_targets(
    teacher: torch.nn.Module, pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], batch_size: int = 1024
) -> torch.Tensor:
    """The teacher's softmax on float pixel images (on the teacher's device), as float32 on the CPU."""
    device = next(teacher.parameters()).device
    out = []
    for chunk in pixels.split(batch_size):
        logits = teacher(normalise(chunk.to(device).float(), mean, std))
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


# ---------------------------------------------------------------------------------------------
# Progress


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr; yields ``advance(k)``. Silent under :func:`set_quiet`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from kdcli.engine import console

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=_quiet,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


# ---------------------------------------------------------------------------------------------
# Disk


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """The set's folder: refused if it exists non-empty without ``--overwrite`` (checked before any work)."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise KDError(f"{out} already exists; pass --overwrite to replace it")
    return path


def write_set(
    out: str | Path,
    data: SyntheticSet,
    description: dict[str, Any],
    num_classes: int,
    dtype: str = "uint8",
    extra: Callable[[Path], dict[str, str]] | None = None,
    shard_size: int = SHARD_SIZE,
) -> Path:
    """Write ``data`` as a set folder (shards, ``synthetic.json``, ``samples.png``), atomically.

    Args:
        out: the folder; replaced if it exists.
        description: what ``synthetic.json`` records about how the set was made.
        num_classes: rows of ``samples.png``.
        dtype: ``uint8`` (pixels clipped to 0..255) or ``float16`` (pixel units, unclipped).
        extra: writes further files into the (temporary) folder and returns ``{name: file}`` for the json.
    """
    if dtype not in DTYPES:
        raise KDError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        images = to_uint8(data.pixels()) if dtype == "uint8" else data.pixels().to(torch.float16)
        shards = []
        for i, start in enumerate(range(0, len(data), shard_size)):
            name = f"shard-{i:05d}.safetensors"
            stop = min(start + shard_size, len(data))
            save_tensors(
                tmp / name,
                {
                    "images": images[start:stop],
                    "soft_targets": data.soft_targets[start:stop].float(),
                    "classes": data.classes[start:stop].long(),
                },
                {"kd_format": FORMAT_VERSION, "kind": "synthetic-shard"},
            )
            shards.append({"file": name, "count": stop - start})
        write_samples_png(tmp / SAMPLES_FILE, data.pixels(), data.classes, num_classes)
        files = extra(tmp) if extra is not None else {}
        counts = torch.bincount(data.classes.long(), minlength=num_classes).tolist()
        info = {
            "kd_format": FORMAT_VERSION,
            **description,
            "count": len(data),
            "dtype": dtype,
            "shape": list(data.images.shape[1:]),
            "num_classes": num_classes,
            "per_class": counts,
            "shards": shards,
            "samples": SAMPLES_FILE,
            "files": files,
        }
        (tmp / SET_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_description(path: str | Path) -> dict[str, Any]:
    folder = Path(path)
    if not folder.exists():
        raise KDError(f"synthetic set {str(path)!r} not found")
    if not (folder / SET_FILE).is_file():
        raise KDError(f"{str(path)!r} is not a synthetic set (no {SET_FILE}); make one with kd synthesize")
    try:
        info = json.loads((folder / SET_FILE).read_text())
    except json.JSONDecodeError:
        raise KDError(f"{folder / SET_FILE} is corrupt (not JSON)") from None
    if not isinstance(info, dict) or "shards" not in info:
        raise KDError(f"{folder / SET_FILE} does not describe a synthetic set")
    return info


def read_set(path: str | Path) -> tuple[SyntheticSet, dict[str, Any]]:
    """Load a set folder written by :func:`write_set`; any missing or foreign file is a one-line KDError."""
    folder = Path(path)
    info = read_description(folder)
    parts: dict[str, list[torch.Tensor]] = {"images": [], "soft_targets": [], "classes": []}
    for shard in info["shards"]:
        tensors, _ = load_tensors(folder / shard["file"])
        missing = set(parts) - set(tensors)
        if missing:
            raise KDError(f"{folder / shard['file']} lacks {', '.join(sorted(missing))}")
        for key in parts:
            parts[key].append(tensors[key])
    if not parts["classes"]:
        raise KDError(f"synthetic set {str(path)!r} is empty")
    data = SyntheticSet(torch.cat(parts["images"]), torch.cat(parts["soft_targets"]), torch.cat(parts["classes"]))
    if len(data) != info.get("count", len(data)):
        raise KDError(f"synthetic set {str(path)!r} holds {len(data)} samples, {SET_FILE} says {info['count']}")
    return data, info


def write_samples_png(
    path: Path, pixels: torch.Tensor, classes: torch.Tensor, num_classes: int, per_class: int = SAMPLES_PER_CLASS
) -> None:
    """``samples.png``: row ``c`` shows the first ``per_class`` images aimed at class ``c`` (blank if fewer)."""
    from kdcli.report import image_grid

    c, h, w = pixels.shape[1:]
    grid = torch.ones(num_classes * per_class, c, h, w)
    for k in range(num_classes):
        index = (classes == k).nonzero().flatten()[:per_class]
        grid[k * per_class : k * per_class + len(index)] = pixels[index].float().clamp(0, 1).cpu()
    image_grid(grid, rows=num_classes, path=path, scale=max(1, min(8, 96 // h)))


def class_order(n: int, num_classes: int) -> torch.Tensor:
    """``[0, 1, …, K−1, 0, 1, …]``: aimed classes for ``n`` impressions, balanced and interleaved."""
    return torch.arange(n) % num_classes


class Timer:
    """Wall time of a block (synchronising CUDA so device work is counted)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Timer":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


# ---------------------------------------------------------------------------------------------
# `kd synthesize`


def synthesize(
    config: Any,
    n: int,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Make a transfer set of ``n`` samples with ``config.method`` from ``config.teacher`` and write it to ``out``.

    Input-optimisation methods (zskd, lopes, deepinversion) synthesise directly; generator methods
    (dafl, zskt) first train their generator (and student) on the engine, then sample from it.
    Only the teacher run and the test split's metadata are read: never the training data.
    """
    from kdcli.engine import RunWriter, fit
    from kdcli.methods import MethodContext
    from kdcli.methods.transfer import GeneratorDistill, TransferSetDistill
    from kdcli.run import build, versions

    if n <= 0:
        raise KDError(f"-n must be positive (got {n})")
    out_path = check_out_dir(out, overwrite)
    built = build(config)
    cls = built.method_cls
    if not issubclass(cls, (TransferSetDistill, GeneratorDistill)):
        raise KDError(f"method {config.method!r} does not synthesise data; use one of the data-free methods")
    dtype = dtype or cls.default_dtype
    if dtype not in DTYPES:
        raise KDError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    torch.manual_seed(config.train.seed)
    if built.device.type == "cuda":
        torch.cuda.manual_seed_all(config.train.seed)
    ctx = MethodContext(config, built.info, built.device, 0, built.teacher, built.teacher_meta)
    extra = None
    result: dict[str, Any] = {}
    if issubclass(cls, GeneratorDistill):
        method = cls(ctx, built.params)
        ctx.steps_per_epoch = method.steps_per_epoch() or 0
        fitted = fit(
            method, config, None, None, built.test_set, built.info, built.device, RunWriter(None), quiet=_quiet
        )
        result["student_test_top1"] = fitted.test["student"]["top1"]
        result["train_wall_time_s"] = round(fitted.wall_time_s, 3)
        with Timer(built.device) as timer:
            data = method.sample_set(n)
        extra = method.save_generator
    else:
        cls.check_teacher(ctx, built.params)
        with Timer(built.device) as timer:
            data = cls.synthesize(ctx, built.params, n)
    rate = len(data) / max(timer.seconds, 1e-9)
    if hasattr(built.params, "n"):
        built.params.n = n  # what was made, not the preset's default
    description = {
        "method": config.method,
        "params": vars(built.params),
        "teacher": {
            "run": str(Path(built.teacher_meta["run"]).resolve()),
            "role": built.teacher_meta["role"],
            "spec": built.teacher_meta["spec"],
        },
        "dataset": built.info.to_dict(),
        "config": config.to_dict(),
        "seed": config.train.seed,
        "device": str(built.device),
        "synthesis_s": round(timer.seconds, 3),
        "samples_per_s": round(rate, 2),
        "class_source": "teacher argmax" if issubclass(cls, GeneratorDistill) else "aimed",
        "argv": argv or [],
        "versions": versions(),
        **result,
    }
    write_set(out_path, data, description, built.info.num_classes, dtype, extra)
    return {
        **description,
        "out": str(out_path),
        "count": len(data),
        "dtype": dtype,
        "teacher_agreement": float((data.soft_targets.argmax(1) == data.classes).float().mean()),
    }
