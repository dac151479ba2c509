"""Models kd did not define: your own factory by import path (``my_pkg.nets:make_resnet``) and torchvision's
classification models by name (``tv:resnet18``).

Both are built by :func:`kdcli.models.create_model` like every registered model, so every command and
every method can use them, and a checkpoint records the name and the model arguments (``--model-arg``)
in its spec, so a run rebuilds them alone.

A factory (a function or a class) is called with the dataset's geometry under the names its signature
takes: ``num_classes``, ``in_channels`` (or ``in_chans``), ``image_size`` (or ``img_size``); a factory with
``**kwargs`` gets the three canonical names. Every other argument comes from ``--model-arg key=value``.
The model must return logits ``[batch, num_classes]``: kd checks it once, on two blank images.

Safety: an import path is code. kd imports a module only when the user named it: on the command line
(``--model``, ``--models``, ``--teacher-model``), in a ``--config`` file they passed, in a Python call
(:mod:`kdcli.api`), with ``--allow-module MODULE``, or in ``$KD_ALLOW_MODULES`` (comma-separated; a
package allows its submodules). A run directory names its models' import paths, but reading one back
(``kd evaluate``, ``--teacher``, ``--resume``) never allows anything by itself: a run from elsewhere
cannot make kd import ``os:system``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from kdcli.errors import KDError, unknown

TORCHVISION_PREFIX = "tv:"
ALLOW_ENV = "KD_ALLOW_MODULES"
#: How a factory may call each geometry argument, and which value it gets.
GEOMETRY_ALIASES = {
    "num_classes": "num_classes",
    "in_channels": "in_channels",
    "in_chans": "in_channels",
    "image_size": "image_size",
    "img_size": "image_size",
}
_IDENTIFIER = r"[A-Za-z_]\w*"
IMPORT_PATH = re.compile(rf"(?P<module>{_IDENTIFIER}(?:\.{_IDENTIFIER})*):(?P<attr>{_IDENTIFIER}(?:\.{_IDENTIFIER})*)")

#: How ``kd list models`` shows the two forms: (template, example, about).
FORMS = (
    ("tv:NAME", "tv:resnet18", "torchvision's classification models by name, untrained, fitted to the dataset's "
     "channels and classes"),
    ("MODULE:FACTORY", "my_pkg.nets:make_resnet", "your own model: a function or class called with num_classes, "
     "in_channels, image_size (those it takes) and --model-arg values"),
)

_allowed: set[str] = set()
_imported: set[str] = set()
#: ``(arch, model-args) → state dict``: starting weights of models built from an ``nn.Module`` the
#: Python API was given (only while that call runs, see :func:`starting_weights`).
_starting: dict[tuple[str, str], dict[str, torch.Tensor]] = {}


class ModuleNotAllowed(KDError):
    """A model names a module nobody allowed kd to import (exit code 2, like every bad input)."""


def is_external(name: str) -> bool:
    """Whether ``name`` is a torchvision name or an import path rather than a registered model."""
    return isinstance(name, str) and ":" in name


def module_of(name: str) -> str | None:
    """The module an import-path model name imports (``None`` for registry and torchvision names)."""
    if not isinstance(name, str) or name.startswith(TORCHVISION_PREFIX):
        return None
    match = IMPORT_PATH.fullmatch(name)
    return match["module"] if match else None


def check_name(name: str) -> None:
    """Refuse a malformed external name before anything is read (no import happens here)."""
    if name.startswith(TORCHVISION_PREFIX):
        if not re.fullmatch(_IDENTIFIER, name[len(TORCHVISION_PREFIX):]):
            raise KDError(f"model {name!r}: write a torchvision classification model as tv:NAME, e.g. tv:resnet18")
        return
    if IMPORT_PATH.fullmatch(name) is None:
        raise KDError(f"model {name!r} is neither a kd model nor an import path MODULE:FACTORY "
                      "(e.g. my_pkg.nets:make_resnet) nor tv:NAME")


# ---------------------------------------------------------------------------------------------
# Which modules may be imported


def allow_models(names: Iterable[str | None]) -> None:
    """Allow importing the modules of these model names, for this process: what the user named (flags, a
    ``--config`` file, a Python call). Registered and torchvision names allow nothing (they import no user code)."""
    for name in names:
        module = module_of(name) if name else None
        if module is not None:
            _allowed.add(module)


def allow_modules(modules: Iterable[str]) -> None:
    """Allow importing these modules and their submodules, for this process (``--allow-module``)."""
    for module in modules:
        if not re.fullmatch(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*", module or ""):
            raise KDError(f"--allow-module takes a module name such as my_pkg.nets (got {module!r})")
        _allowed.add(module)


def allowed_modules() -> set[str]:
    """The modules kd may import now: those allowed in this process and those in ``$KD_ALLOW_MODULES``."""
    from_env = {m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()}
    return _allowed | from_env


def is_allowed(module: str) -> bool:
    """``module`` or a package above it is allowed."""
    parts = module.split(".")
    allowed = allowed_modules()
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


@contextlib.contextmanager
def only_allowing(modules: Iterable[str] = ()) -> Iterator[None]:
    """Within the block the allow-list is exactly ``modules`` (plus ``$KD_ALLOW_MODULES``); for tests."""
    saved = set(_allowed)
    _allowed.clear()
    _allowed.update(modules)
    try:
        yield
    finally:
        _allowed.clear()
        _allowed.update(saved)


def will_import(name: str) -> str | None:
    """The module building ``name`` would import for the first time in this process (``None``: none)."""
    module = module_of(name)
    return module if module is not None and module not in _imported and module not in sys.modules else None


def import_factory(name: str) -> Callable[..., Any]:
    """The callable ``MODULE:ATTR`` names, imported only if the module is allowed (see the module docstring)."""
    check_name(name)
    match = IMPORT_PATH.fullmatch(name)
    assert match is not None
    module_name, attr = match["module"], match["attr"]
    if not is_allowed(module_name):
        raise ModuleNotAllowed(
            f"model {name!r} would import module {module_name!r}, which was not named in this command: kd imports "
            f"only modules you name (--model, --models, --teacher-model, a --config file, --allow-module "
            f"{module_name}, or ${ALLOW_ENV})"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # a module beside the user (as `python -m` would find it); installed ones win
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KDError(f"model {name!r}: cannot import module {module_name!r} ({err}); is it installed or on "
                      "PYTHONPATH?") from None
    _imported.add(module_name)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise KDError(f"model {name!r}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise KDError(f"model {name!r}: {attr!r} in {module_name!r} is not callable (a factory function or class)")
    return target


# ---------------------------------------------------------------------------------------------
# Building


def _geometry_arguments(factory: Callable[..., Any], geometry: dict[str, int], name: str) -> dict[str, int]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it the canonical names
        return dict(geometry)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(geometry)
    return {p: geometry[canonical] for p, canonical in GEOMETRY_ALIASES.items() if p in parameters}


def _check_logits(model: nn.Module, name: str, in_channels: int, image_size: int, num_classes: int) -> None:
    """One forward pass on two blank images (eval mode, no gradient, off the run's RNG): logits of the right shape."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as err:  # noqa: BLE001 - any failure of user code on the dataset's images is a bad model choice
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise KDError(f"model {name!r} fails on {in_channels}×{image_size}×{image_size} images: {first}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KDError(f"model {name!r} returns {shape} for a batch of 2; kd needs logits [batch, {num_classes}] "
                      "(give the factory a num_classes argument, or a --model-arg that sets the classes)")


def _call(factory: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise KDError(f"model {name!r}: {str(err).splitlines()[0]}") from None


def create(name: str, in_channels: int, image_size: int, num_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """Build an external model (``tv:NAME`` or ``MODULE:FACTORY``) for the dataset's geometry; sets no spec."""
    geometry = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    clash = sorted(set(options) & set(GEOMETRY_ALIASES))
    if clash:
        raise KDError(f"model argument {clash[0]!r} is set by the dataset; drop it from --model-arg")
    if name.startswith(TORCHVISION_PREFIX):
        model = torchvision_model(name, in_channels, num_classes, dict(options))
    else:
        factory = import_factory(name)
        model = _call(factory, name, {**_geometry_arguments(factory, geometry, name), **options})
        if not isinstance(model, nn.Module):
            raise KDError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    _check_logits(model, name, in_channels, image_size, num_classes)
    state = _starting.get((name, _key(options)))
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
            raise KDError(f"the nn.Module given as model is not what {name} builds for this dataset with model_args "
                          f"{dict(options)} ({first[:200]}); pass the model_args that rebuild it") from None
    return model


def torchvision_model(name: str, in_channels: int, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """torchvision's classification model ``tv:NAME``, untrained (unless ``weights`` is given), with
    ``num_classes`` outputs and its first convolution rebuilt for ``in_channels`` when that differs."""
    import torchvision.models as tv  # noqa: PLC0415 - torchvision loads its model zoo (~1 s): only for tv: models

    arch = name[len(TORCHVISION_PREFIX):]
    available = tv.list_models(module=tv)  # classification only: detection, video... live in submodules
    if arch not in available:
        raise unknown("torchvision classification model", arch, available)
    options.setdefault("weights", None)
    try:
        model = tv.get_model(arch, num_classes=num_classes, **options)
    except (TypeError, ValueError) as err:
        raise KDError(f"model {name!r}: {str(err).splitlines()[0]}") from None
    adapt_input_channels(model, in_channels)
    return model


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one taking ``in_channels`` (same shape otherwise, freshly initialised)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, child_name, nn.Conv2d(
                        in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                        child.dilation, child.groups, child.bias is not None, child.padding_mode,
                    ))
                return


def _key(options: Mapping[str, Any]) -> str:
    return repr(sorted(options.items()))


@contextlib.contextmanager
def starting_weights(name: str, options: Mapping[str, Any], state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, every model built as ``name`` with ``options`` starts from ``state`` (an
    ``nn.Module`` given to the Python API: its weights, not a fresh initialisation)."""
    key = (name, _key(options))
    _starting[key] = state
    try:
        yield
    finally:
        _starting.pop(key, None)
