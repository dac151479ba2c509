"""K models of one architecture run as one network: one kernel per layer for all K, not K.

Online methods train K peers (DML, ``independent``, codistillation's copies) or K branch bodies
(ONE, CL, OKDDip) that share an architecture. :class:`FusedModels` holds them as one network in
the *peer-major channel layout*: a feature map ``[B, K·C, H, W]`` (or a vector ``[B, K·D]``) whose
channel block k is model k's. In that layout every layer kd's models use has an exact fused form:

* ``Conv2d(C→O, groups=g)`` becomes ``Conv2d(K·C→K·O, groups=K·g)``: a grouped convolution whose
  group block k is model k's convolution;
* ``Linear(D→O)`` becomes :class:`GroupedLinear`: one batched matrix multiply over the K models;
* ``BatchNorm(C)`` becomes ``BatchNorm(K·C)``: per-channel statistics are already per-model, so
  each model keeps its own running mean and variance;
* everything elementwise or per-channel (ReLU, pooling, dropout, residual sums, flatten, global
  average pooling) works on the layout unchanged.

Each fused tensor is the K models' tensors concatenated along dim 0, so model k is a slice of it:
:meth:`FusedModels.member` returns it as a plain model of the architecture, and ``state_dict()``
has exactly the keys of an ``nn.ModuleList`` of the K models (``0.conv.weight``, ``1.conv.weight``,
...): checkpoints, exports and exchanges see the same tensors fused or not. Fusion starts from the
K models built as the unfused path builds them, so the same seed gives the same K initial models.

Why this design and not ``torch.func.stack_module_state`` + ``functional_call`` under ``vmap``:
vmap's convolution rule turns a batch of weights into the same grouped convolution, but every layer
first moves the model dimension into the channels and back out (copies each way, in the backward
too), and BatchNorm in training mode under vmap needs its buffers batched by hand. The persistent
layout pays the reshapes once per network, keeps every layer an ordinary module (so CUDA graphs,
channels_last and ``state_dict`` work unchanged), and was the faster of the two at every K measured.
``scripts/bench.py --fuse-designs 1,2,4,8`` (LeNet-5, batch 128, one thread of a 2-core AMD EPYC,
CPU time per training step, median of 5; docs/benchmarks.md): K = 2: separate 15.1 ms, grouped
10.4 ms, vmap 17.5 ms; K = 4: 30.9, 20.9, 33.9 ms; K = 8: 56.2, 46.6, 74.3 ms.

On a CPU the fused activations of many models leave the per-core cache (LeNet-5's first layer is
1.8 MB per model at batch 128) and the elementwise layers turn memory-bound, so there
:func:`fuse_models` is given ``group`` (:data:`kdcli.device.CPU_FUSE_GROUP`) and K models run as
networks of at most that many; on CUDA one network holds them all.

A layer this module does not know how to fuse (a LayerNorm, an attention block, a custom
parameterised module), or a model whose forward mixes channels across the layout (``torch.cat``
along channels), makes :func:`fuse_models` raise :class:`NotFusable`: :func:`fuse_models` checks
the fused network against the K models on a probe input before it is used.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["FusedModels", "GroupedLinear", "NotFusable", "fuse_models"]


class NotFusable(ValueError):
    """The models cannot run as one fused network (different architectures, or a layer without a fused form)."""


class GroupedLinear(nn.Module):
    """K independent ``Linear(in_features → out_features)`` layers on the peer-major layout.

    ``[..., K·in] → [..., K·out]``. ``weight`` is ``[K·out, in]`` (the K Linear weights stacked, so
    model k's is rows ``k·out .. (k+1)·out``), ``bias`` ``[K·out]``.
    """

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(groups * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, d, o = self.groups, self.in_features, self.out_features
        lead = x.shape[:-1]
        inputs = x.reshape(-1, k, d).transpose(0, 1)  # [K, N, in]
        weight = self.weight.view(k, o, d).transpose(1, 2)  # [K, in, out]
        if self.bias is None:
            out = torch.bmm(inputs, weight)
        else:
            out = torch.baddbmm(self.bias.view(k, 1, o), inputs, weight)
        return out.transpose(0, 1).reshape(*lead, k * o)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out_features={self.out_features}"


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _own_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in module._parameters.values()) or any(
        t is not None for t in module._buffers.values()
    )


@torch.no_grad()
def _fuse_layer(layers: list[nn.Module]) -> nn.Module:
    """One layer of K models in its fused form (see the module docstring); raises NotFusable."""
    first = layers[0]
    k = len(layers)
    if type(first) is nn.Conv2d:
        if first.padding_mode != "zeros":
            raise NotFusable(f"Conv2d with padding_mode={first.padding_mode!r}")
        fused: nn.Module = nn.Conv2d(
            k * first.in_channels, k * first.out_channels, first.kernel_size, first.stride, first.padding,
            first.dilation, groups=k * first.groups, bias=first.bias is not None,
        )
    elif type(first) is nn.Linear:
        fused = GroupedLinear(k, first.in_features, first.out_features, bias=first.bias is not None)
    elif type(first) in _NORMS:
        fused = type(first)(k * first.num_features, eps=first.eps, momentum=first.momentum, affine=first.affine,
                            track_running_stats=first.track_running_stats)
    else:
        raise NotFusable(f"no fused form for layer {type(first).__name__}")
    for name, tensor in fused.named_parameters(recurse=False):
        tensor.copy_(torch.cat([getattr(layer, name) for layer in layers]))
    for name, buffer in fused.named_buffers(recurse=False):
        parts = [getattr(layer, name) for layer in layers]
        buffer.copy_(parts[0] if buffer.dim() == 0 else torch.cat(parts))
    reference = next(iter([*first.parameters(recurse=False), *first.buffers(recurse=False)]))
    return fused.to(device=reference.device).train(first.training)


def _check_same_architecture(models: list[nn.Module]) -> None:
    reference = [(name, tuple(t.shape), t.dtype) for name, t in models[0].state_dict().items()]
    for model in models[1:]:
        if type(model) is not type(models[0]) or [
            (name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()
        ] != reference:
            raise NotFusable("the models differ in architecture")


class FusedModels(nn.Module):
    """K models of one architecture as one network, or as a few (see the module docstring).

    ``forward(x)`` runs every model on the same input ``x [B, ...]``; ``forward(xs, per_model=True)``
    runs model k on ``xs[k]`` (``xs [K, B, ...]``). Either returns ``[K, B, ...]``: model k's output
    at index k. The models are fused in consecutive groups (``sizes``, one fused network each; one
    group unless :func:`fuse_models` is given ``group``). Build with :func:`fuse_models`.
    """

    def __init__(self, nets: list[nn.Module], sizes: list[int], template: nn.Module) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.sizes = list(sizes)
        self.count = sum(sizes)
        # A structural copy of one model, kept outside the module tree (no state-dict keys, not moved
        # by .to()): the skeleton member() fills with model k's slices.
        self._template = [template]
        self.register_state_dict_post_hook(_split_state)
        self.register_load_state_dict_pre_hook(_join_state)

    def __len__(self) -> int:
        return self.count

    def forward(self, x: torch.Tensor, per_model: bool = False) -> torch.Tensor:
        if per_model and x.shape[0] != self.count:
            raise ValueError(f"per-model input must have {self.count} entries in dim 0, got {tuple(x.shape)}")
        outputs, start = [], 0
        for net, size in zip(self.nets, self.sizes):
            outputs.append(_run_group(net, x[start:start + size] if per_model else x, size, per_model))
            start += size
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _locate(self, index: int) -> tuple[int, int]:
        """(group, index within the group) of model ``index``."""
        if not 0 <= index < self.count:
            raise IndexError(f"model {index} of {self.count}")
        for group, size in enumerate(self.sizes):
            if index < size:
                return group, index
            index -= size
        raise IndexError(index)  # unreachable: the sizes add up to count

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s state dict: views into the fused tensors."""
        group, local = self._locate(index)
        size = self.sizes[group]
        return {name: _slice(t, local, size) for name, t in self.nets[group].state_dict().items()}

    @torch.no_grad()
    def member(self, index: int) -> nn.Module:
        """Model ``index`` as a plain model of the architecture: a copy, on the fused network's device."""
        state = self.member_state(index)
        model = copy.deepcopy(self._template[0])
        model.load_state_dict({name: t.detach().clone() for name, t in state.items()})
        reference = next(iter(self.nets.parameters()), None)
        if reference is not None:
            model.to(reference.device)
        return model.train(self.training)

    def members(self) -> list[nn.Module]:
        """Every model, as :meth:`member` copies."""
        return [self.member(i) for i in range(self.count)]


def _run_group(net: nn.Module, x: torch.Tensor, k: int, per_model: bool) -> torch.Tensor:
    """One fused network over its k models: input into the peer-major layout, output back to ``[k, B, ...]``."""
    if per_model:
        h = x.transpose(0, 1).flatten(1, 2)
    else:
        h = x.repeat(1, k, *([1] * (x.dim() - 2)))
    if x.dim() >= 4 and x.is_contiguous(memory_format=torch.channels_last) and h.dim() == 4:
        h = h.contiguous(memory_format=torch.channels_last)
    return net(h).unflatten(1, (k, -1)).transpose(0, 1)


def _slice(tensor: torch.Tensor, index: int, count: int) -> torch.Tensor:
    """Model ``index``'s part of a fused tensor; a shared scalar (BatchNorm's step count) is copied per model,
    so no two state-dict entries are one tensor (safetensors refuses that)."""
    return tensor.clone() if tensor.dim() == 0 else tensor.chunk(count)[index]


def _split_state(module: FusedModels, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: ``nets.<g>.<name>`` (fused) → ``<k>.<name>`` per model, as views (so an in-place
    copy into a state-dict entry writes the fused tensor, like any module's state dict)."""
    first = 0
    for group, size in enumerate(module.sizes):
        fused_prefix = f"{prefix}nets.{group}."
        names = [key for key in state if key.startswith(fused_prefix)]
        fused = {key[len(fused_prefix):]: state.pop(key) for key in names}
        for local in range(size):
            for name, tensor in fused.items():
                state[f"{prefix}{first + local}.{name}"] = _slice(tensor, local, size)
        first += size


def _join_state(module: FusedModels, state: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """load_state_dict pre-hook: per-model keys ``<k>.<name>`` → the fused ``nets.<g>.<name>`` (concatenated)."""
    first = 0
    for group, (net, size) in enumerate(zip(module.nets, module.sizes)):
        for name, target in net.state_dict().items():
            keys = [f"{prefix}{first + local}.{name}" for local in range(size)]
            if not all(key in state for key in keys):
                continue  # left for load_state_dict to report as missing
            parts = [state.pop(key) for key in keys]
            state[f"{prefix}nets.{group}.{name}"] = parts[0] if target.dim() == 0 else torch.cat(parts)
        first += size


def _fuse_tree(skeleton: nn.Module, models: list[nn.Module]) -> nn.Module:
    """Replace, in ``skeleton`` (a copy of models[0]), every layer that holds tensors by its fused form."""
    if _own_tensors(skeleton):
        return _fuse_layer(models)
    for name, child in list(skeleton.named_children()):
        setattr(skeleton, name, _fuse_tree(child, [getattr(m, name) for m in models]))
    return skeleton


@torch.no_grad()
def fuse_models(models: list[nn.Module], check: bool = True, probe: torch.Tensor | None = None,
                group: int | None = None) -> FusedModels:
    """The K ``models`` (one architecture) as one :class:`FusedModels`, holding copies of their tensors.

    ``group``: fuse at most this many models into one network (consecutive groups; default all K).
    With ``check`` (the default) the fused network must reproduce each model's output on a probe
    input (``probe``, else 2 random images of the models' ``spec``; eval mode, off the global RNG):
    a forward that mixes channels across models is refused. Raises :class:`NotFusable`.
    """
    if len(models) < 1:
        raise NotFusable("nothing to fuse")
    _check_same_architecture(models)
    step = len(models) if group is None else max(1, group)
    chunks = [models[i:i + step] for i in range(0, len(models), step)]
    template = copy.deepcopy(models[0]).cpu()
    nets = [_fuse_tree(copy.deepcopy(chunk[0]), chunk) for chunk in chunks]
    fused = FusedModels(nets, [len(chunk) for chunk in chunks], template).train(models[0].training)
    if check:
        _check_outputs(fused, models, probe if probe is not None else _probe_input(models))
    return fused


def _probe_input(models: list[nn.Module]) -> torch.Tensor | None:
    """A 2-sample random input of the shape the first layer reads (a model spec, or the first conv/linear)."""
    spec = getattr(models[0], "spec", None)
    generator = torch.Generator().manual_seed(0)
    first = next((m for m in models[0].modules() if isinstance(m, (nn.Conv2d, nn.Linear, *_NORMS))), None)
    if spec is not None:
        shape: tuple[int, ...] = (2, spec.in_channels, spec.image_size, spec.image_size)
    elif isinstance(first, nn.Conv2d):
        shape = (2, first.in_channels, 8, 8)
    elif isinstance(first, nn.Linear):
        shape = (2, first.in_features)
    else:
        return None
    device = next(iter(models[0].parameters())).device
    return torch.randn(shape, generator=generator).to(device)


def _check_outputs(fused: FusedModels, models: list[nn.Module], probe: torch.Tensor | None) -> None:
    if probe is None:
        return
    states = [m.training for m in models]
    try:
        with torch.random.fork_rng(devices=[]):
            for m in models:
                m.eval()
            fused.eval()
            try:
                expected = torch.stack([m(probe) for m in models])
            except RuntimeError:
                return  # the probe's shape is not the models' input: nothing to compare against
            got = fused(probe)
    except RuntimeError as err:
        raise NotFusable(f"the fused network does not run ({str(err).splitlines()[0]})") from None
    finally:
        for m, state in zip(models, states):
            m.train(state)
    fused.train(states[0])
    scale = expected.abs().max().clamp_min(1e-6)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(scale)):
        raise NotFusable("the fused network does not reproduce the models (a layer mixes models' channels)")
