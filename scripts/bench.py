#!/usr/bin/env python
"""Training throughput of kd's engine: against a reference-style loop, for K peers fused and unfused, per
CPU thread count, and for the two designs of fused peers. Every timed step is a real engine step.

Reference style = what most KD research code does: fp32, a torch DataLoader over a Dataset that
applies torchvision transforms to one PIL image at a time, batch 128. The engine = kd's real
`engine.fit` (data on the device as uint8, batched augmentation; on CUDA bf16, channels_last and the
whole step as one CUDA graph). Each measurement times `--steps` steps after `--warmup`; with
`--repeats N` every configuration is measured N times, interleaved (A B C A B C ...), and the median
is reported, so a machine that other jobs load now and then slows every configuration alike. Seconds
per epoch are extrapolated from images/s to the dataset's full training size.

    python scripts/bench.py                                   # CPU: reference vs engine, LeNet-5 MNIST-shaped
    python scripts/bench.py --online 1,2,4,8 --online-only    # K DML peers: fused and unfused, ratio to one model
    python scripts/bench.py --fuse-designs 1,2,4 --online-only   # grouped layers vs torch.func vmap
    python scripts/bench.py --thread-counts 1,2 --cases lenet5-digits,lenet5-mnist,resnet32-cifar --online-only
    python scripts/bench.py --device cuda --cases resnet32-cifar --online 1,2,4,8 --json-out bench.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcli import progress  # noqa: E402
from kdcli.config import RunConfig  # noqa: E402
from kdcli.data.base import DatasetInfo, ImageSet  # noqa: E402
from kdcli.data.loader import DeviceLoader  # noqa: E402
from kdcli.device import channels_last, select_device, setup_device, usable_cpus  # noqa: E402
from kdcli.engine import RunWriter, fit  # noqa: E402
from kdcli.methods import MethodContext  # noqa: E402
from kdcli.methods.base import NoParams  # noqa: E402
from kdcli.methods.online.dml import DML, DMLParams  # noqa: E402
from kdcli.methods.online.independent import Independent, IndependentParams  # noqa: E402
from kdcli.methods.supervised.cross_entropy import Supervised  # noqa: E402
from kdcli.models import create_model, multiply_accumulates  # noqa: E402
from kdcli.models.fused import fuse_models  # noqa: E402


@dataclass
class Case:
    name: str
    model: str
    channels: int
    size: int
    train_size: int
    augment: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


CASES = {
    "lenet5-mnist": Case("lenet5-mnist", "lenet5", 1, 28, 60000, "none", (0.1307,), (0.3081,)),
    "lenet5-digits": Case("lenet5-digits", "lenet5", 1, 8, 1293, "none", (0.5,), (0.5,)),
    "resnet20-digits": Case("resnet20-digits", "resnet20", 1, 8, 1293, "none", (0.5,), (0.5,)),
    "mlp-mnist": Case("mlp-mnist", "mlp-1200-1200", 1, 28, 60000, "none", (0.1307,), (0.3081,)),
    "resnet20-cifar": Case("resnet20-cifar", "resnet20", 3, 32, 50000, "crop_flip", (0.4914, 0.4822, 0.4465),
                           (0.247, 0.243, 0.261)),
    "resnet32-cifar": Case("resnet32-cifar", "resnet32", 3, 32, 50000, "crop_flip", (0.4914, 0.4822, 0.4465),
                           (0.247, 0.243, 0.261)),
}


def make_data(case: Case, n: int, seed: int = 0) -> ImageSet:
    """Random uint8 images of the case's shape (the speed of a step does not depend on content)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, case.channels, case.size, case.size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(images, labels)


#: what a step's time is read from: wall time, or (``--clock process``, CPU only) this process's CPU time, which
#: other jobs on a shared machine barely move: with one thread it is what the step takes on an idle machine
CLOCK: dict[str, Callable[[], float]] = {"clock": time.perf_counter}


