"""Lopes, Fenu & Starner (2017) activation metadata: per-class statistics a teacher run keeps for data-free KD.

Recorded once, while the training data is still at hand (the Lopes method's ``record_teacher_statistics``
hook, which ``kd train-teacher`` calls at the end and ``kd record-metadata --teacher RUN`` on an older
run), into ``<run>/metadata.safetensors``:

* **units** of every layer: each block group's output average-pooled to at most 4×4 cells (fewer
  when that would exceed 1024 units), an fc group as it is, and the logits (the top layer);
* per class, the **mean and std** of every unit (``top_layer`` and ``all_layers`` objectives);
* **spectral summaries**: the units form a graph whose edge weights come from the teacher's weights
  (the influence of unit i on unit j through the absolute-valued network: ``|W|``, no biases, BN as
  its ``|γ|/σ`` scale), and activations are projected onto the lowest-frequency eigenvectors of the
  graph's normalised Laplacian: one graph over all layers (``spectral_all_layers``) and one per pair
  of consecutive layers (``spectral_layer_pairs``). The bases and the per-class mean/std of the
  coefficients are stored.

The paper's graphs are over fully connected layers; pooling conv maps into cells is our
generalisation so any kd model (LeNet, ResNets) gets a small graph. A LeNet-5 MNIST teacher's file
is about 0.7 MB.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import checkpoint
from kdcli.data.base import DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader
from kdcli.errors import KDError, unknown

METADATA_FILE = "metadata.safetensors"
OBJECTIVES = ("top_layer", "all_layers", "spectral_all_layers", "spectral_layer_pairs")
MAX_UNITS = 1024
SPECTRAL_FRACTION = 0.25  # share of each graph's eigenvectors kept (lowest graph frequencies first)


# ---------------------------------------------------------------------------------------------
# Units


def cell_grid(channels: int, height: int) -> int:
    """Cells per side a ``[C, H, W]`` map is pooled to: 4, 2 or 1, at most H, with ``C·g² ≤ MAX_UNITS``."""
    for g in (4, 2, 1):
        if g <= height and channels * g * g <= MAX_UNITS:
            return g
    return 1


def layer_units(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The recorded units of one forward pass: one ``[B, D_l]`` per block group, then the logits."""
    logits, features = model.forward_features(x)
    units = []
    for group in features.groups:
        if group.dim() == 4:
            g = cell_grid(group.shape[1], group.shape[2])
            units.append(F.adaptive_avg_pool2d(group.float(), g).flatten(1))
        else:
            units.append(group.float().flatten(1))
    units.append(logits.float())
    return units


def _absolute_copy(module: nn.Module) -> nn.Module:
    """``module`` with |W|, zero biases and each BatchNorm reduced to its ``|γ|/σ`` scale (eval mode)."""
    clone = copy.deepcopy(module).eval()
    with torch.no_grad():
        for m in clone.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.abs_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.zero_()
                if m.weight is not None:
                    m.weight.abs_()
                    m.bias.zero_()
    return clone


@torch.no_grad()
def connectivity(model: nn.Module, sample: torch.Tensor) -> list[torch.Tensor]:
    """Non-negative ``[D_l, D_{l+1}]`` edge weights between consecutive recorded layers.

    Entry (i, j) is unit j's response in the absolute-valued network when only unit i of the layer
    below is on (a one-hot probe spread over its cell), i.e. how strongly the weights connect them.
    """
    _, features = model.forward_features(sample[:1])
    groups = features.groups
    shapes = [g.shape[1:] for g in groups]
    blocks = []
    stages = [_absolute_copy(s) for s in model.stages]
    head = nn.Sequential(_absolute_copy(model.pool), _absolute_copy(model.classifier))
    for layer, shape in enumerate(shapes):
        if len(shape) == 3:
            c, h, w = shape
            g = cell_grid(c, h)
            size = c * g * g
            probe = torch.eye(size, device=sample.device).view(size, c, g, g)
            probe = F.interpolate(probe, size=(h, w), mode="nearest")
        else:
            size = shape[0]
            probe = torch.eye(size, device=sample.device)
        nxt = stages[layer + 1](probe) if layer + 1 < len(stages) else head(probe)
        if nxt.dim() == 4:
            nxt = F.adaptive_avg_pool2d(nxt, cell_grid(nxt.shape[1], nxt.shape[2])).flatten(1)
        blocks.append(nxt.float().clamp_min(0).cpu())
    return blocks


