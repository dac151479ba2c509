"""Where a run computes, and in what precision: device choice, CPU threads, autocast, wall-time measurement."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any

import torch

from kdcli.errors import KDError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; naming an absent device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KDError("--device cuda asked for, but no CUDA GPU is visible to torch; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise KDError("--device mps asked for, but MPS is not available; use --device cpu")
    return torch.device(name)


def setup_device(device: torch.device) -> None:
    """Per-process settings for ``device``: CPU threads, or cuDNN autotuning and TF32 on CUDA."""
    if device.type == "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # ranks on one machine share its cores (torchrun sets LOCAL_WORLD_SIZE); oversubscribed
        # OpenMP threads are ~100x slower, not a little. An explicit OMP_NUM_THREADS wins.
        threads = os.environ.get("OMP_NUM_THREADS", "")
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else max(1, cpus // local_ranks))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``auto`` = bf16 on CUDA, fp32 elsewhere."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` on ``device`` (nothing for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    # cache off: required for CUDA graph capture, and harmless otherwise
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def device_name(device: torch.device) -> str:
    """A human name for the hardware (the GPU's model, else the CPU's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


class Timer:
    """Wall time of a block, synchronising CUDA so queued device work is counted."""

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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global CPU (and this CUDA device's) random state."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch's global generators (CPU, and CUDA when the run uses it)."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
