"""The one training loop every command uses.

It owns precision, CUDA graphs, the learning-rate schedule, evaluation, progress, metrics and
checkpoints; it never names a method and only calls the hooks the method contract declares
(:mod:`kdcli.methods.base`). Speed rules (DESIGN.md): data lives on the device as uint8 and is
augmented there in batches; losses are summed on the device and read back only every ``log_every``
steps, so the GPU is never stalled by a host sync per step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from kdcli import checkpoint, distributed, progress
from kdcli.config import OptimConfig, RunConfig, TrainConfig
from kdcli.data.base import DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader, Slot
from kdcli.device import autocast, channels_last, resolve_precision, rng_state, set_rng_state
from kdcli.errors import Aborted, Diverged, Interrupted, KDError
from kdcli.methods.base import Method

# ---------------------------------------------------------------------------------------------
# Learning-rate schedule: a pure function of the step, so resuming needs no scheduler state


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    total = max(1, steps_per_epoch * epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return 1.0


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Every param group's learning rate = its initial rate × ``factor``.

    A rate held as a tensor (CUDA, so a captured optimizer step reads the current value) is set in
    place; one that a resumed state brought back on another device is first moved to its parameters'.
    """
    for opt in optimizers:
        for group in opt.param_groups:
            rate = group["lr"]
            group.setdefault("initial_lr", float(rate))
            value = group["initial_lr"] * factor
            if isinstance(rate, torch.Tensor):
                device = group["params"][0].device if group["params"] else rate.device
                if rate.device != device:
                    group["lr"] = rate = rate.to(device)
                rate.fill_(value)
            else:
                group["lr"] = value


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first param group's learning rate as a number (reading a tensor rate syncs its device)."""
    return float(optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageSet,
    info: DatasetInfo,
    device: torch.device,
    batch_size: int = 1024,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits of ``model`` for every image of ``data``, as float32 on the CPU, in order."""
    was_training = model.training
    model.eval()
    loader = DeviceLoader(
        data, batch_size, mean=info.mean, std=info.std, device=device, shuffle=False, drop_last=False,
        channels_last=channels_last(device),
    )
    outputs = []
    with autocast(device, dtype):
        for images, _ in loader.epoch(0):
            outputs.append(model(images).float())
    model.train(was_training)
    return torch.cat(outputs).cpu()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1).float().mean().item()


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def evaluate_models(
    models: dict[str, nn.Module], data: ImageSet, info: DatasetInfo, device: torch.device, batch_size: int,
    dtype: torch.dtype | None,
) -> dict[str, dict[str, float]]:
    return {role: score(predict(m, data, info, device, batch_size, dtype), data.labels) for role, m in models.items()}


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    test: dict[str, dict[str, float]]
    val: dict[str, dict[str, float]]
    wall_time_s: float
    images_per_s: float


@dataclass
class RunWriter:
    """Writes the run directory (only on the main process). Created lazily at the first checkpoint."""

    path: Path | None
    describe: Callable[[], dict[str, Any]] = field(default=lambda: {})

    @property
    def active(self) -> bool:
        return self.path is not None

    def metrics(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            checkpoint.append_jsonl(self.path / checkpoint.METRICS_FILE, row)

    def run_json(self, extra: dict[str, Any]) -> None:
        if self.path is not None:
            checkpoint.write_json(self.path / checkpoint.RUN_FILE, {**self.describe(), **extra})

    def rewrite_metrics(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` = exactly ``rows`` (a resumed run's history: a row written just before a kill, for
        an epoch the checkpoint does not hold, must not stay beside its redone twin)."""
        if self.path is not None:
            checkpoint.write_jsonl(self.path / checkpoint.METRICS_FILE, rows)


#: The signals that stop a run: Ctrl-C, and what schedulers send on preemption.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """The first Ctrl-C or SIGTERM asks the loop to stop after the current step and save; a second aborts."""

    def __init__(self) -> None:
        self.stop = False
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (tests); signal handling stays as it was
            self._previous = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise Aborted(signum)
        self.stop, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def non_finite(values: dict[str, torch.Tensor]) -> list[str]:
    """The names of the values that are NaN or infinite (one device→host read for all of them)."""
    if not values:
        return []
    names = list(values)
    finite = torch.stack([values[n].detach().float().reshape(()) for n in names]).isfinite().tolist()
    return [n for n, ok in zip(names, finite) if not ok]


def weights_finite(method: Method) -> bool:
    """Whether every trained tensor of ``method`` is finite (one device→host read)."""
    state = [t for t in method.trained_state().values() if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in state]).all().item()) if state else True


