"""Reading weights kd did not write (``kd import-teacher``): a state dict in safetensors, or in a pickle file
(``torch.save``) only when the user allows it.

Unpickling a file can run code, so a ``.pt``/``.pth`` file is refused unless ``allow_pickle`` is given; even
then it is read with torch's restricted loader (``weights_only=True``), which accepts tensors and plain
containers only. kd's own runs never take this path: they hold safetensors only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcli.checkpoint import load_tensors
from kdcli.errors import KDError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: keys a training script commonly wraps its state dict in (Lightning, RepDistiller, torchvision references)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def describe_file(path: Path) -> dict[str, Any]:
    """Where the weights came from: resolved path, size and SHA-256 (what ``run.json`` records)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"file": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in ``path`` and a description of the file (format, path, size, hash, unwrapping done).

    Raises:
        KDError: a missing file, an unknown suffix, a pickle file without ``allow_pickle``, a file that holds
            more than tensors, or no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise KDError(f"weights file {str(path)!r} not found")
    suffix = path.suffix.lower()
    notes: list[str] = []
    if suffix in SAFETENSORS_SUFFIXES:
        state, _ = load_tensors(path)
        kind = "safetensors"
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise KDError(f"{path} is a pickle file (torch.save): unpickling can run code, so kd reads it only with "
                          "--allow-pickle (or convert it: safetensors.torch.save_file(state_dict, 'weights.safetensors'))")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - the restricted unpickler refuses anything but tensors and containers
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise KDError(f"{path} holds more than a state dict of tensors ({first[:160]}); save "
                          "model.state_dict() alone") from None
        state = _unwrap(loaded, path, notes)
        kind = "pickle (weights_only)"
    else:
        raise KDError(f"{path}: kd reads weights from .safetensors, or from {'/'.join(PICKLE_SUFFIXES)} with "
                      "--allow-pickle")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("removed the 'module.' prefix (a DataParallel/DDP checkpoint)")
    return state, {"format": kind, **describe_file(path), **({"notes": notes} if notes else {})}


def _unwrap(loaded: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    if isinstance(loaded, dict):
        for key in WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                notes.append(f"read the state dict under {key!r}")
                return dict(inner)
    raise KDError(f"{path} holds no state dict of tensors (a {type(loaded).__name__}); save model.state_dict()")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    """Load ``state`` into ``model`` strictly: every key present, every shape equal, or a one-line error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise KDError(f"{path} does not fit model {name}: {detail[:240]}") from None
    if missing or unexpected:
        raise KDError(f"{path} does not fit model {name}: {len(missing)} missing keys {missing[:3]}, "
                      f"{len(unexpected)} unexpected keys {unexpected[:3]}")
