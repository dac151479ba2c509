"""Where a run computes, and in what precision: device choice, CPU threads, autocast, wall-time measurement."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

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


def setup_device(device: torch.device, threads: int = 0) -> ThreadChoice | None:
    """Per-process settings for ``device``: CPU threads (:func:`choose_threads` with no work estimate yet, less
    the CPUs other jobs keep busy; ``threads`` > 0 is ``--threads``), or cuDNN autotuning and TF32 on CUDA. Returns the CPU choice."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type != "cpu":
        return None
    # a busy machine's other jobs count here too: a data-free method synthesises with these threads, before
    # the run's own choice (from the work per step) is made
    choice = choose_threads(threads, busy=busy_cpus() if threads == 0 else None)
    torch.set_num_threads(choice.threads)
    return choice


# ---------------------------------------------------------------------------------------------
# CPU threads: how many, from the CPUs this process may use and the work of one training step

#: Multiply-accumulates (millions) per training step each thread must have. Below it a second thread
#: gains little (0.8-1.4× on a 2-core machine for steps of 13-970 M: an OpenMP barrier per operator
#: costs about what the split saves) and costs 10-100× when another job holds a core; ``scripts/bench.py
#: --thread-counts 1,2`` (docs/benchmarks.md, "CPU threads").
WORK_PER_THREAD_MMAC = 2000.0


@dataclass(frozen=True)
class ThreadChoice:
    """CPU threads for a run and why (recorded in ``run.json`` as ``threads``).

    Attributes:
        threads: what ``torch.set_num_threads`` got.
        source: ``--threads``, ``OMP_NUM_THREADS`` or ``auto``.
        cpus: CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota, shared with
            the other torchrun ranks on the machine.
        work_mmac: multiply-accumulates per training step, in millions (None: not estimated).
        reason: one line saying why.
    """

    threads: int
    source: str
    cpus: float
    work_mmac: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroups, in CPUs (quota ÷ period), or None when there is none.

    A container's quota is invisible to ``sched_getaffinity`` (it limits time, not cores). Reads cgroup v2's
    ``cpu.max`` (``"max 100000"`` or ``"200000 100000"``) and v1's ``cpu.cfs_quota_us`` (-1 = none) /
    ``cpu.cfs_period_us``, on the process's own cgroup and each ancestor (the tightest applies).
    """
    root = Path(root)
    try:
        lines = Path(self_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            bases, read = [root, root / "unified"], _cpu_max_v2
        elif "cpu" in controllers.split(","):
            bases, read = [root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"], _cfs_quota_v1
        else:
            continue
        for base in bases:
            here = base / path.lstrip("/")
            for directory in [here, *here.parents]:
                limit = read(directory)
                if limit is not None:
                    limits.append(limit)
                if directory == base:
                    break
    return min(limits) if limits else None


def _cpu_max_v2(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _cfs_quota_v1(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(environ: Mapping[str, str] | None = None) -> float:
    """CPUs this process may keep busy: its affinity mask, capped by its cgroup quota, divided among the
    torchrun ranks on this machine (``LOCAL_WORLD_SIZE``)."""
    environ = os.environ if environ is None else environ
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, limit)
    local_ranks = environ.get("LOCAL_WORLD_SIZE", "1")
    return cpus / max(1, int(local_ranks) if local_ranks.isdigit() else 1)


def busy_cpus(samples: int = 5, interval_s: float = 0.01, loadavg: str | Path = "/proc/loadavg") -> int | None:
    """Threads of other processes runnable right now: the fewest of a few samples of the kernel's count
    (``/proc/loadavg``, field 4) less this one. None where the count is not available."""
    counts = []
    for index in range(samples):
        try:
            running = Path(loadavg).read_text().split()[3].split("/")[0]
            counts.append(int(running))
        except (OSError, IndexError, ValueError):
            return None
        if index + 1 < samples:
            time.sleep(interval_s)
    return max(0, min(counts) - 1)


def choose_threads(requested: int = 0, work_mmac: float | None = None, cpus: float | None = None,
                   busy: int | None = None, environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """CPU threads for a run: ``--threads`` (``requested`` > 0), else ``OMP_NUM_THREADS``, else from the work.

    Automatic: one thread per :data:`WORK_PER_THREAD_MMAC` of work per step, at least one, at most the
    usable CPUs (:func:`usable_cpus`) less those ``busy`` with other jobs' runnable threads. Small steps
    (LeNet-5 on MNIST, anything on 8×8 digits) get one thread: they run as fast as or faster than with
    two. A thread more than there are free cores is what collapses a run: every OpenMP barrier then
    waits for a descheduled thread, and steps take 10-100× longer (docs/benchmarks.md, "CPU threads").
    Where the other jobs' load decided the count, the numbers of a BatchNorm network can differ from a
    run on an idle machine (float sums split differently); ``--threads`` pins the count, and a resumed
    run keeps its own.
    """
    environ = os.environ if environ is None else environ
    cpus = usable_cpus(environ) if cpus is None else cpus
    whole = max(1, int(cpus + 1e-9))
    if requested > 0:
        return ThreadChoice(requested, "--threads", cpus, work_mmac, f"--threads {requested}")
    omp = environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS", cpus, work_mmac, f"OMP_NUM_THREADS={omp}")
    if work_mmac is None:  # before the work is known (a data-free method's synthesis): the free CPUs
        free = whole if busy is None else max(1, min(whole, int(cpus - busy + 1e-9)))
        reason = f"{whole} usable CPU{'s' * (whole > 1)}"
        if free < whole:
            reason += f"; {busy} other runnable thread{'s' * (busy != 1)} left {free} free"
        return ThreadChoice(free, "auto", cpus, None, reason)
    wanted = max(1, min(whole, int(work_mmac // WORK_PER_THREAD_MMAC)))
    reason = (f"{work_mmac:,.0f} M multiply-accumulates per step: one thread per {WORK_PER_THREAD_MMAC:,.0f} M, "
              f"at most the {cpus:g} usable CPUs")
    free = whole if busy is None else max(1, int(cpus - busy + 1e-9))
    if free < wanted:
        reason += f"; {busy} other runnable thread{'s' * (busy != 1)} left {free} free"
    return ThreadChoice(min(wanted, free), "auto", cpus, work_mmac, reason)


def apply_threads(choice: ThreadChoice) -> None:
    torch.set_num_threads(choice.threads)


def channels_last(device: torch.device) -> bool:
    """Whether images and convolution weights are kept channels-last (NHWC) on ``device``.

    CUDA: cuDNN's fast kernels are NHWC. CPU too: oneDNN's convolutions and ATen's max-pooling run
    faster on NHWC, a LeNet-5 MNIST step by about a third (docs/benchmarks.md, "single-model CPU step").
    """
    return device.type in ("cuda", "cpu")


#: How many models one fused network holds on the CPU (:mod:`kdcli.models.fused`). Measured with
#: ``scripts/bench.py --online`` (docs/benchmarks.md): fusing two LeNet-5 peers made their step ~25 % faster,
#: fusing four ~25 % slower than four separate models: the fused activations (4 × 1.8 MB for LeNet-5's
#: first layer at batch 128) leave the per-core cache, and the elementwise layers become memory-bound.
#: On CUDA one network holds every model: a small network there is bound by kernel launches, not memory.
CPU_FUSE_GROUP = 2


def fuse_group(device: torch.device) -> int | None:
    """The most models one fused network holds on ``device`` (None: all of them)."""
    return None if device.type == "cuda" else CPU_FUSE_GROUP


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