def _maybe_graph(method: Method, sample: torch.Tensor, cfg: TrainConfig, device: torch.device, dtype: Any) -> bool:
    """Capture each graphable model's forward+backward as a CUDA graph (small nets are launch-bound)."""
    if device.type != "cuda" or cfg.cuda_graphs == "off":
        return False
    models = method.graphable_models()
    if not models:
        return False
    quiet_warning = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet_warning is not None:
        # capture's warm-up runs on a side stream; the one-time AccumulateGrad stream notice is expected
        quiet_warning(False)
    try:
        with autocast(device, dtype):
            for model in models.values():
                torch.cuda.make_graphed_callables(model, (sample,), num_warmup_iters=3)
        for p in method.trainable_parameters():
            p.grad = None
        return True
    except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager execution
        if cfg.cuda_graphs == "on":
            raise KDError(f"CUDA graph capture failed: {str(err).splitlines()[0]}") from None
        progress.log(f"[yellow]CUDA graphs unavailable ({str(err).splitlines()[0]}); running eagerly")
        return False


class StepRunner:
    """Runs one training step (zero grads, ``training_step``, backward, optimizer steps) from a batch's slot.

    Eager by default. With ``graph=True`` (CUDA, a method whose :meth:`~kdcli.methods.base.Method.graphable_step`
    is True) the first ``WARMUP`` steps run eagerly on a side stream, the next is captured as one CUDA
    graph, batch gather and augmentation included, and every later step copies its slot into the
    graph's fixed index and draw tensors and replays it: one launch per step instead of thousands.
    The returned parts are then the graph's output tensors, overwritten by the next replay. A capture
    that fails falls back to eager steps (``--cuda-graphs auto``) or is an error (``on``).

    ``capture`` builds the graph from a step function (default: :class:`torch.cuda.CUDAGraph` capture);
    tests on a CPU pass one that replays by calling the function again, which runs the same
    fixed-tensor path.
    """

    WARMUP = 3

    def __init__(self, method: Method, optimizers: list[torch.optim.Optimizer], loader: DeviceLoader | None,
                 device: torch.device, dtype: torch.dtype | None, graph: bool = False, required: bool = False,
                 capture: Callable[..., tuple[Callable[[], None], dict[str, torch.Tensor]]] | None = None) -> None:
        self.method, self.optimizers, self.loader = method, optimizers, loader
        self.device, self.dtype = device, dtype
        self.graph, self.required = graph, required
        self.capture = capture or _capture_cuda_graph
        self.eager_steps = 0
        self.replay: Callable[[], None] | None = None
        self.parts: dict[str, torch.Tensor] = {}
        self.index: torch.Tensor | None = None
        self.draws: torch.Tensor | None = None
        self.step = 0

    def run(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """The step itself, eager (what a graph captures)."""
        method = self.method
        if not method.manual_optimization:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            parts = method.training_step(batch, step)
        if not method.manual_optimization:
            parts["loss"].backward()
            for opt in self.optimizers:
                opt.step()
        return parts

    def __call__(self, slot: Slot | None, step: int) -> dict[str, torch.Tensor]:
        if self.replay is not None:
            if slot is not None:
                self._fill(slot)
            self.step = step
            self.replay()
            return self.parts
        if not self.graph or (slot is not None and slot.index is None):
            return self.run(self.loader.gather(slot) if slot is not None else None, step)
        if self.eager_steps < self.WARMUP:
            self.eager_steps += 1
            with _side_stream(self.device):
                return self.run(self.loader.gather(slot) if slot is not None else None, step)
        return self._capture(slot, step)

    def _fill(self, slot: Slot) -> None:
        self.index.copy_(slot.index)
        if self.draws is not None:
            self.draws.copy_(slot.draws)

    def _capture(self, slot: Slot | None, step: int) -> dict[str, torch.Tensor]:
        fixed: Slot | None = None
        if slot is not None:
            self.index = slot.index.clone()
            self.draws = slot.draws.clone() if slot.draws is not None else None
            fixed = Slot(slot.lo, slot.hi, self.index, self.draws)
        self.step = step

        def whole_step() -> dict[str, torch.Tensor]:
            return self.run(self.loader.gather(fixed) if fixed is not None else None, self.step)

        try:
            replay, parts = self.capture(whole_step)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager steps
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            if self.required:
                raise KDError(f"CUDA graph capture of the training step failed: {message}") from None
            progress.log(f"[yellow]whole-step CUDA graph unavailable ({message}); running eagerly")
            self.graph = False
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return self.run(self.loader.gather(slot) if slot is not None else None, step)
        self.replay, self.parts = replay, parts
        replay()  # capturing records the step without running it
        return self.parts


def graph_whole_step(method: Method, cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the engine captures ``method``'s whole step as one CUDA graph (see :class:`StepRunner`).

    Not under torchrun: the gradient all-reduce runs between backward and the optimizer step.
    """
    return (device.type == "cuda" and cfg.cuda_graphs != "off" and method.graphable_step()
            and not method.ctx.world.distributed)


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """Run on a side stream (CUDA): what a graph capture needs the warm-up steps to have done."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        yield
    torch.cuda.current_stream(device).wait_stream(stream)


def _capture_cuda_graph(step: Callable[[], dict[str, torch.Tensor]]) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """Capture ``step`` as a CUDA graph: (replay, its output tensors)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        parts = step()
    return graph.replay, parts


def fit(
    method: Method,
    config: RunConfig,
    train_loader: DeviceLoader | None,
    val_set: ImageSet | None,
    test_set: ImageSet,
    info: DatasetInfo,
    device: torch.device,
    writer: RunWriter,
    resume: dict[str, Any] | None = None,
    after_step: Callable[[Method, int], None] | None = None,
    allow_graphs: bool = True,
) -> FitResult:
    """Train ``method`` for ``config.train.epochs`` epochs; evaluate on val each epoch and on test at the end.

    ``allow_graphs=False`` keeps the step eager whatever ``--cuda-graphs`` says (SyncBatchNorm's
    collectives cannot be captured).
    """
    cfg = config.train
    dtype = resolve_precision(cfg.precision, device)
    method.to(device)
    if channels_last(device):
        method.to(memory_format=torch.channels_last)
    steps = len(train_loader) if train_loader is not None else (method.steps_per_epoch() or 0)
    if steps <= 0:
        raise KDError("nothing to train on: the training split is smaller than one batch; lower --batch-size")
    optimizers = method.optimizers()
    scheduled = method.scheduled_optimizers()
    set_lr(optimizers, 1.0)  # records initial_lr
    initial_lrs = [[group["initial_lr"] for group in opt.param_groups] for opt in optimizers]

    start_epoch, start_step, history, elapsed = 0, 0, [], 0.0
    partial: dict[str, torch.Tensor] = {}
    if resume is not None:
        method.load_trained_state({k: v.to(device) for k, v in resume["method"].items()})
        for opt, opt_state, lrs in zip(optimizers, resume["optimizers"], initial_lrs):
            opt.load_state_dict(opt_state)
            for group, lr in zip(opt.param_groups, lrs):  # the config's rate, not the saved one (--resume --lr)
                group["initial_lr"] = lr
                if not isinstance(group["lr"], torch.Tensor):  # a tensor rate (CUDA) is set in place by set_lr
                    group["lr"] = lr
        set_rng_state(resume["rng"], device)
        start_epoch, start_step = int(resume["epoch"]), int(resume["step"])
        history, elapsed = list(resume["history"]), float(resume["elapsed"])
        partial = {k: v.to(device) for k, v in resume.get("partial", {}).items()}
        writer.rewrite_metrics(history)
    world = method.ctx.world
    if world.distributed:
        method.prepare_distributed(optimizers)

    def synchronize(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Under torchrun: rank 0 gets the job's whole state, and the logged sums averaged over ranks."""
        method.consolidate()
        return distributed.reduce_sums(sums)

    def save_state(epoch: int, step: int, sums: dict[str, torch.Tensor], status: str = "running") -> None:
        if not writer.active:
            return
        checkpoint.save_state(
            writer.path / checkpoint.STATE_FILE,
            {
                "epoch": epoch,
                "step": step,
                "method": method.trained_state(),
                "optimizers": [opt.state_dict() for opt in optimizers],
                "rng": rng_state(device),
                "history": history,
                "elapsed": elapsed + (time.perf_counter() - t_start),
                "partial": {k: v.detach() for k, v in sums.items()},
            },
        )
        writer.run_json({"status": status, "epoch": epoch, "step": step})

    # CUDA graphs: the whole step when the method allows it, else each graphable model's forward+backward
    whole_step = allow_graphs and graph_whole_step(method, cfg, device)
    stepper = StepRunner(method, optimizers, train_loader, device, dtype, graph=whole_step,
                         required=cfg.cuda_graphs == "on")
    if not whole_step and allow_graphs and train_loader is not None and method.graphable_models() and \
            device.type == "cuda":
        sample = next(iter(train_loader.epoch(start_epoch)))[0]
        saved_rng = rng_state(device)
        _maybe_graph(method, sample, cfg, device, dtype)
        set_rng_state(saved_rng, device)

    def check_finite(epoch: int, step: int, sums: dict[str, torch.Tensor], weights: bool = False) -> None:
        """Stop a run whose loss (or, before a checkpoint, whose weights) stopped being finite; under torchrun
        every rank calls this at the same point and they stop together."""
        bad = non_finite(sums)
        if not bad and weights and not weights_finite(method):
            bad = ["weights"]
        if world.distributed and distributed.any_ranks([bool(bad)])[0] and not bad:
            bad = ["the loss on another rank"]
        if bad:
            raise Diverged(f"training diverged at epoch {epoch + 1} step {step}: {', '.join(bad)} not finite")

    t_start = time.perf_counter()
    images_seen = 0
    curve = val_set is None and not method.needs_data
    last_test: dict[str, dict[str, float]] | None = None
    total_steps = steps * cfg.epochs
    with StopFlag() as stop, progress.track("train", total_steps) as tracker:
        tracker.update(start_epoch * steps + start_step)
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            method.on_epoch_start(epoch)
            first = start_step if epoch == start_epoch else 0
            sums = partial if epoch == start_epoch and partial else {}
            tracker.update(epoch * steps + first, description=f"train epoch {epoch + 1}/{cfg.epochs}")
            slots: Iterator[Slot | None] = train_loader.slots(epoch, first) if train_loader is not None else iter(
                [None] * (steps - first)
            )
            t_epoch = time.perf_counter()
            step = first
            for step, slot in enumerate(slots, start=first):
                global_step = epoch * steps + step
                set_lr(scheduled, lr_factor(config.optim, global_step, steps, cfg.epochs))
                parts = stepper(slot, global_step)
                if after_step is not None:
                    after_step(method, global_step)
                for name, value in parts.items():
                    value = value.detach().float()
                    sums[name] = sums[name] + value if name in sums else value.clone()
                if slot is not None:
                    images_seen += slot.size
                done = step + 1 - first
                boundary = done % cfg.log_every == 0 or step + 1 == steps
                # the divergence guard reads the sums only here (and at a stop): no host sync per step
                diverged = bool(non_finite(sums)) if boundary else False
                if progress.is_quiet() or diverged:
                    tracker.update(epoch * steps + step + 1)
                elif boundary:  # reading the sums syncs the device
                    means = {k: v.item() / (step + 1) for k, v in sums.items()}
                    stats = " ".join(f"{k} {v:.3f}" for k, v in means.items() if k in ("loss", "acc"))
                    rate = done / max(1e-9, time.perf_counter() - t_epoch)
                    speed = f"{rate * slot.size:.0f} img/s" if slot is not None else f"{rate:.1f} it/s"
                    tracker.update(epoch * steps + step + 1, stats=f"{stats} {speed}")
                else:
                    tracker.update(epoch * steps + step + 1)
                stopping = stop.stop
                if world.distributed:  # every rank stops at the same step: vote every log_every steps
                    stopping, diverged = distributed.any_ranks([stop.stop, diverged]) if boundary else (False, False)
                    if stopping and not diverged:
                        sums = synchronize(sums)
                if diverged:
                    bad = non_finite(sums) or ["the loss on another rank"]
                    raise Diverged(f"training diverged at epoch {epoch + 1} step {step + 1}: {', '.join(bad)} "
                                   "not finite")
                if stopping:
                    check_finite(epoch, step + 1, sums, weights=True)
                    save_state(epoch, step + 1, sums, status="interrupted")
                    signum = stop.signum or signal.SIGINT
                    raise Interrupted(
                        f"{signal.Signals(signum).name} at epoch {epoch + 1} step {step + 1}: "
                        + ("saved" if writer.active else "nothing saved"),
                        exit_code=128 + signum,
                    )
            if step + 1 != steps and train_loader is not None and first < steps:
                raise KDError("internal: loader yielded fewer batches than expected")
            if world.distributed:
                sums = synchronize(sums)  # rank 0 logs, evaluates and saves the whole job's state
            check_finite(epoch, steps, sums, weights=True)  # a checkpoint is only ever finite
            epoch_time = time.perf_counter() - t_epoch
            row: dict[str, Any] = {"epoch": epoch + 1, "time_s": round(epoch_time, 3)}
            row.update({f"train_{k}": v.item() / steps for k, v in sums.items()})
            row["lr"] = current_lr(optimizers[0]) if optimizers else 0.0
            if val_set is not None:
                val = evaluate_models(method.eval_models(), val_set, info, device, cfg.eval_batch_size, dtype)
                row.update({f"val_top1/{role}": r["top1"] for role, r in val.items()})
            elif curve:
                # a data-free run has no validation data: the per-epoch test accuracy is logged as a curve
                # (metrics.jsonl, dashed in curves.png) and never selects anything; the reported number is
                # the last epoch's, which this evaluation already is when the loop ends here
                last_test = evaluate_models(method.eval_models(), test_set, info, device, cfg.eval_batch_size, dtype)
                row.update({f"test_top1/{role}": r["top1"] for role, r in last_test.items()})
            history.append(row)
            writer.metrics(row)
            shown = " ".join(
                f"{k.replace('train_', '')} {v:.4f}" for k, v in row.items() if k not in ("epoch", "lr", "time_s")
            )
            progress.log(f"epoch {epoch + 1}/{cfg.epochs} {shown} ({epoch_time:.1f}s)")
            partial = {}
            save_state(epoch + 1, 0, {})
            if epoch + 1 < cfg.epochs:
                last_test = None
    wall = elapsed + time.perf_counter() - t_start
    models = method.eval_models()
    test = last_test if last_test is not None else evaluate_models(models, test_set, info, device,
                                                                     cfg.eval_batch_size, dtype)
    val_final = evaluate_models(models, val_set, info, device, cfg.eval_batch_size, dtype) if val_set is not None else {}
    rate = images_seen / max(1e-9, time.perf_counter() - t_start)
    return FitResult(history, test, val_final, wall, rate)
