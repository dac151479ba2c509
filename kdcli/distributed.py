"""torch.distributed for kd: join a `torchrun` job, sync gradients, name the rank that failed.

Launch any training command with ``torchrun --nproc-per-node N -m kdcli <command> ...``; every
rank runs the same command. :func:`init_from_env` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group:
gloo for CPU tensors, NCCL for CUDA tensors (one backend per device type, so small control
messages such as the Ctrl-C vote never touch the GPU stream).

Two kinds of methods run under it:

* data-parallel (the default): every rank holds the same models, reads its slice of each global
  batch, and gradients are averaged before every optimizer step (:func:`install_gradient_sync`,
  a step pre-hook, so a method that steps its own optimizers is covered without knowing it);
* methods whose ranks hold different models (codistillation) set ``data_parallel = False`` and
  do their own collectives through the helpers here; before every checkpoint they make the full
  state available on rank 0 in their ``consolidate()`` hook (the method contract,
  :mod:`kdcli.methods.base`, declares both hooks and their data-parallel defaults).

Every collective is bounded by ``KD_DIST_TIMEOUT`` seconds (default 120). When one fails, the
surviving ranks agree through the rendezvous store on who is still alive and raise a one-line
:class:`RankFailure` naming the rank(s) that died or hung.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from kdcli.errors import KDError

DEFAULT_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 300.0
TIMEOUT_ENV = "KD_DIST_TIMEOUT"
SYNC_BN_ENV = "KD_SYNC_BN"


class RankFailure(KDError):
    """A peer rank died, hung or lost the network: this rank gives up (exit code 3)."""

    exit_code = 3


@dataclass
class World:
    """Where this process stands in a torch.distributed job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Shard:
    """How one process reads the training data.

    Attributes:
        batch_size: samples consumed per step by all processes together (the global batch).
        partitions: fixed disjoint partitions of the training split; each global batch takes
            ``batch_size / partitions`` samples from every partition, in partition order
            (codistillation's "each copy trains on its own shard"). 1 = no partitioning.
        index, count: this process takes slice ``index`` of ``count`` equal slices of each
            global batch.
    """

    batch_size: int
    partitions: int = 1
    index: int = 0
    count: int = 1


def data_parallel_shard(batch_size: int, world: World) -> Shard:
    """Global batch ``batch_size``; rank ``r`` of ``w`` takes the ``r``-th ``batch_size / w`` of it."""
    return Shard(batch_size, 1, world.rank, world.world_size)


# ---------------------------------------------------------------------------------------------
# Joining and leaving


def timeout_s() -> float:
    """The collective timeout in seconds, from ``KD_DIST_TIMEOUT`` (default 120)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise KDError(f"{TIMEOUT_ENV} must be a number of seconds (got {raw!r})") from None
    if value <= 0:
        raise KDError(f"{TIMEOUT_ENV} must be positive (got {raw!r})")
    return value


def launched() -> bool:
    """True in a process started by torchrun (or by hand with its variables) in a job of 2+ ranks."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_from_env() -> World:
    if not launched():
        return World()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return World(rank, world_size, int(os.environ.get("LOCAL_RANK", rank)))


