"""Run configuration: dataclasses with defaults, a TOML file for defaults, command-line flags win.

Resolution order for every field: dataclass default < the method's preset < ``--config`` TOML < flags,
put together by :func:`kdcli.presets.resolve_config`. The resolved config is stored in ``run.json`` so a
run can be resumed and re-read on its own.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcli.errors import KDError

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


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list[int] = field(default_factory=list)  # epochs where a step schedule multiplies by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | fp32 | bf16
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
    teacher: str | None = None
    out: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_params: dict[str, Any] = field(default_factory=dict)
    #: values the resolution changed beyond the layers it applies, and why (the no-BatchNorm rule)
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


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def apply_overrides(config: RunConfig, values: dict[str, Any], source: str) -> None:
    """Set fields from a flat or sectioned mapping (``lr = 0.1`` or ``[optim] lr = 0.1``); ``None`` is skipped.

    Keys that are no config field go to ``method_params`` when the section is ``method``; any other
    unknown key is an error naming the source, so a typo in a TOML file never passes silently.
    """
    top = _field_names(RunConfig) - set(_SECTIONS) - {"method_params", "adjusted"}
    for key, value in values.items():
        if value is None:
            continue
        key_norm = key.replace("-", "_")
        if key_norm in _SECTIONS and isinstance(value, dict):
            section = getattr(config, key_norm)
            for sub_key, sub_value in value.items():
                sub_norm = sub_key.replace("-", "_")
                if sub_norm not in _field_names(_SECTIONS[key_norm]):
                    raise KDError(f"{source}: unknown key [{key_norm}] {sub_key!r}")
                if sub_value is not None:
                    setattr(section, sub_norm, sub_value)
            continue
        if key_norm == "method" and isinstance(value, dict):
            config.method_params.update({k.replace("-", "_"): v for k, v in value.items() if v is not None})
            continue
        if key_norm in top:
            setattr(config, key_norm, value)
            continue
        for name, cls in _SECTIONS.items():
            if key_norm in _field_names(cls):
                setattr(getattr(config, name), key_norm, value)
                break
        else:
            raise KDError(f"{source}: unknown setting {key!r}")


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KDError(f"config file {str(path)!r} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise KDError(f"config file {str(path)!r} is not valid TOML: {err}") from None


def validate(config: RunConfig) -> None:
    """Reject values no run can use, before anything is built or written."""
    checks = [
        (config.train.epochs > 0, f"--epochs must be positive (got {config.train.epochs})"),
        (config.train.batch_size > 0, f"--batch-size must be positive (got {config.train.batch_size})"),
        (config.optim.lr > 0, f"--lr must be positive (got {config.optim.lr})"),
        (0.0 <= config.data.val_fraction < 1.0, f"--val-fraction must be in [0, 1) (got {config.data.val_fraction})"),
        (config.optim.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam (got {config.optim.optimizer!r})"),
        (
            config.optim.schedule in ("cosine", "step", "constant"),
            f"--schedule must be cosine, step or constant (got {config.optim.schedule!r})",
        ),
        (config.train.device in ("auto", "cpu", "cuda", "mps") or config.train.device.startswith("cuda:"),
         f"--device must be auto, cpu, cuda or mps (got {config.train.device!r})"),
        (config.train.precision in ("auto", "fp32", "bf16"), f"--precision must be auto, fp32 or bf16 (got {config.train.precision!r})"),
        (config.train.fuse in ("auto", "on", "off"), f"--fuse must be auto, on or off (got {config.train.fuse!r})"),
        (isinstance(config.train.threads, int) and config.train.threads >= 0,
         f"--threads must be 0 (automatic) or a positive count (got {config.train.threads!r})"),
        (config.data.augment in ("auto", "none", "crop", "crop_flip"),
         f"--augment must be auto, none, crop or crop_flip (got {config.data.augment!r})"),
    ]
    for ok, message in checks:
        if not ok:
            raise KDError(message)