def spectral_basis(adjacency: torch.Tensor, fraction: float = SPECTRAL_FRACTION) -> torch.Tensor:
    """The ``⌈fraction·D⌉`` lowest-frequency eigenvectors ``[D, k]`` of ``I − D^{-1/2} A D^{-1/2}``."""
    a = adjacency.double()
    a = 0.5 * (a + a.t())
    degree = a.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), torch.zeros_like(degree))
    laplacian = torch.eye(a.shape[0], dtype=a.dtype) - inv_sqrt[:, None] * a * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)
    k = max(1, math.ceil(fraction * a.shape[0]))
    return vectors[:, :k].float()


def _block_graph(blocks: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """The chain graph over all layers: block (l, l+1) = the layer pair's weights scaled to max 1."""
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    a = torch.zeros(offsets[-1], offsets[-1])
    for layer, block in enumerate(blocks):
        scaled = block / block.max().clamp_min(1e-12)
        a[offsets[layer] : offsets[layer + 1], offsets[layer + 1] : offsets[layer + 2]] = scaled
    return a + a.t()


def pair_graph(block: torch.Tensor) -> torch.Tensor:
    d_in, d_out = block.shape
    a = torch.zeros(d_in + d_out, d_in + d_out)
    a[:d_in, d_in:] = block / block.max().clamp_min(1e-12)
    return a + a.t()


# ---------------------------------------------------------------------------------------------
# The recorded statistics


@dataclass
class Metadata:
    """Per-class unit statistics of one teacher; tensors on the CPU (see the module docstring)."""

    layer_mean: list[torch.Tensor]  # [K, D_l] per layer (last = logits)
    layer_std: list[torch.Tensor]
    all_basis: torch.Tensor  # [D, k]
    all_mean: torch.Tensor  # [K, k]
    all_std: torch.Tensor
    pair_basis: list[torch.Tensor]  # [D_l + D_{l+1}, k_l]
    pair_mean: list[torch.Tensor]
    pair_std: list[torch.Tensor]
    class_count: torch.Tensor
    description: dict[str, Any]

    def to(self, device: torch.device | str) -> "Metadata":
        move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
        return Metadata(
            move(self.layer_mean),
            move(self.layer_std),
            self.all_basis.to(device),
            self.all_mean.to(device),
            self.all_std.to(device),
            move(self.pair_basis),
            move(self.pair_mean),
            move(self.pair_std),
            self.class_count.to(device),
            self.description,
        )

    def blocks(self, objective: str, units: list[torch.Tensor]) -> list[torch.Tensor]:
        """What an objective compares, computed from a forward pass's units."""
        if objective == "top_layer":
            return [units[-1]]
        if objective == "all_layers":
            return units
        if objective == "spectral_all_layers":
            return [torch.cat(units, dim=1) @ self.all_basis]
        if objective == "spectral_layer_pairs":
            return [torch.cat([units[i], units[i + 1]], dim=1) @ b for i, b in enumerate(self.pair_basis)]
        raise KDError(unknown_objective(objective))

    def statistics(self, objective: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-class (means, stds) of the objective's blocks, each ``[K, D]``."""
        if objective == "top_layer":
            return [self.layer_mean[-1]], [self.layer_std[-1]]
        if objective == "all_layers":
            return self.layer_mean, self.layer_std
        if objective == "spectral_all_layers":
            return [self.all_mean], [self.all_std]
        if objective == "spectral_layer_pairs":
            return self.pair_mean, self.pair_std
        raise KDError(unknown_objective(objective))

    def sample_targets(self, objective: str, classes: torch.Tensor) -> list[torch.Tensor]:
        """Targets drawn per impression from the aimed class's Gaussians (global RNG, on the stats' device)."""
        means, stds = self.statistics(objective)
        index = classes.to(means[0].device)
        return [m[index] + s[index] * torch.randn(len(index), m.shape[1], device=m.device) for m, s in zip(means, stds)]


def unknown_objective(objective: str) -> str:
    return str(unknown("--objective", objective, OBJECTIVES))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def record(
    run_dir: Path, role: str, model: nn.Module, train: ImageSet, info: DatasetInfo, device: torch.device,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Read the training split once (eval mode) and write ``run_dir/metadata.safetensors``.

    Returns the listing ``run.json`` keeps under ``metadata``.
    """
    if not hasattr(model, "forward_features"):
        raise KDError(f"{model.spec.arch} has no block groups to record")
    model.eval()
    num_classes = model.spec.num_classes
    loader = DeviceLoader(train, batch_size, mean=info.mean, std=info.std, device=device, shuffle=False,
                          drop_last=False)
    sample = next(iter(loader.epoch(0)))[0]
    blocks = connectivity(model, sample)
    sizes = [u.shape[1] for u in layer_units(model, sample[:1])]
    all_basis = spectral_basis(_block_graph(blocks, sizes)).to(device)
    pair_basis = [spectral_basis(pair_graph(b)).to(device) for b in blocks]

    sums: dict[str, list[torch.Tensor]] = {}

    def accumulate(name: str, values: list[torch.Tensor], labels: torch.Tensor) -> None:
        one_hot = F.one_hot(labels, num_classes).double()
        stats = []
        for v in values:
            v = v.double()
            stats += [one_hot.t() @ v, one_hot.t() @ (v * v)]
        if name not in sums:
            sums[name] = stats
        else:
            sums[name] = [a + b for a, b in zip(sums[name], stats)]

    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for images, labels in loader.epoch(0):
        units = layer_units(model, images)
        counts += torch.bincount(labels, minlength=num_classes).double()
        accumulate("layer", units, labels)
        accumulate("all", [torch.cat(units, 1) @ all_basis], labels)
        accumulate("pair", [torch.cat([units[i], units[i + 1]], 1) @ b for i, b in enumerate(pair_basis)], labels)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise KDError(f"the training split has no sample of class(es) {missing[:5]}; cannot record their statistics")

    tensors: dict[str, torch.Tensor] = {"class_count": counts.float()}
    for name, stats in sums.items():
        for i in range(0, len(stats), 2):
            mean = stats[i] / counts[:, None]
            var = (stats[i + 1] / counts[:, None] - mean * mean).clamp_min(0)
            tensors[f"{name}{i // 2}.mean"] = mean.float()
            tensors[f"{name}{i // 2}.std"] = var.sqrt().float()
    tensors["all0.basis"] = all_basis
    for i, b in enumerate(pair_basis):
        tensors[f"pair{i}.basis"] = b
    weights_file = run_dir / checkpoint.read_run(run_dir)["roles"][role]["file"]
    description = {
        "kind": "lopes-metadata",
        "role": role,
        "teacher_sha256": _file_sha256(weights_file),
        "layers": sizes,
        "spectral_fraction": SPECTRAL_FRACTION,
        "objectives": list(OBJECTIVES),
        "train_samples": len(train),
        "dataset": info.name,
    }
    path = run_dir / METADATA_FILE
    checkpoint.save_tensors(
        path, tensors, {"kd_format": checkpoint.FORMAT_VERSION, "metadata": json.dumps(description)}
    )
    return {
        "file": METADATA_FILE,
        "bytes": path.stat().st_size,
        **{k: description[k] for k in ("layers", "objectives", "train_samples")},
    }


def load(run_ref: str) -> Metadata:
    """The metadata of a teacher run; a run without it gets the command that adds it."""
    run_dir, role, info = checkpoint.resolve_role(run_ref)
    path = run_dir / METADATA_FILE
    if not path.is_file():
        raise KDError(
            f"teacher run {str(run_dir)!r} has no activation metadata (Lopes et al. need it); "
            f"add it with: kd record-metadata --teacher {run_dir}"
        )
    tensors, raw = checkpoint.load_tensors(path)
    try:
        description = json.loads(raw["metadata"])
        layers = len(description["layers"])
        weights_file = run_dir / info["roles"][description["role"]]["file"]
        result = Metadata(
            [tensors[f"layer{i}.mean"] for i in range(layers)],
            [tensors[f"layer{i}.std"] for i in range(layers)],
            tensors["all0.basis"],
            tensors["all0.mean"],
            tensors["all0.std"],
            [tensors[f"pair{i}.basis"] for i in range(layers - 1)],
            [tensors[f"pair{i}.mean"] for i in range(layers - 1)],
            [tensors[f"pair{i}.std"] for i in range(layers - 1)],
            tensors["class_count"],
            description,
        )
    except (KeyError, json.JSONDecodeError):
        raise KDError(
            f"{path} is not kd activation metadata; re-create it: kd record-metadata --teacher {run_dir}"
        ) from None
    if description["role"] == role and _file_sha256(weights_file) != description["teacher_sha256"]:
        raise KDError(
            f"{path} was recorded for other teacher weights; re-create it: kd record-metadata --teacher {run_dir}"
        )
    return result