def backend_for(device: str) -> str:
    """gloo for CPU tensors, plus NCCL for CUDA tensors when this job trains on GPUs."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda and torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(device: str = "auto") -> World:
    """Join the torchrun job described by the environment; a single process gets ``World()``.

    Idempotent: a process group that already exists is reused.
    """
    world = world_from_env()
    if not world.distributed:
        return world
    if not dist.is_available():
        raise KDError("this torch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        backend = backend_for(device)
        if "nccl" in backend:
            torch.cuda.set_device(world.local_rank)
        try:
            store = _join(world)
            dist.init_process_group(
                backend, store=store, rank=world.rank, world_size=world.world_size,
                timeout=dt.timedelta(seconds=timeout_s()),
            )
        except (RuntimeError, ValueError) as err:
            raise RankFailure(
                f"rank {world.rank}: could not join the {world.world_size}-process job at "
                f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} ({_first_line(err)})"
            ) from None
    return world


def _join(world: World) -> Any:
    """Meet every rank at the rendezvous store before the collective timeout starts to count.

    Processes start seconds apart (imports, data loading), which must not trip a short
    ``KD_DIST_TIMEOUT``: the join waits up to ``max(300 s, timeout)``.
    """
    join_s = max(JOIN_TIMEOUT_S, timeout_s())
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.world_size, timeout=dt.timedelta(seconds=join_s)))
    key = f"kd/arrived/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store.add(key, 1)
    deadline = time.monotonic() + join_s
    while store.add(key, 0) < world.world_size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {store.add(key, 0)} of {world.world_size} ranks arrived within {join_s:.0f}s")
        time.sleep(0.05)
    return store


def shutdown() -> None:
    """Leave the process group (after a clean run; a failed rank just exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Failures: which rank is gone?


def _first_line(err: BaseException) -> str:
    """The message without gloo's ``[path/to/file.cc:123]`` prefix."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", line)
    return line.split(". ")[0].rstrip(".")


def _missing_ranks(grace_s: float) -> list[int] | None:
    """Ranks that do not report alive within ``grace_s`` (None when the store itself is gone).

    Every surviving rank writes ``kd/alive/<restart>/<rank>`` into the rendezvous store; a rank
    that died, hangs, or is cut off never does.
    """
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(dt.timedelta(seconds=max(1.0, grace_s)))
        prefix = f"kd/alive/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        me, size = dist.get_rank(), dist.get_world_size()
        store.set(f"{prefix}{me}", "1")
        deadline = time.monotonic() + grace_s
        missing = [r for r in range(size) if r != me]
        while missing and time.monotonic() < deadline:
            missing = [r for r in missing if not store.check([f"{prefix}{r}"])]
            if missing:
                time.sleep(0.1)
        return missing
    except Exception:  # noqa: BLE001 - the store host itself is gone: say so instead
        return None


def describe_failure(what: str, err: BaseException, started: float) -> str:
    me = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    waited = time.monotonic() - started
    missing = _missing_ranks(min(3.0, timeout_s()))
    if missing is None:
        who = "lost the rendezvous store (rank 0's host, or the network, is down)"
    elif missing:
        ranks = ", ".join(str(r) for r in missing)
        who = f"rank {ranks} stopped responding (died or hung)"
    else:
        who = "every peer is alive but the collective failed"
    after = f" after {waited:.0f}s" if waited >= 1 else ""
    return f"rank {me}: {who} during {what}{after} ({_first_line(err)})"


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a one-line :class:`RankFailure` naming the rank."""
    started = time.monotonic()
    try:
        yield
    except RankFailure:
        raise
    except (RuntimeError, dist.DistError) as err:
        raise RankFailure(describe_failure(what, err, started)) from None


# ---------------------------------------------------------------------------------------------
# Collectives on groups of tensors (one flat buffer per device and dtype: one call, not one per tensor)


def _buckets(tensors: Sequence[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


def all_reduce_mean_(tensors: Sequence[torch.Tensor], group: Any = None, what: str = "all-reduce") -> None:
    """Average each tensor over the ranks of ``group`` in place (gloo has no AVG: SUM, then divide)."""
    size = dist.get_world_size(group)
    for indices in _buckets(tensors).values():
        parts = [tensors[i] for i in indices]
        flat = torch.cat([p.reshape(-1) for p in parts])
        with collective(what):
            dist.all_reduce(flat, group=group)
        flat /= size
        for p, piece in zip(parts, flat.split([p.numel() for p in parts])):
            p.copy_(piece.view_as(p))


def sync_gradients(params: Sequence[torch.Tensor], group: Any = None) -> None:
    """Average ``.grad`` over ``group``; a gradient missing on every rank stays ``None``.

    A per-parameter presence flag travels with the gradients, so a parameter that got a gradient
    on some ranks only receives the average (missing ones count as zero), and one that no rank
    touched is left alone exactly as in a single process (no spurious weight decay).
    """
    size = dist.get_world_size(group)
    params = [p for p in params if p.requires_grad]
    for indices in _buckets(params).values():
        members = [params[i] for i in indices]
        pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in members]
        dtype, device = members[0].dtype, members[0].device
        missing = any(p.grad is None for p in members)
        # all present (the usual case): a fill on the device, not a host-to-GPU copy that would sync it
        flags = (torch.tensor([p.grad is not None for p in members], dtype=dtype, device=device) if missing
                 else torch.ones(len(members), dtype=dtype, device=device))
        flat = torch.cat([*pieces, flags])
        with collective("gradient all-reduce"):
            dist.all_reduce(flat, group=group)
        flat /= size
        sizes = [p.numel() for p in members]
        *grads, present = flat.split([*sizes, len(members)])
        # Reading the flags costs a device sync: only when some gradient is missing here.
        seen = present.tolist() if missing else [1.0] * len(members)
        for p, g, anywhere in zip(members, grads, seen):
            if not anywhere:
                continue
            g = g.view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)


def install_gradient_sync(optimizers: Iterable[torch.optim.Optimizer], group: Any = None) -> None:
    """Average gradients over ``group`` right before each optimizer step (engine- or method-stepped)."""
    for opt in optimizers:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            sync_gradients([p for g in optimizer.param_groups for p in g["params"]], group)

        opt.register_step_pre_hook(hook)


def module_state(module: nn.Module) -> list[torch.Tensor]:
    """The floating-point parameters and buffers of ``module`` (what an exchange or broadcast moves)."""
    return [t for t in module.state_dict(keep_vars=False).values() if t.is_floating_point()]


@torch.no_grad()
def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0, group: Any = None) -> None:
    """Copy ``tensors`` in place from global rank ``src`` to every rank of ``group``."""
    for indices in _buckets(tensors).values():
        parts = [tensors[i] for i in indices]
        flat = torch.cat([p.reshape(-1) for p in parts])
        with collective("weight broadcast"):
            dist.broadcast(flat, src=src, group=group)
        for p, piece in zip(parts, flat.split([p.numel() for p in parts])):
            p.copy_(piece.view_as(p))