def _timed_fit(method_for: Callable[[MethodContext], object], config: RunConfig, case: Case, device: torch.device,
               batch: int, steps: int, warmup: int) -> dict:
    """ms/step of ``steps`` engine steps after ``warmup`` (timestamps taken inside the loop, after_step)."""
    data = make_data(case, batch * (steps + warmup))
    info = DatasetInfo("bench", 10, case.channels, case.size, case.mean, case.std, augment=case.augment)
    config.train.epochs, config.train.batch_size = 1, batch
    config.optim.lr = 0.05
    loader = DeviceLoader(data, batch, mean=case.mean, std=case.std, device=device, shuffle=True, drop_last=True,
                          augment=case.augment, seed=0, channels_last=channels_last(device))
    torch.manual_seed(0)
    method = method_for(MethodContext(config, info, device, len(loader)))
    stamps: dict[int, float] = {}

    def hook(_method, step: int) -> None:
        if step + 1 in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps[step + 1] = CLOCK["clock"]()

    fit(method, config, loader, None, make_data(case, 256, 1), info, device, RunWriter(None), after_step=hook)
    seconds = stamps[warmup + steps] - stamps[warmup]
    return {"images_per_s": steps * batch / seconds, "ms_per_step": 1000 * seconds / steps}


def bench_engine(case: Case, device: torch.device, batch: int, steps: int, warmup: int, graphs: str) -> dict:
    config = RunConfig(model=case.model)
    config.train.cuda_graphs = graphs
    return _timed_fit(lambda ctx: Supervised(ctx, NoParams()), config, case, device, batch, steps, warmup)


def bench_online(case: Case, device: torch.device, batch: int, steps: int, warmup: int, graphs: str, peers: int,
                 update: str, fuse: str) -> dict:
    """One step of K peers through the real engine: DML for K ≥ 2, the same single model (`independent`) for K = 1."""
    config = RunConfig(command="distill-online", method="dml" if peers > 1 else "independent", model=case.model)
    config.train.cuda_graphs, config.train.fuse = graphs, fuse

    def build(ctx: MethodContext):
        if peers == 1:
            return Independent(ctx, IndependentParams(peers=1))
        return DML(ctx, DMLParams(peers=peers, update=update))

    return _timed_fit(build, config, case, device, batch, steps, warmup)


class _PerSampleDataset(torch.utils.data.Dataset):
    """The reference style: one PIL image at a time through torchvision transforms."""

    def __init__(self, data: ImageSet, case: Case) -> None:
        from torchvision import transforms  # noqa: PLC0415 - optional dependency, only for the reference loop

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.numpy()
        steps = [transforms.RandomCrop(case.size, padding=4), transforms.RandomHorizontalFlip()] \
            if case.augment == "crop_flip" else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(case.mean, case.std)])
        self.mode = "L" if case.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image  # noqa: PLC0415 - optional dependency, only for the reference loop

        array = self.images[i][:, :, 0] if self.mode == "L" else self.images[i]
        return self.transform(Image.fromarray(array, mode=self.mode)), int(self.labels[i])


def bench_reference(case: Case, device: torch.device, steps: int, warmup: int, workers: int) -> dict:
    batch = 128
    data = make_data(case, batch * (steps + warmup))
    loader = torch.utils.data.DataLoader(_PerSampleDataset(data, case), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                                         persistent_workers=False,
                                         # forked workers inherit a live CUDA context and crash: start them clean
                                         multiprocessing_context="forkserver" if workers and device.type == "cuda" else None)
    torch.manual_seed(0)
    model = create_model(case.model, case.channels, case.size, 10).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t0 = None
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # reference loops log every step
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"images_per_s": steps * batch / seconds, "ms_per_step": 1000 * seconds / steps}


