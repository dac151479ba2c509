"""Image classifiers by name: the model registry, ``create_model`` and rebuilding from a checkpoint spec.

Every registered model is a :class:`~kdcli.models.base.StagedNet` (stem → stages → pool → classifier)
that adapts to any input channels, image size (8×8 digits up to 32×32 CIFAR) and class count.
:func:`create_model` also builds models kd did not define (:mod:`kdcli.models.external`): your own
factory by import path (``my_pkg.nets:make_resnet``) and torchvision's classifiers (``tv:resnet18``).
What a model offers the methods beyond logits (stages, features, BatchNorm...) is :func:`model_provides`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from kdcli.errors import KDError
from kdcli.models import external
from kdcli.models.base import Features, ModelSpec, StagedNet
from kdcli.registry import Registry

__all__ = [
    "MODELS",
    "Features",
    "ModelSpec",
    "StagedNet",
    "check_model_name",
    "classifier_layer",
    "count_parameters",
    "multiply_accumulates",
    "create_model",
    "model_from_spec",
    "model_provides",
    "probe_model",
]

ModelBuilder = Callable[..., StagedNet]

MODELS: Registry[ModelBuilder] = Registry("model")

# Arguments every builder takes; everything else a builder accepts is a user-settable option.
_GEOMETRY = ("in_channels", "image_size", "num_classes")


def _check_geometry(in_channels: int, image_size: int, num_classes: int) -> None:
    for label, value in zip(_GEOMETRY, (in_channels, image_size, num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KDError(f"model {label} must be a positive integer, got {value!r}.")


def _check_options(name: str, builder: ModelBuilder, captured: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Reject options the builder does not take, or that the name already fixes (``depth`` of ``wrn-40-2``)."""
    fixed = sorted(set(options) & set(captured))
    if fixed:
        raise KDError(f"model option {fixed[0]!r} is set by the name {name!r}; change the name instead.")
    parameters = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [p for p in parameters if p not in _GEOMETRY and p not in captured]
    for option in options:
        if option not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            raise KDError(f"model {name!r} has no option {option!r} (its options: {valid}).")


def check_model_name(name: str, model_args: Mapping[str, Any] | None = None) -> None:
    """Refuse an unknown model name, or model arguments the dataset sets, before any data is read (an import
    path is checked, not imported)."""
    clash = sorted(set(model_args or {}) & set(external.GEOMETRY_ALIASES))
    if clash:
        raise KDError(f"model argument {clash[0]!r} is set by the dataset; drop it from --model-arg")
    if external.is_external(name):
        external.check_name(name)
    else:
        MODELS.resolve(name)


def create_model(name: str, in_channels: int, image_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model ``name`` for images of ``in_channels × image_size × image_size``.

    Args:
        name: an exact registry name (``resnet32``), a family member (``wrn-40-2``, ``mlp-1200-1200``),
            a torchvision classifier (``tv:resnet18``) or an import path (``my_pkg.nets:make_resnet``,
            imported only if allowed: see :mod:`kdcli.models.external`).
        in_channels: input channels (1 for grayscale, 3 for colour).
        image_size: input height = width, in pixels (8 for digits through 32 for CIFAR).
        num_classes: number of output logits.
        **kwargs: model options such as ``dropout``; recorded in ``model.spec.kwargs``.

    Returns:
        The model, with ``model.spec`` holding exactly what rebuilds it (see :func:`model_from_spec`).

    Raises:
        KDError: unknown name (with suggestions), an option the model does not take, bad sizes, a
            module nobody allowed.
    """
    _check_geometry(in_channels, image_size, num_classes)
    if external.is_external(name):
        model = external.create(name, in_channels, image_size, num_classes, kwargs)
        model.spec = ModelSpec(arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                               kwargs=dict(kwargs))
        return model
    entry, captured = MODELS.resolve(name)
    _check_options(name, entry.builder, captured, kwargs)
    model = entry.builder(
        in_channels=in_channels, image_size=image_size, num_classes=num_classes, **captured, **kwargs
    )
    model.spec = ModelSpec(
        arch=name, in_channels=in_channels, image_size=image_size, num_classes=num_classes, kwargs=dict(kwargs)
    )
    return model


def model_from_spec(spec: ModelSpec | Mapping[str, Any]) -> nn.Module:
    """Rebuild a model (freshly initialised) from a :class:`ModelSpec` or its ``to_dict()`` form.

    Loading the matching ``state_dict`` afterwards reproduces the original model exactly.
    """
    if isinstance(spec, ModelSpec):
        spec = spec.to_dict()
    try:
        arch, in_channels = spec["arch"], spec["in_channels"]
        image_size, num_classes = spec["image_size"], spec["num_classes"]
    except KeyError as missing:
        raise KDError(f"model spec is missing {missing.args[0]!r}; the checkpoint metadata is incomplete.") from None
    return create_model(arch, in_channels, image_size, num_classes, **dict(spec.get("kwargs") or {}))


def probe_model(name: str, in_channels: int, image_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """``create_model`` off the run's random state: a model built only to be looked at."""
    with torch.random.fork_rng(devices=[]):
        return create_model(name, in_channels, image_size, num_classes, **kwargs)


def classifier_layer(model: nn.Module) -> nn.Linear | None:
    """The final ``nn.Linear`` that gives the logits: a StagedNet's ``classifier``, else the last Linear whose
    outputs are the classes (torchvision's ``fc`` or ``classifier[-1]``); ``None`` when there is none."""
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        return model.classifier
    classes = getattr(getattr(model, "spec", None), "num_classes", None)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears and (classes is None or linears[-1].out_features == classes) else None


def model_provides(model: nn.Module) -> set[str]:
    """What ``model`` offers the methods beyond logits (the names :mod:`kdcli.methods.base` declares needs with):

    * ``stages``, ``groups``, ``features``: it is a :class:`StagedNet` (split into stages; stage outputs
      as attention-map groups; the penultimate embedding and the declared feature vector, all from
      ``forward_features``);
    * ``batchnorm``: it has BatchNorm layers with running statistics;
    * ``classifier``: a final ``nn.Linear`` gives the logits (:func:`classifier_layer`).
    """
    offers = {"logits"}
    if isinstance(model, StagedNet):
        offers |= {"stages", "groups", "features"}
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()):
        offers.add("batchnorm")
    if classifier_layer(model) is not None:
        offers.add("classifier")
    return offers


@torch.no_grad()
def multiply_accumulates(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one image (its convolutions and linear layers).

    Counted on a probe image in eval mode, off the global RNG; the model's mode is restored.
    """
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * (module.in_channels // module.groups) * module.weight[0, 0].numel()
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features
    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            device = next(iter(model.parameters()), torch.empty(0)).device
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Imported for their side effect: each module registers its builders in MODELS.
# after resnet_cifar and wrn, so `kd list` shows the bottleneck families after the basic-block ones
from kdcli.models import (  # noqa: E402, F401
    alexnet,
    branched,  # noqa: E402, F401
    lenet,
    mlp,
    resnet_bottleneck,  # noqa: E402, F401
    resnet_cifar,
    wrn,
)
