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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kdcli.checkpoint import FORMAT_VERSION, dir_mode, dumps, load_tensors, refuse_cwd, save_tensors
from kdcli.errors import KDError
from kdcli.pictures import image_grid

SET_FILE = "synthetic.json"
SAMPLES_FILE = "samples.png"
SHARD_SIZE = 10_000
SAMPLES_PER_CLASS = 8
DTYPES = ("uint8", "float16")


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
# Disk


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """The set's folder, checked before any work: a new or empty folder, or with ``--overwrite`` a set kd
    wrote (its ``synthetic.json`` readable and nothing else inside); never the current directory."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise KDError(f"--out {out} is a file, not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise KDError(f"{out} already exists; pass --overwrite to replace it (only a set kd wrote is replaced)")
        refuse_cwd(path, "--overwrite")
        try:
            info = read_description(path)
        except KDError as err:
            raise KDError(f"--overwrite refuses {out}: {err}") from None
        known = {SET_FILE, SAMPLES_FILE, *(s.get("file") for s in info.get("shards", []) if isinstance(s, dict)),
                 *(v for v in (info.get("files") or {}).values() if isinstance(v, str))}
        foreign = sorted(p.name for p in path.iterdir() if p.name not in known)
        if foreign:
            raise KDError(f"--overwrite refuses {out}: it holds files kd did not write ({', '.join(foreign[:5])}); "
                          "move them away or choose another --out")
    return path


def write_set(
    out: str | Path,
    data: SyntheticSet,
    description: dict[str, Any],
    num_classes: int,
    dtype: str = "uint8",
    extra: Callable[[Path], dict[str, str]] | None = None,
    shard_size: int = SHARD_SIZE,
    class_names: Sequence[str] = (),
) -> Path:
    """Write ``data`` as a set folder (shards, ``synthetic.json``, ``samples.png``), atomically.

    Args:
        out: the folder; replaced if it exists.
        description: what ``synthetic.json`` records about how the set was made.
        num_classes: rows of ``samples.png``.
        dtype: ``uint8`` (pixels clipped to 0..255) or ``float16`` (pixel units, unclipped).
        extra: writes further files into the (temporary) folder and returns ``{name: file}`` for the json.
        class_names: row labels of ``samples.png`` (the class index where missing).
    """
    if dtype not in DTYPES:
        raise KDError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, dir_mode())  # a set is as readable as any folder the user makes (mkdtemp gives 0700)
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
        write_samples_png(tmp / SAMPLES_FILE, data.pixels(), data.classes, num_classes, class_names)
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
        (tmp / SET_FILE).write_text(dumps(info, indent=2) + "\n")
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
    path: Path, pixels: torch.Tensor, classes: torch.Tensor, num_classes: int, class_names: Sequence[str] = (),
    per_class: int = SAMPLES_PER_CLASS,
) -> None:
    """``samples.png``: row ``c`` shows the first ``per_class`` images aimed at class ``c`` (blank if fewer),
    labelled in a left margin with ``class_names[c]``, or ``c`` where there is no name."""
    c, h, w = pixels.shape[1:]
    grid = torch.ones(num_classes * per_class, c, h, w)
    for k in range(num_classes):
        index = (classes == k).nonzero().flatten()[:per_class]
        grid[k * per_class : k * per_class + len(index)] = pixels[index].float().clamp(0, 1).cpu()
    labels = [str(class_names[k]) if k < len(class_names) and class_names[k] else str(k) for k in range(num_classes)]
    image_grid(grid, rows=num_classes, path=path, scale=max(1, min(8, 96 // h)), row_labels=labels)


def class_order(n: int, num_classes: int) -> torch.Tensor:
    """``[0, 1, …, K−1, 0, 1, …]``: aimed classes for ``n`` impressions, balanced and interleaved."""
    return torch.arange(n) % num_classes
