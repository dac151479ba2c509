"""Lopes, Fenu & Starner (2017) activation metadata: per-class statistics a teacher run keeps for data-free KD.

Recorded once, while the training data is still at hand (the Lopes method's ``record_teacher_statistics``
hook, which ``kd train-teacher`` calls at the end and ``kd record-metadata --teacher RUN`` on an older
run). Two variants, each in its own file so recording one never touches the other:

``pooled`` (``<run>/metadata.safetensors``; kd's own summary, the default):

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
generalisation so any kd model (LeNet, ResNets) gets a small graph. The official code's spectral
objectives are unfinished (its ``compute_graphwise_statistics`` never feeds its optimiser), so both
spectral objectives here are **kd's own construction**. A LeNet-5 MNIST teacher's file is about 0.7 MB.

``full`` (``<run>/metadata-full.safetensors``; the official code's statistics, ``procedures/compute_stats.py``
of github.com/iRapha/replayed_distillation), for small networks:

* **layers**: the full-resolution *pre-activation* output of every convolution and linear layer of the
  stages, in execution order, then the logits. For LeNet-5 these are the official code's five tensors
  (conv1, conv2, fc1, fc2 before their ReLU, and the logits; at the official 32 px input conv1 is
  6×28×28 = 4,704 values and conv2 16×10×10 = 1,600; at kd's 28 px 3,456 and 1,024). A layer over
  :data:`MAX_FULL_UNITS` units is refused (its per-class covariance would not fit in sane memory);
* per class, the **mean** and a **square-root factor** ``L`` of the population covariance
  ``Σ`` (the official code keeps the dense ``Σ`` in float64 numpy arrays, no low-rank or block
  approximation; kd keeps its dense factor in float32): ``L`` is the
  Cholesky factor of ``Σ + ε·mean(diag Σ)·I`` with jitter ``ε`` = :data:`JITTER` (raised ×10 until the
  factorisation succeeds; the value used is recorded). Conv maps are linear images of the input
  before their ReLU, so their covariance has rank at most the number of pixels and needs the jitter.
  Stored in float32 as the packed lower triangle (``[K, D(D+1)/2]``; ~24 MB per class for kd's 28 px
  LeNet-5 conv1, ~260 MB for the whole 28 px LeNet-5 file);
* targets are sampled ``μ_c + L_c z`` with ``z ~ N(0, I)``: correlated, with covariance ``Σ_c``.
  The official ``sample_from_stats`` draws ``μ_c + z Σ_c`` (the covariance itself as the factor, so
  its samples' covariance is ``Σ_c²``) and falls back to independent per-unit Gaussians where a
  covariance "is not positive definite (like conv1 in lenet)"; kd uses a true square root so the
  samples have the recorded covariance, and the jitter in place of the fallback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import checkpoint
from kdcli.data.base import DatasetInfo, ImageSet
from kdcli.data.loader import DeviceLoader
from kdcli.errors import KDError, unknown

METADATA_FILE = "metadata.safetensors"
FULL_METADATA_FILE = "metadata-full.safetensors"
OBJECTIVES = ("top_layer", "all_layers", "spectral_all_layers", "spectral_layer_pairs")
SPECTRAL_OBJECTIVES = ("spectral_all_layers", "spectral_layer_pairs")
VARIANTS = ("pooled", "full")
DEFAULT_VARIANT = "pooled"
#: Version of the metadata files' layout. 1 (no ``format``/``statistics`` fields) = pooled only.
FORMAT = 2
#: ``run.json`` key and file of each variant.
RUN_KEYS = {"pooled": "metadata", "full": "metadata_full"}
FILES = {"pooled": METADATA_FILE, "full": FULL_METADATA_FILE}
#: Largest layer the full variant keeps a covariance of: a ``[D, D]`` float64 accumulator is 302 MB and
#: each class's float32 factor 151 MB at 6,144 units (LeNet-5's conv1 at 32 px with 'same' padding).
MAX_FULL_UNITS = 6144
#: Relative jitter added to each covariance's diagonal before its Cholesky factorisation.
JITTER = 1e-5
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
    variant: str = "pooled"

    def units(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """The pooled units of one forward pass (:func:`layer_units`)."""
        return layer_units(model, x)

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
    return _write(run_dir, role, "pooled", tensors, {
        "layers": sizes,
        "spectral_fraction": SPECTRAL_FRACTION,
        "objectives": list(OBJECTIVES),
        "train_samples": len(train),
        "dataset": info.name,
    })


def _write(run_dir: Path, role: str, variant: str, tensors: dict[str, torch.Tensor],
           facts: dict[str, Any]) -> dict[str, Any]:
    """Write one variant's statistics file (its description in the safetensors metadata) and return the
    ``run.json`` entry that lists it."""
    weights_file = run_dir / checkpoint.read_run(run_dir)["roles"][role]["file"]
    description = {"kind": "lopes-metadata", "format": FORMAT, "statistics": variant, "role": role,
                   "teacher_sha256": _file_sha256(weights_file), **facts}
    path = writable(run_dir, variant)
    checkpoint.save_tensors(
        path, tensors, {"kd_format": checkpoint.FORMAT_VERSION, "metadata": json.dumps(description)}
    )
    return {
        "file": FILES[variant],
        "statistics": variant,
        "format": FORMAT,
        "bytes": path.stat().st_size,
        **{k: description[k] for k in ("layers", "objectives", "train_samples")},
    }


def load(run_ref: str, variant: str = "pooled") -> "Metadata | FullMetadata":
    """The ``variant`` statistics of a teacher run; a run without them gets the command that adds them.

    A file written before variants existed (no ``statistics`` field, format 1) holds pooled statistics.
    """
    check_variant(variant)
    if variant == "full":
        return load_full(run_ref)

    def build(tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> Metadata:
        layers = len(description["layers"])
        return Metadata(
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

    return _read(run_ref, "pooled", build, missing="activation metadata (Lopes et al. need it); add it with",
                 foreign="kd activation metadata; re-create it")


def _read(run_ref: str, variant: str, build: Callable[[dict[str, torch.Tensor], dict[str, Any]], Any], *,
          missing: str, foreign: str) -> Any:
    """Read one variant's statistics file of a teacher run (``build`` makes the object from its tensors and
    description). A missing file, a file of another kind or variant (one without a ``statistics`` field is
    pooled), and statistics recorded for other weights each get the ``kd record-metadata`` command that
    makes them again."""
    run_dir, role, info = checkpoint.resolve_role(run_ref)
    path = run_dir / FILES[variant]
    again = f"kd record-metadata --teacher {run_dir}" + (" --statistics full" if variant == "full" else "")
    if not path.is_file():
        raise KDError(f"teacher run {str(run_dir)!r} has no {missing}: {again}")
    tensors, raw = checkpoint.load_tensors(path)
    try:
        description = json.loads(raw["metadata"])
        if description.get("statistics", "pooled") != variant:
            raise KeyError("statistics")
        weights_file = run_dir / info["roles"][description["role"]]["file"]
        result = build(tensors, description)
    except (KeyError, json.JSONDecodeError):
        raise KDError(f"{path} is not {foreign}: {again}") from None
    if description["role"] == role and _file_sha256(weights_file) != description["teacher_sha256"]:
        raise KDError(f"{path} was recorded for other teacher weights; re-create it: {again}")
    return result


# ---------------------------------------------------------------------------------------------
# Variants, files


def check_variant(variant: str) -> str:
    """``variant`` if it names a statistics variant, else the one-line error listing them."""
    if variant not in VARIANTS:
        raise unknown("statistics variant", variant, VARIANTS)
    return variant


def writable(run_dir: Path, variant: str) -> Path:
    """The variant's file, refusing to replace a file of that name that kd did not write.

    A run still being written (a teacher's training, or its ``--resume`` after a kill between this file's
    write and the ``run.json`` that lists it) owns its directory, claimed before any work: the file there
    is its own. A finished run's ``run.json`` lists every file kd wrote (``kd record-metadata``)."""
    path = run_dir / FILES[variant]
    info = checkpoint.read_run(run_dir)
    if path.exists() and info.get("status") == "complete" and path.name not in checkpoint.known_entries(info):
        raise KDError(f"{path} exists and kd did not write it (run.json does not list it); move it away first")
    return path


