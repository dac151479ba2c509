#!/usr/bin/env python
"""Training throughput of kd's engine against a reference-style loop, on the same model and data.

Reference style = what most KD research code does: fp32, a torch DataLoader over a Dataset that
applies torchvision transforms to one PIL image at a time, batch 128. The engine = kd's real
`engine.fit` (data on the device as uint8, batched augmentation, bf16 + channels_last + CUDA graphs
on CUDA). Both run the same number of timed steps after a warm-up; seconds per epoch are
extrapolated from images/s to the dataset's full training size.

    python scripts/bench.py                      # CPU cases
    python scripts/bench.py --device cuda --cases lenet5-mnist,resnet32-cifar --json-out bench.json
    python scripts/bench.py --device cuda --cases resnet32-cifar --online 1,2,3,4 --online-only   # K peers of DML
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcli import progress  # noqa: E402
from kdcli.config import RunConfig  # noqa: E402
from kdcli.data.base import DatasetInfo, ImageSet  # noqa: E402
from kdcli.data.loader import DeviceLoader  # noqa: E402
from kdcli.device import select_device, setup_device  # noqa: E402
from kdcli.engine import RunWriter, fit  # noqa: E402
from kdcli.methods import MethodContext  # noqa: E402
from kdcli.methods.base import NoParams  # noqa: E402
from kdcli.methods.online.dml import DML, DMLParams  # noqa: E402
from kdcli.methods.online.independent import Independent, IndependentParams  # noqa: E402
from kdcli.methods.supervised.cross_entropy import Supervised  # noqa: E402
from kdcli.models import create_model  # noqa: E402


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
    "resnet32-cifar": Case("resnet32-cifar", "resnet32", 3, 32, 50000, "crop_flip", (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
}


def make_data(case: Case, n: int, seed: int = 0) -> ImageSet:
    """Random uint8 images of the case's shape (the speed of a step does not depend on content)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, case.channels, case.size, case.size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageSet(images, labels)


def bench_engine(case: Case, device: torch.device, batch: int, steps: int, warmup: int, graphs: str) -> dict:
    data = make_data(case, batch * (steps + warmup))
    info = DatasetInfo("bench", 10, case.channels, case.size, case.mean, case.std, augment=case.augment)
    config = RunConfig(model=case.model)
    config.train.epochs, config.train.batch_size, config.train.cuda_graphs = 1, batch, graphs
    config.optim.lr = 0.05
    loader = DeviceLoader(data, batch, mean=case.mean, std=case.std, device=device, shuffle=True, drop_last=True,
                          augment=case.augment, seed=0, channels_last=device.type == "cuda")
    torch.manual_seed(0)
    method = Supervised(MethodContext(config, info, device, len(loader)), NoParams())
    stamps: dict[int, float] = {}

    def hook(_method, step: int) -> None:
        if step + 1 in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps[step + 1] = time.perf_counter()

    fit(method, config, loader, None, make_data(case, 256, 1), info, device, RunWriter(None), after_step=hook)
    seconds = stamps[warmup + steps] - stamps[warmup]
    return {"images_per_s": steps * batch / seconds, "ms_per_step": 1000 * seconds / steps}


class _PerSampleDataset(torch.utils.data.Dataset):
    """The reference style: one PIL image at a time through torchvision transforms."""

    def __init__(self, data: ImageSet, case: Case) -> None:
        from torchvision import transforms

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.numpy()
        steps = [transforms.RandomCrop(case.size, padding=4), transforms.RandomHorizontalFlip()] if case.augment == "crop_flip" else []
        self.transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(case.mean, case.std)])
        self.mode = "L" if case.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

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