def bench_designs(case: Case, device: torch.device, batch: int, peers: int, steps: int) -> dict[str, Callable[[], None]]:
    """Step functions (forward, DML-style loss, backward, fused SGD) for K peers in three designs.

    ``separate``: K models, one after another (kd's unfused path); ``grouped``: :class:`FusedModels`
    (grouped convolutions, batched matmuls, one network); ``vmap``: ``torch.func.stack_module_state`` +
    ``functional_call`` under ``vmap`` (BatchNorm buffers batched with the parameters).
    """
    from torch.func import functional_call, stack_module_state, vmap  # noqa: PLC0415 - only this benchmark

    torch.manual_seed(0)
    models = [create_model(case.model, case.channels, case.size, 10).to(device) for _ in range(peers)]
    x = torch.randn(batch, case.channels, case.size, case.size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def loss_of(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(logits.shape[0]))

    def stepper(params: list[torch.Tensor], forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        opt = torch.optim.SGD(params, lr=torch.tensor(0.01, device=device), momentum=0.9, fused=True)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_of(forward()).backward()
            opt.step()

        return step

    separate = copy.deepcopy(models)
    fused = fuse_models(copy.deepcopy(models))
    stacked, buffers = stack_module_state(copy.deepcopy(models))
    skeleton = copy.deepcopy(models[0]).to("meta")
    batched = vmap(lambda p, b, inputs: functional_call(skeleton, (p, b), (inputs,)), in_dims=(0, 0, None))
    return {
        "separate": stepper([p for m in separate for p in m.parameters()], lambda: torch.stack([m(x) for m in separate])),
        "grouped": stepper(list(fused.parameters()), lambda: fused(x)),
        "vmap": stepper(list(stacked.values()), lambda: batched(stacked, buffers, x)),
    }


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = CLOCK["clock"]()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (CLOCK["clock"]() - start) / steps


def medians(measure: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Run every measurement ``repeats`` times, interleaved; per key, the run with the median ms/step."""
    runs: dict[str, list[dict]] = {key: [] for key in measure}
    for _ in range(repeats):
        for key, run in measure.items():
            runs[key].append(run())
    out = {}
    for key, results in runs.items():
        ordered = sorted(results, key=lambda r: r["ms_per_step"])
        out[key] = {**ordered[len(ordered) // 2], "all_ms": [round(r["ms_per_step"], 3) for r in results]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="lenet5-mnist", help=f"comma list of: {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="measure each configuration N times, interleaved; "
                        "report the median")
    parser.add_argument("--engine-batches", default="128", help="comma list of engine batch sizes")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--graphs", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every usable CPU)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--online", default="", help="comma list of peer counts K: a DML step of K peers, fused and "
                        "unfused (K = 1: one model), e.g. 1,2,4,8")
    parser.add_argument("--online-update", default="simultaneous", help="DML update for --online: simultaneous | "
                        "alternating (alternating is never fused)")
    parser.add_argument("--fuse-designs", default="", help="comma list of K: separate vs grouped vs vmap peers")
    parser.add_argument("--thread-counts", default="", help="comma list of CPU thread counts: the engine step of "
                        "each case at each count")
    parser.add_argument("--online-only", action="store_true", help="skip the reference and engine rows")
    parser.add_argument("--clock", default="wall", choices=("wall", "process"),
                        help="process: time steps by this process's CPU time (CPU, one thread: what an idle machine "
                        "would show when other jobs share this one)")
    args = parser.parse_args()
    device = select_device(args.device)
    setup_device(device, args.threads)
    if args.clock == "process":
        if device.type != "cpu" or torch.get_num_threads() != 1:
            parser.error("--clock process needs --device cpu --threads 1")
        CLOCK["clock"] = time.process_time
    cpus = f"{os.cpu_count()} cores, {usable_cpus():g} usable"
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {cpus}"
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"device: {machine}; torch {torch.__version__}; {torch.get_num_threads()} threads; {args.clock} clock; "
          f"steps {args.steps} "
          f"after {args.warmup} warm-up; median of {args.repeats}; {when}; load average {os.getloadavg()[0]:.1f}")
    print("command: python scripts/bench.py " + " ".join(sys.argv[1:]))
    cases = [CASES[name] for name in args.cases.split(",")]
    batches = [int(b) for b in args.engine_batches.split(",")]
    report: dict = {"device": machine, "torch": torch.__version__, "date": when, "argv": sys.argv[1:],
                    "threads": torch.get_num_threads(), "clock": args.clock, "load": os.getloadavg()[0]}

    rows = []
    for case in cases if not args.online_only else []:
        measure = {"reference": lambda c=case: bench_reference(c, device, args.steps, args.warmup, args.workers)}
        for batch in batches:
            measure[f"engine {batch}"] = lambda c=case, b=batch: bench_engine(c, device, b, args.steps, args.warmup,
                                                                              args.graphs)
        results = medians(measure, args.repeats)
        ref = results["reference"]
        rows.append({"case": case.name, "loop": f"reference (fp32, DataLoader×{args.workers} workers, batch 128)", **ref,
                     "s_per_epoch": case.train_size / ref["images_per_s"], "speedup": 1.0})
        for batch in batches:
            eng = results[f"engine {batch}"]
            rows.append({"case": case.name, "loop": f"kd engine (batch {batch})", **eng,
                         "s_per_epoch": case.train_size / eng["images_per_s"],
                         "speedup": eng["images_per_s"] / ref["images_per_s"]})
    if rows:
        print(f"\n{'case':16} {'loop':52} {'img/s':>10} {'ms/step':>9} {'s/epoch':>9} {'× ref':>7}")
        for r in rows:
            print(f"{r['case']:16} {r['loop']:52} {r['images_per_s']:10.0f} {r['ms_per_step']:9.2f} "
                  f"{r['s_per_epoch']:9.2f} {r['speedup']:7.2f}")
    report["rows"] = rows

    online = []
    for case in cases if args.online else []:
        batch = batches[0]
        counts = [int(k) for k in args.online.split(",")]
        measure = {}
        for k in counts:
            for fuse in (("off",) if k == 1 else ("off", "on")):
                measure[f"{k} {fuse}"] = lambda k=k, fuse=fuse: bench_online(
                    case, device, batch, args.steps, args.warmup, args.graphs, k, args.online_update, fuse)
        results = medians(measure, args.repeats)
        single = results["1 off"]["ms_per_step"] if "1 off" in results else float("nan")
        for k in counts:
            row = {"case": case.name, "peers": k, "batch": batch, "method": "one model (independent, K=1)" if k == 1
                   else f"dml ({args.online_update})", "unfused": results[f"{k} off"]}
            if k > 1:
                row["fused"] = results[f"{k} on"]
            row["unfused_ratio"] = row["unfused"]["ms_per_step"] / single
            row["fused_ratio"] = row["fused"]["ms_per_step"] / single if k > 1 else 1.0
            online.append(row)
        print(f"\nonline, {case.name}, batch {batch}: a step of K peers (× one = ms/step ÷ one model's step)")
        print(f"{'K':>3} {'unfused ms':>11} {'× one':>7} {'fused ms':>10} {'× one':>7}  (all runs, ms)")
        for r in [r for r in online if r["case"] == case.name]:
            fused = r.get("fused")
            print(f"{r['peers']:3d} {r['unfused']['ms_per_step']:11.2f} {r['unfused_ratio']:7.2f} "
                  f"{(fused['ms_per_step'] if fused else r['unfused']['ms_per_step']):10.2f} {r['fused_ratio']:7.2f}"
                  f"  unfused {r['unfused']['all_ms']}" + (f" fused {fused['all_ms']}" if fused else ""))
    report["online"] = online

    designs = []
    for case in cases if args.fuse_designs else []:
        batch = batches[0]
        single = None
        for k in [int(k) for k in args.fuse_designs.split(",")]:
            steps = bench_designs(case, device, batch, k, args.steps)
            measure = {name: (lambda s=s: {"ms_per_step": time_steps(s, args.steps, 3, device)})
                       for name, s in steps.items()}
            try:
                results = medians(measure, args.repeats)
            except Exception as err:  # noqa: BLE001 - a design that does not run is reported, not fatal
                print(f"K={k}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
                continue
            single = single or results["separate"]["ms_per_step"]
            row = {"case": case.name, "peers": k, "batch": batch,
                   **{name: r["ms_per_step"] for name, r in results.items()},
                   "all_ms": {name: r["all_ms"] for name, r in results.items()}}
            designs.append(row)
            print(f"designs {case.name} b{batch} K={k}: " + "  ".join(
                f"{name} {r['ms_per_step']:8.2f} ms ({r['ms_per_step'] / single:4.2f}× one)" for name, r in results.items()))
    report["designs"] = designs

    thread_rows = []
    if args.thread_counts and device.type == "cpu":
        counts = [int(t) for t in args.thread_counts.split(",")]
        for case in cases:
            for batch in batches:
                def at(threads: int, c: Case = case, b: int = batch) -> dict:
                    torch.set_num_threads(threads)
                    return bench_engine(c, device, b, args.steps, args.warmup, args.graphs)

                results = medians({t: (lambda t=t: at(t)) for t in counts}, args.repeats)
                mmac = 3 * batch * multiply_accumulates(create_model(case.model, case.channels, case.size, 10),
                                                        case.channels, case.size) / 1e6
                row = {"case": case.name, "batch": batch, "work_mmac": mmac,
                       **{f"{t}_threads_ms": results[t]["ms_per_step"] for t in counts},
                       "all_ms": {t: results[t]["all_ms"] for t in counts}}
                thread_rows.append(row)
                base = results[counts[0]]["ms_per_step"]
                print(f"threads {case.name} b{batch} ({mmac:,.0f} M MAC/step): " + "  ".join(
                    f"{t}: {results[t]['ms_per_step']:.2f} ms ({base / results[t]['ms_per_step']:.2f}×)" for t in counts))
        torch.set_num_threads(max(counts))
    report["threads_rows"] = thread_rows
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    with progress.silenced():  # the bench prints its own table
        main()