# ---------------------------------------------------------------------------------------------
# The full variant: the official code's full-resolution pre-activation maps and class covariances


def full_layers(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """One forward pass's pre-activation outputs of every convolution and linear layer of the stem and
    stages (execution order), then the logits: ``[B, D_l]`` each (the official code's matched tensors)."""
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for part in (model.stem, *model.stages) for m in part.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [t.float().flatten(1) for t in captured] + [logits.float()]


def sample_correlated(mean: torch.Tensor, factor: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Targets ``μ_c + L_c z``, ``z ~ N(0, I)`` (global RNG), one row per entry of ``classes``.

    Args:
        mean: ``[K, D]`` per-class means.
        factor: ``[K, D, D]`` per-class square-root factors (``L_c L_cᵀ = Σ_c``).
        classes: ``[N]`` class of each row.

    Returns:
        ``[N, D]``; rows of class ``c`` have mean ``μ_c`` and covariance ``Σ_c``.
    """
    index = classes.to(mean.device)
    z = torch.randn(len(index), mean.shape[1], device=mean.device)
    out = mean[index].clone()
    for c in index.unique().tolist():
        rows = (index == c).nonzero().flatten()
        out[rows] += z[rows] @ factor[c].t()
    return out


def covariance_factor(cov: torch.Tensor, jitter: float = JITTER) -> tuple[torch.Tensor, float]:
    """Cholesky factor of ``cov + ε·mean(diag)·I`` (float64), ``ε`` from ``jitter`` ×10 until it factorises.

    Returns the factor and the ``ε`` used."""
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    eps = jitter
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(cov + (eps * scale) * eye)
        if int(info) == 0:
            return factor, eps
        eps *= 10
    raise KDError(f"a class covariance did not factorise even with jitter {eps / 10:g}; record pooled statistics")


@dataclass
class FullMetadata:
    """Per-class means and covariance factors of every pre-activation layer (see the module docstring)."""

    mean: list[torch.Tensor]  # [K, D_l] per layer (last = logits)
    factor: list[torch.Tensor]  # [K, D_l, D_l] lower-triangular, L Lᵀ = Σ + jitter
    class_count: torch.Tensor
    description: dict[str, Any]
    variant: str = "full"

    def to(self, device: torch.device | str) -> "FullMetadata":
        return FullMetadata([t.to(device) for t in self.mean], [t.to(device) for t in self.factor],
                            self.class_count.to(device), self.description)

    def units(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        return full_layers(model, x)

    def blocks(self, objective: str, units: list[torch.Tensor]) -> list[torch.Tensor]:
        """What an objective compares: the logits (``top_layer``) or every layer (``all_layers``)."""
        check_full_objective(objective)
        return [units[-1]] if objective == "top_layer" else units

    def sample_targets(self, objective: str, classes: torch.Tensor) -> list[torch.Tensor]:
        """Correlated targets per impression from the aimed class's Gaussian (:func:`sample_correlated`)."""
        check_full_objective(objective)
        layers = [len(self.mean) - 1] if objective == "top_layer" else range(len(self.mean))
        return [sample_correlated(self.mean[i], self.factor[i], classes) for i in layers]


def check_full_objective(objective: str) -> None:
    if objective in SPECTRAL_OBJECTIVES:
        raise KDError(f"--objective {objective} is kd's own construction over pooled units; "
                      "use it with statistics=pooled (full statistics: top_layer or all_layers)")
    if objective not in OBJECTIVES:
        raise KDError(unknown_objective(objective))


@torch.no_grad()
def record_full(
    run_dir: Path, role: str, model: nn.Module, train: ImageSet, info: DatasetInfo, device: torch.device,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Read the training split once (eval mode, class by class) and write ``run_dir/metadata-full.safetensors``.

    Each class's covariance is accumulated in float64 around a shift (its first batch's mean) so the
    sums do not cancel, then factorised (:func:`covariance_factor`) and kept in float32. Returns the
    listing ``run.json`` keeps under ``metadata_full``.
    """
    if not hasattr(model, "stages"):
        raise KDError(f"{model.spec.arch} has no stages to record")
    model.eval()
    num_classes = model.spec.num_classes
    probe = DeviceLoader(ImageSet(train.images[:1], train.labels[:1]), 1, mean=info.mean, std=info.std,
                         device=device, shuffle=False, drop_last=False)
    shapes = _pre_activation_shapes(model, next(iter(probe.epoch(0)))[0])
    sizes = [math.prod(shape) for shape in shapes]
    for layer, (shape, size) in enumerate(zip(shapes, sizes)):
        if size > MAX_FULL_UNITS:
            raise KDError(f"full statistics keep a covariance per class of every layer, and {model.spec.arch}'s "
                          f"layer {layer} ({'x'.join(map(str, shape))}) has {size} units, over the limit of "
                          f"{MAX_FULL_UNITS}: use statistics=pooled")
    means: list[list[torch.Tensor]] = [[] for _ in sizes]
    factors: list[list[torch.Tensor]] = [[] for _ in sizes]
    jitters: list[list[float]] = [[] for _ in sizes]
    counts = torch.bincount(train.labels, minlength=num_classes)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise KDError(f"the training split has no sample of class(es) {missing[:5]}; cannot record their statistics")
    for c in range(num_classes):
        rows = (train.labels == c).nonzero().flatten()
        loader = DeviceLoader(ImageSet(train.images[rows], train.labels[rows]), batch_size, mean=info.mean,
                              std=info.std, device=device, shuffle=False, drop_last=False)
        shift: list[torch.Tensor] = []
        first: list[torch.Tensor] = []
        second: list[torch.Tensor] = []
        for images, _ in loader.epoch(0):
            for i, value in enumerate(full_layers(model, images)):
                if len(shift) <= i:
                    shift.append(value.mean(0))
                    first.append(torch.zeros(sizes[i], dtype=torch.float64, device=device))
                    second.append(torch.zeros(sizes[i], sizes[i], dtype=torch.float64, device=device))
                centred = value - shift[i]
                first[i] += centred.sum(0).double()
                second[i] += (centred.t() @ centred).double()
        n = float(len(rows))
        for i in range(len(sizes)):
            offset = first[i] / n
            cov = second[i] / n - torch.outer(offset, offset)  # population covariance, as the official code
            factor, eps = covariance_factor(0.5 * (cov + cov.t()))
            means[i].append((shift[i].double() + offset).float().cpu())
            lower_rows, lower_cols = torch.tril_indices(sizes[i], sizes[i], device=factor.device)
            factors[i].append(factor[lower_rows, lower_cols].float().cpu())  # packed lower triangle
            jitters[i].append(eps)
        del first, second
    tensors: dict[str, torch.Tensor] = {"class_count": counts.float()}
    for i in range(len(sizes)):
        tensors[f"full{i}.mean"] = torch.stack(means[i])
        tensors[f"full{i}.factor_tril"] = torch.stack(factors[i])
    return _write(run_dir, role, "full", tensors, {
        "layers": sizes,
        "shapes": [list(shape) for shape in shapes],
        "factor": "cholesky, lower triangle packed row by row (torch.tril_indices)",
        "jitter": JITTER,
        "jitter_used": jitters,
        "objectives": ["top_layer", "all_layers"],
        "train_samples": len(train),
        "dataset": info.name,
    })


def _pre_activation_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    captured: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(tuple(out.shape[1:])))
             for part in (model.stem, *model.stages) for m in part.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured + [tuple(logits.shape[1:])]


def _unpack_lower(packed: torch.Tensor, size: int) -> torch.Tensor:
    """``[K, D(D+1)/2]`` packed lower triangles → ``[K, D, D]`` lower-triangular matrices."""
    rows, cols = torch.tril_indices(size, size)
    if packed.dim() != 2 or packed.shape[1] != len(rows):
        raise KeyError("factor_tril")
    full = torch.zeros(packed.shape[0], size, size, dtype=packed.dtype)
    full[:, rows, cols] = packed
    return full


def load_full(run_ref: str) -> FullMetadata:
    """The full statistics of a teacher run; a run without them gets the command that adds them."""

    def build(tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> FullMetadata:
        layers = len(description["layers"])
        return FullMetadata([tensors[f"full{i}.mean"] for i in range(layers)],
                            [_unpack_lower(tensors[f"full{i}.factor_tril"], size)
                             for i, size in enumerate(description["layers"])],
                            tensors["class_count"], description)

    return _read(run_ref, "full", build,
                 missing="full activation statistics (Lopes et al. with statistics=full need them); add them with",
                 foreign="kd's full activation statistics; re-create them")