def bench_online(case: Case, device: torch.device, batch: int, steps: int, warmup: int, graphs: str, peers: int,
                 update: str) -> dict:
    """One step of K peers through the real engine: DML for K ≥ 2, the same K=1 model (`independent`) as the unit."""
    data = make_data(case, batch * (steps + warmup))
    info = DatasetInfo("bench", 10, case.channels, case.size, case.mean, case.std, augment=case.augment)
    config = RunConfig(command="distill-online", method="dml" if peers > 1 else "independent", model=case.model)
    config.train.epochs, config.train.batch_size, config.train.cuda_graphs = 1, batch, graphs
    config.optim.lr = 0.05
    loader = DeviceLoader(data, batch, mean=case.mean, std=case.std, device=device, shuffle=True, drop_last=True,
                          augment=case.augment, seed=0, channels_last=device.type == "cuda")
    torch.manual_seed(0)
    ctx = MethodContext(config, info, device, len(loader))
    method = DML(ctx, DMLParams(peers=peers, update=update)) if peers > 1 else Independent(ctx, IndependentParams(peers=1))
    stamps: dict[int, float] = {}

    def hook(_method, step: int) -> None:
        if step + 1 in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps[step + 1] = time.perf_counter()

    fit(method, config, loader, None, make_data(case, 256, 1), info, device, RunWriter(None), after_step=hook)
    seconds = stamps[warmup + steps] - stamps[warmup]
    return {"images_per_s": steps * batch / seconds, "ms_per_step": 1000 * seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", default="lenet5-mnist")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--engine-batches", default="128", help="comma list of engine batch sizes")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--graphs", default="auto")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--online", default="", help="comma list of peer counts K: time a DML step of K peers (e.g. 1,2,3,4)")
    parser.add_argument("--online-update", default="simultaneous", help="DML update for --online: simultaneous | alternating")
    parser.add_argument("--online-only", action="store_true", help="with --online: skip the reference and engine rows")
    args = parser.parse_args()
    device = select_device(args.device)
    setup_device(device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for name in args.cases.split(",") if not args.online_only else []:
        case = CASES[name]
        ref = bench_reference(case, device, args.steps, args.warmup, args.workers)
        rows.append({"case": name, "loop": f"reference (fp32, DataLoader×{args.workers} workers, batch 128)", **ref,
                     "s_per_epoch": case.train_size / ref["images_per_s"], "speedup": 1.0})
        for batch in [int(b) for b in args.engine_batches.split(",")]:
            eng = bench_engine(case, device, batch, args.steps, args.warmup, args.graphs)
            rows.append({"case": name, "loop": f"kd engine (batch {batch})", **eng,
                         "s_per_epoch": case.train_size / eng["images_per_s"],
                         "speedup": eng["images_per_s"] / ref["images_per_s"]})
    print(f"device: {machine}; torch {torch.__version__}; steps {args.steps} after {args.warmup} warm-up")
    if rows:
        print(f"{'case':16} {'loop':52} {'img/s':>10} {'ms/step':>9} {'s/epoch':>9} {'× ref':>7}")
    for r in rows:
        print(f"{r['case']:16} {r['loop']:52} {r['images_per_s']:10.0f} {r['ms_per_step']:9.2f} {r['s_per_epoch']:9.2f} {r['speedup']:7.2f}")
    online = []
    for name in args.cases.split(",") if args.online else []:
        case = CASES[name]
        batch = int(args.engine_batches.split(",")[0])
        single = None
        for k in [int(k) for k in args.online.split(",")]:
            res = bench_online(case, device, batch, args.steps, args.warmup, args.graphs, k, args.online_update)
            single = res["ms_per_step"] if k == 1 else single
            ratio = res["ms_per_step"] / (k * single) if single else float("nan")
            online.append({"case": name, "peers": k, "method": "independent" if k == 1 else f"dml ({args.online_update})",
                           "batch": batch, **res, "ratio_to_k_single": ratio})
    if online:
        print("online: K peers in one step (ratio = ms/step ÷ (K × the K=1 step); < 1 is better than K separate models)")
        print(f"{'case':16} {'K':>3} {'method':26} {'ms/step':>9} {'img/s':>10} {'÷ K×single':>11}")
        for r in online:
            print(f"{r['case']:16} {r['peers']:3d} {r['method']:26} {r['ms_per_step']:9.2f} {r['images_per_s']:10.0f} "
                  f"{r['ratio_to_k_single']:11.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"device": machine, "torch": torch.__version__, "rows": rows,
                                                   "online": online}, indent=2))


if __name__ == "__main__":
    with progress.silenced():  # the bench prints its own table
        main()
