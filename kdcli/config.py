"""Run configuration: dataclasses with defaults, a TOML file for defaults, command-line flags win.

Resolution order for every field: dataclass default < the method's preset < ``--config`` TOML < flags,
put together by :func:`kdcli.presets.resolve_config`. The resolved config is stored in ``run.json`` so a
run can be resumed and re-read on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcli.errors import KDError, did_you_mean, unknown

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a declared dependency there)
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "digits"
    data_dir: str | None = None
    val_fraction: float = 0.1
    augment: str = "auto"  # auto | none | crop | crop_flip
    #: every image resized to N×N when loaded (kdcli.data.resize); 0 = the dataset's own size. A run made
    #: from a teacher run takes the teacher's (kdcli.run.teacher_image_size)
    image_size: int = 0
    #: train on only this many seeded images of each class of the training split (kdcli.data.loader.few_shot_indices);
    #: 0 = all of them
    shots: int = 0


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    # epochs where a step schedule multiplies by gamma; a scaled paper preset may put one mid-epoch
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere; a method may mean fp32: Method.auto_precision) | fp32 | bf16
    cuda_graphs: str = "auto"  # auto | on | off
    #: peers (or branch bodies) of one architecture as one network: auto (wherever possible) | on (required) | off
    fuse: str = "auto"
    #: CPU threads; 0 = chosen from the work per step and the cores this process may use (kdcli.device)
    threads: int = 0
    eval_batch_size: int = 1024
    log_every: int = 20


@dataclass
class RunConfig:
    """Everything a run needs; ``method_params`` holds the method's own hyperparameters."""

    command: str = "train-teacher"
    method: str = "supervised"
    preset: str = "quick"
    model: str = "lenet5"
    models: list[str] = field(default_factory=list)
    #: arguments of every model built from ``model``/``models`` (``--model-arg key=value``), kept in its spec
    model_args: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    #: the teacher run's model as the user named it (``--teacher-model``): checked against the run
    teacher_model: str | None = None
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_params: dict[str, Any] = field(default_factory=dict)
    #: values the resolution changed beyond the layers it applies, and why (the no-BatchNorm rule, a preset
    #: scaled to another number of epochs)
    adjusted: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        raw = dict(raw)
        return cls(
            **{k: v for k, v in raw.items() if k not in ("data", "optim", "train")},
            data=DataConfig(**raw.get("data", {})),
            optim=OptimConfig(**raw.get("optim", {})),
            train=TrainConfig(**raw.get("train", {})),
        )


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
#: The ``source`` of :func:`apply_overrides` for command-line flags (errors then name the flag).
FLAGS = "flags"
#: Top-level fields a TOML file or a flag may set (``command`` and ``method`` come from the command line).
SETTABLE_TOP = ("preset", "model", "models", "model_args", "teacher", "teacher_model", "out")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def flag_name(key: str) -> str:
    """``warmup_epochs`` → ``--warmup-epochs``: how a config key is named on the command line."""
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``low``/``high`` bounds (None = unbounded), open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            if self.low == 0 and self.low_open:
                return "positive"
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "a number"


def positive() -> Range:
    return Range(0, None, low_open=True)


def at_least(low: float) -> Range:
    return Range(low, None)


def between(low: float, high: float, high_open: bool = False) -> Range:
    return Range(low, high, high_open=high_open)