@torch.no_grad()
def average_buffers(module: nn.Module, group: Any = None) -> None:
    """Average floating buffers (BatchNorm running statistics) over ``group``; a frozen teacher's are left alone."""
    buffers = [b for name, b in module.named_buffers() if b.is_floating_point() and not name.startswith("teacher.")]
    if buffers:
        all_reduce_mean_(buffers, group, "BatchNorm statistics all-reduce")


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)


@torch.no_grad()
def unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    for t, piece in zip(tensors, flat[: sum(t.numel() for t in tensors)].split([t.numel() for t in tensors])):
        t.copy_(piece.view_as(t))


def all_gather_padded(flat: torch.Tensor, length: int, what: str) -> list[torch.Tensor]:
    """Every rank's 1-D ``flat`` (each padded to ``length``), indexed by global rank."""
    padded = torch.zeros(length, dtype=flat.dtype, device=flat.device)
    padded[: flat.numel()] = flat
    out = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    with collective(what):
        dist.all_gather(out, padded)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (a CPU vote: no GPU sync)."""
    vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
    with collective("stop vote"):
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def any_ranks(flags: Sequence[bool]) -> list[bool]:
    """:func:`any_rank` for several flags in one collective (the stop and divergence votes)."""
    vote = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32)
    with collective("stop vote"):
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return [bool(v) for v in vote.tolist()]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a small picklable value (a path, an error message) from ``src`` to every rank."""
    box = [obj]
    with collective("setup broadcast"):
        dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def all_gather_object(obj: Any, what: str) -> list[Any]:
    """Every rank's ``obj`` by rank. Tensors travel as CPU copies (pickled in memory, never to disk)."""
    buffer = io.BytesIO()
    torch.save(_to_cpu(obj), buffer)
    payload = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    with collective(what):
        dist.all_gather(sizes, torch.tensor([payload.numel()], dtype=torch.int64))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: payload.numel()] = payload
        gathered = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
        dist.all_gather(gathered, padded)
    return [
        torch.load(io.BytesIO(g[: int(s.item())].numpy().tobytes()), weights_only=True)
        for g, s in zip(gathered, sizes)
    ]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def reduce_sums(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average per-epoch sums of logged values over all ranks (keys in sorted order on every rank)."""
    if not sums:
        return sums
    keys = sorted(sums)
    values = [sums[k].detach().float().reshape(()).clone() for k in keys]
    all_reduce_mean_(values, None, "metric all-reduce")
    return dict(zip(keys, values))


# ---------------------------------------------------------------------------------------------
# SyncBatchNorm


def sync_batchnorm_requested() -> bool:
    """``KD_SYNC_BN=1``: BatchNorm of a data-parallel method normalises over the global batch."""
    return os.environ.get(SYNC_BN_ENV, "") in ("1", "true", "yes")


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> None:
    """Turn every BatchNorm of ``module`` into SyncBatchNorm (CUDA only: torch's SyncBatchNorm needs it)."""
    if device.type != "cuda":
        raise KDError(f"{SYNC_BN_ENV}=1 needs CUDA: torch's SyncBatchNorm does not run on {device.type}")
    nn.SyncBatchNorm.convert_sync_batchnorm(module)