def check_range(name: str, value: Any, rule: Range) -> None:
    """``name`` (a flag or ``method: key``) must be within ``rule``; each element of a list too."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is not None and item not in rule:
            raise KDError(f"{name} must be {rule.describe()} (got {item!r})")


#: The range of every numeric config field (checked by :func:`validate`, whatever set the value).
RANGES: dict[str, Range] = {
    "val_fraction": between(0.0, 1.0, high_open=True),
    "image_size": between(0, 1024),
    "shots": at_least(0),
    "lr": positive(),
    "momentum": between(0.0, 1.0, high_open=True),
    "weight_decay": at_least(0.0),
    "milestones": positive(),
    "gamma": Range(0.0, 1.0, low_open=True),
    "warmup_epochs": at_least(0.0),
    "epochs": positive(),
    "batch_size": positive(),
    "seed": between(0, 2**63 - 1),
    "eval_batch_size": positive(),
    "threads": at_least(0),
    "log_every": positive(),
}
#: The values of every choice field.
CHOICES: dict[str, tuple[str, ...]] = {
    "augment": ("auto", "none", "crop", "flip", "crop_flip"),
    "optimizer": ("sgd", "adam"),
    "schedule": ("cosine", "step", "constant"),
    "device": ("auto", "cpu", "cuda", "mps"),  # and cuda:N
    "precision": ("auto", "fp32", "bf16"),
    "cuda_graphs": ("auto", "on", "off"),
    "fuse": ("auto", "on", "off"),
}


def type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple) and args:
        return f"a list of {type_name(args[0]).replace('an ', '').replace('a ', '')}s"
    if origin is dict:
        return "a table of KEY = VALUE"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) if a is not type(None) else "none" for a in args)
    return getattr(hint, "__name__", str(hint))


class WrongType(ValueError):
    """A value whose type does not fit its field (the caller adds the field's name and the source)."""


def check_type(value: Any, hint: Any) -> Any:
    """``value`` if its type fits ``hint`` (an int is accepted as a float, and becomes one), else :class:`WrongType`.

    Strict on purpose: a TOML ``true`` is not a batch size, ``"0.1"`` is not a learning rate and
    ``1.5`` is not an epoch count; numbers must be finite.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(WrongType):
                return check_type(value, arg)
        raise WrongType(type_name(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise WrongType("a finite number")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if isinstance(value, (list, tuple)):
            try:
                return [check_type(v, item) if item is not Any else v for v in value]
            except WrongType:
                raise WrongType(type_name(hint)) from None
    elif origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise WrongType(type_name(hint))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(target: Any, key: str, value: Any, source: str, shown: str) -> None:
    try:
        setattr(target, key, check_type(value, _hints(type(target))[key]))
    except WrongType as err:
        where = flag_name(key) if source == FLAGS else f"{source}: {shown}"
        raise KDError(f"{where} must be {err} (got {value!r})") from None


def settable_keys() -> list[str]:
    """Every key a TOML file (flat) or a flag may set."""
    return [*SETTABLE_TOP, *(name for cls in _SECTIONS.values() for name in _field_names(cls))]


def _unknown_key(source: str, key: str, choices: list[str]) -> KDError:
    hint = did_you_mean(key, choices, n=2, cutoff=0.6)
    return KDError(f"{source}: unknown setting {key!r}.{hint or ' Valid: ' + ', '.join(sorted(choices)) + '.'}")


def apply_overrides(config: RunConfig, values: dict[str, Any], source: str) -> None:
    """Set fields from a flat or sectioned mapping (``lr = 0.1`` or ``[optim] lr = 0.1``); ``None`` is skipped.

    Every value's type is checked against its field (:func:`check_type`); the ``[method]`` table goes
    to ``method_params`` (typed later, by the method's ``Params``); any other unknown key is an error
    naming the source with a "did you mean", so a typo in a TOML file never passes silently.
    """
    for key, value in values.items():
        if value is None:
            continue
        key_norm = key.replace("-", "_")
        if key_norm in _SECTIONS:
            if not isinstance(value, dict):
                raise KDError(f"{source}: {key} must be a table ([{key_norm}]), got {value!r}")
            section = getattr(config, key_norm)
            names = sorted(_field_names(_SECTIONS[key_norm]))
            for sub_key, sub_value in value.items():
                sub_norm = sub_key.replace("-", "_")
                if sub_norm not in names:
                    raise _unknown_key(f"{source} [{key_norm}]", sub_key, names)
                if sub_value is not None:
                    _set(section, sub_norm, sub_value, source, sub_norm)
            continue
        if key_norm == "method":
            if not isinstance(value, dict):
                raise KDError(f"{source}: the method is chosen with --method; its hyperparameters go in a [method] "
                              f"table (got method = {value!r})")
            config.method_params.update({k.replace("-", "_"): v for k, v in value.items() if v is not None})
            continue
        if key_norm in SETTABLE_TOP:
            _set(config, key_norm, value, source, key_norm)
            continue
        for name, cls in _SECTIONS.items():
            if key_norm in _field_names(cls):
                _set(getattr(config, name), key_norm, value, source, key_norm)
                break
        else:
            raise _unknown_key(source, key, [*settable_keys(), *_SECTIONS, "method"])


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise KDError(f"config file {str(path)!r} not found")
    if not path.is_file():
        raise KDError(f"config file {str(path)!r} is not a file")
    try:
        return tomllib.loads(path.read_text())
    except OSError as err:
        raise KDError(f"cannot read config file {str(path)!r}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise KDError(f"config file {str(path)!r} is not text (TOML expected)") from None
    except tomllib.TOMLDecodeError as err:
        raise KDError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def _check_choice(key: str, value: str) -> None:
    choices = CHOICES[key]
    if key == "device" and re.fullmatch(r"cuda:\d+", value):
        return
    if value not in choices:
        shown = [*choices, "cuda:N"] if key == "device" else choices
        raise unknown(flag_name(key), value, choices, shown)


def validate(config: RunConfig) -> None:
    """Reject values no run can use, before anything is built or written: every field's type, every
    number's range (:data:`RANGES`), every choice (:data:`CHOICES`, with a "did you mean")."""
    sections = {"": config, **{name: getattr(config, name) for name in _SECTIONS}}
    for section_name, section in sections.items():
        hints = _hints(type(section))
        for f in dataclasses.fields(section):
            if f.name in _SECTIONS or f.name in ("method_params", "adjusted"):
                continue
            value = getattr(section, f.name)
            try:
                check_type(value, hints[f.name])
            except WrongType as err:
                raise KDError(f"{flag_name(f.name)} must be {err} (got {value!r})") from None
            if f.name in RANGES:
                check_range(flag_name(f.name), value, RANGES[f.name])
            if f.name in CHOICES:
                _check_choice(f.name, value)
    if config.optim.milestones != sorted(set(config.optim.milestones)):
        raise KDError(f"--milestones must increase (got {','.join(map(str, config.optim.milestones))})")
    if config.optim.warmup_epochs > config.train.epochs:
        raise KDError(f"--warmup-epochs {config.optim.warmup_epochs:g} is longer than the run "
                      f"(--epochs {config.train.epochs}); the learning rate would never reach its peak")
    if config.data.shots and config.data.val_fraction > 0:
        raise KDError(f"--shots {config.data.shots} trains on {config.data.shots} images per class and holds none "
                      f"out: --val-fraction must be 0 (got {config.data.val_fraction:g})")
    if not config.models and not config.model:
        raise KDError("--model must name a model (see kd list models)")


@dataclass
class ResumeChanges:
    """What an invocation with ``--resume`` asked for, unresolved: checked against the run's stored config
    by :func:`kdcli.presets.resolve_resume` (a resumed run keeps its config; only a few keys may change)."""

    command: str
    method: str | None = None
    preset: str | None = None
    config_file: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    method_flags: dict[str, Any] = field(default_factory=dict)
    param_text: dict[str, str] = field(default_factory=dict)
